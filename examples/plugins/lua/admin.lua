-- /admin to the first backend; everything else round robin across the others, one
-- rotation for all worker threads (shared counter 0).
function select_server(req, backends)
  if string.sub(req.path or "", 1, 6) == "/admin" then
    return 1
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
