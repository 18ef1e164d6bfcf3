-- luacheck configuration (Debian package lua-check); CI runs `luacheck .`
std = "lua54"
max_line_length = 120
exclude_files = { "build*/**", "var/**", "tests/kafka/**" }

-- The OpenAPI document is data: its descriptions are prose, wrapped by readers.
files["scripts/openapi.lua"] = { max_line_length = false }
-- Specs run under busted (describe, it, assert, ...).
files["tests/lua"] = { std = "+busted" }
-- Redis server-side scripts see Redis's globals.
files["tests/lua/fixtures/redis"] = { read_globals = { "redis", "KEYS", "ARGV" } }
-- wrk scripts define wrk's callbacks as globals.
files["tests/load"] = { globals = { "wrk", "setup", "init", "delay", "request", "response", "done" } }
