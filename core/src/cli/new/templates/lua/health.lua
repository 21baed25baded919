-- {{name}}: a health-check plugin. A backend is up when GET /health (setting `path`) on the
-- checked address answers 200 within a second.
local path = config.path or "/health"

function health_check(backend)
  local status = net.http_get(backend.target, path, 1000)
  return status == 200
end
