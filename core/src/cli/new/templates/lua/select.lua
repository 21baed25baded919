-- {{name}}: a select-server plugin. Requests for /admin go to the first backend; the rest go
-- round robin over the other available backends, one rotation for all worker threads (shared
-- counter 0). Backends are numbered from 1.
function select_server(req, backends)
  if string.sub(req.path or "", 1, 6) == "/admin" then
    return backends[1].available and 1 or nil
  end
  local rest = {}
  for i = 2, #backends do
    if backends[i].available then
      rest[#rest + 1] = i
    end
  end
  if #rest == 0 then
    return nil
  end
  return rest[shared.counter_add(0, 1) % #rest + 1]
end
