-- select-server plugin: every request goes to the backend named by the `address` setting
-- while it is healthy; otherwise nil ("no opinion": the service's fallback scheduler decides).
--
--   scheduler = "plugin:pin-backend"
--   [service.plugin.pin-backend]
--   address = "127.0.0.1:9002"

local address = config.address
assert(type(address) == "string", "setting `address` (\"IP:PORT\" of a backend) is required")

function select_server(req, backends)
  for i, b in ipairs(backends) do
    if b.address == address and b.healthy then
      return i
    end
  end
  return nil
end
