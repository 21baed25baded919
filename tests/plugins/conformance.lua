-- The conformance plugin: exactly what tests/plugins/conformance (Rust) does. The conformance
-- tests run both through the proxy and expect the same traffic.

local agent_port = config.agent_port or 0

function select_server(req, backends)
  for i, b in ipairs(backends) do
    if b.available then
      return i
    end
  end
  return nil
end

function persistence_key(req, backends)
  local name = req:header("x-backend")
  if name then
    for _, b in ipairs(backends) do
      if b.name == name then
        return { backend = b.index }
      end
    end
    return nil
  end
  local user = req:header("x-user")
  if user then
    return "user:" .. user
  end
  return nil
end

function on_response(req, served, named, backends)
  return {
    ["x-served"] = backends[served].name,
    ["x-named"] = named and backends[named].name or "-",
    ["x-path"] = req.path or "",
  }
end

function health_check(backend)
  local host = string.match(backend.target, "^(.*):%d+$")
  local line = net.tcp(host .. ":" .. agent_port, "", 500)
  local word = line and string.match(line, "%a+")
  if word == "drain" or word == "maint" then
    agent.set_admin(word)
  elseif word == "ready" then
    agent.set_admin("ready")
    agent.set_up(true)
  elseif word == "down" then
    agent.set_up(false)
  end
  return true
end
