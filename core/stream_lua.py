"""Lua that our stream scripts share, put in front of each: stream ids as numbers, XINFO's replies as tables."""

STREAM_HELPERS = """
local function parse(id)  -- '1700000000000-3' as 1700000000000, 3
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function fields(flat)  -- XINFO's {'name', value, 'idle', value, ...} as {name = value, idle = value, ...}
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end
"""
