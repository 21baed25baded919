-- persistence-key plugin: the key is the value of the `header` setting's request header
-- (default X-Session), lower-cased. With `echo = true` the response step adds
-- X-Plugboard-Backend: <n> (0-based position of the backend that served the request).
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

function on_response(served, named)
  if config.echo then
    return { ["X-Plugboard-Backend"] = tostring(served - 1) }
  end
end
