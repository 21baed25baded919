-- The hostile plugin of the `lua_api` fuzz target (see core/src/fuzz_entry.rs): every hook
-- runs the program persistence_key took from the payload. A step is an opcode byte choosing
-- one API call; each argument is a type byte and, for numbers and strings, more bytes.
local prog, pos = "", 1
local r, bs, hb = nil, nil, nil

local function byte()
  local b = string.byte(prog, pos) or 0
  pos += 1
  return b
end

local function int32()
  local v = byte() + byte() * 256 + byte() * 65536 + byte() * 16777216
  if v >= 2147483648 then
    v -= 4294967296
  end
  return v
end

local specials = { 0 / 0, math.huge, -math.huge, 2 ^ 53, -(2 ^ 63), 1e308, -0.0, 0.5, 2 ^ 31, 2 ^ 32 + 1, -1 }

local function value()
  local t = byte() % 11
  if t == 0 then
    return nil
  elseif t == 1 then
    return byte() % 2 == 0
  elseif t == 2 then
    return int32()
  elseif t == 3 then
    return specials[byte() % #specials + 1]
  elseif t == 4 then
    local n = byte() % 64
    local s = string.sub(prog, pos, pos + n - 1)
    pos += n
    return s
  elseif t == 5 then
    return {}
  elseif t == 6 then
    return r
  elseif t == 7 then
    return bs
  elseif t == 8 then
    return hb
  elseif t == 9 then
    return print
  else
    return string.rep("a", byte() * 64)
  end
end

local ops = {
  function() return r and r:header(value()) end,
  function() return r and r:cookie(value()) end,
  function() return r and r.header(value(), value()) end,
  function() return r and r.cookie(value(), value()) end,
  function() return r and r[value()] end,
  function() return bs and bs[value()] end,
  function()
    local b = bs and bs[byte() % 5]
    return b and b[value()]
  end,
  function() return hb and hb[value()] end,
  function() return bs and #bs end,
  function() return agent.set_weight_percent(value()) end,
  function() return agent.set_maxconn(value()) end,
  function() return agent.set_admin(value()) end,
  function() return agent.set_up(value()) end,
  function() return agent.set_load(value()) end,
  function() return net.tcp(value(), value(), value(), value()) end,
  function() return net.http_get(value(), value(), value()) end,
  function() return log(value(), value()) end,
  function() return print(value(), value(), value()) end,
  function()
    local t = value()
    if type(t) == "table" then
      t[value()] = value()
    end
  end,
  function()
    local t = value()
    if type(t) == "table" then
      for _ in pairs(t) do
      end
    end
  end,
}

local function run(req, backends, backend)
  r, bs, hb, pos = req, backends, backend, 1
  while pos <= #prog do
    pcall(ops[byte() % #ops + 1])
  end
end

function persistence_key(req, backends)
  prog = req.payload or ""
  run(req, backends, nil)
  return nil
end

function on_response(req, served, named, backends)
  run(req, backends, nil)
end

function health_check(backend)
  run(nil, nil, backend)
  return true
end
