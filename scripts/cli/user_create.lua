--- `evently user create [--admin] --email E --password P [--name N]`.
-- The core parses the options, starts the services, applies the migrations
-- and runs this with email, password, name ("" when not given) and role
-- ("user" | "admin"): the accounts and their rules are the app's, so the
-- checks are registration's own (domain/users.lua). Prints one line when
-- done; returns nil and why otherwise (the command then exits 1 with it).
local users = require "domain.users"
local validate = require "web.validate"
local problem = require "evently.problem"

local email, password, name, role = ...
if name == nil or name == "" then name = email end

local v = validate.new({ email = email, password = password, name = name })
users.read_new_account(v)
local ok, err = pcall(v.check, v)
if not ok then
  if not problem.is(err) then error(err, 0) end
  local lines = {}
  for _, e in ipairs(err.extra.errors) do lines[#lines + 1] = e.field .. ": " .. e.message end
  return nil, table.concat(lines, "; ")
end

local user, why = users.register(email, password, name, role)
if why == "duplicate" then return nil, "a user with email " .. email .. " already exists" end
if not user then return nil, "cannot create the user: " .. tostring(why) end
print(("created %s %s (id %d)"):format(user.role, user.email, user.id))
