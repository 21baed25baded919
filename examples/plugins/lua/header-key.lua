-- persistence-key plugin: the key is the value of the `header` setting's request header
-- (default X-Session), lower-cased. With `echo = true` the response step adds
-- X-Plugboard-Backend: <name> (the name of the backend that served the request).
--
--   persistence = { key = "plugin:header-key", timeout = "30m" }
--   [service.plugin.header-key]
--   header = "X-User"

local header = config.header or "X-Session"

function persistence_key(req)
  local v = req:header(header)
  if v == nil or v == "" then
    return nil
  end
  return string.lower(v)
end

function on_response(req, served, named, backends)
  if config.echo then
    return { ["X-Plugboard-Backend"] = backends[served].name }
  end
end
