-- The smallest useful scheduler: round robin over healthy backends.
--   scheduler = "plugin:round-robin"
local next = 0

function select_server(req, backends)
  local n = #backends
  for _ = 1, n do
    next = next % n + 1
    if backends[next].healthy then
      return next
    end
  end
  return nil
end
