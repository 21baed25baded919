-- {{name}}: a persistence-key plugin. Clients are sticky by the value of a request header
-- (setting `header`, default X-User), lower-cased; without it, no key.
local header = config.header or "X-User"

function persistence_key(req, backends)
  local v = req:header(header)
  if v == nil or v == "" then
    return nil
  end
  return string.lower(v)
end
