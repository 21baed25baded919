-- Test plugin (tests/plugins_abi.rs): one round robin over every available backend on shared
-- counter 0, and a log line the first time an instance serves, numbered from shared counter
-- 1, so the test sees how many instances (one per worker thread) took part.
local me = nil

function select_server(req, backends)
  if me == nil then
    me = shared.counter_add(1, 1)
    log("info", "rotation instance " .. me .. " serving")
  end
  local up = {}
  for i = 1, #backends do
    if backends[i].available then
      up[#up + 1] = i
    end
  end
  if #up == 0 then
    return nil
  end
  return up[shared.counter_add(0, 1) % #up + 1]
end
