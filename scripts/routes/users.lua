-- GET /users/me (API.md "Auth and users").
local auth = require "web.auth"
local users = require "domain.users"

return function(app, base)
  app.get(base .. "/users/me", function(req)
    return users.public(auth.user(req))
  end, "users.me")
end
