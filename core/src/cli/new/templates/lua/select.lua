-- {{name}}: a select-server plugin. Requests for /admin go to the first backend; the rest go
-- round robin over the available backends. Backends are numbered from 1.
local next = 0

function select_server(req, backends)
  if string.sub(req.path or "", 1, 6) == "/admin" then
    return backends[1].available and 1 or nil
  end
  for _ = 1, #backends do
    next = next % #backends + 1
    if backends[next].available then
      return next
    end
  end
  return nil
end
