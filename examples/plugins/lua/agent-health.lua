-- health-check plugin: asks a small agent on each backend for its load (KEMP style: GET
-- /load answers a number 0-100; 101 means down). Setting `port` is the agent's port (default:
-- the backend's own port), `path` its path (default /load).
--
--   health_check = { kind = "plugin:agent-health", interval = "2s", timeout = "1s" }
--   [service.plugin.agent-health]
--   path = "/load"

local path = config.path or "/load"

function health_check(backend)
  local target = backend.target
  if config.port then
    target = string.gsub(target, ":%d+$", ":" .. tostring(config.port))
  end
  local status, body = net.http_get(target, path, 1000)
  if status ~= 200 then
    return false
  end
  local load = tonumber(string.match(body or "", "^%s*(%d+)"))
  if load == nil or load > 100 then
    return false
  end
  return true, load
end
