-- wrk script: wrong passwords for one account (EMAIL), as a guessing bot;
-- prints how the guesses were answered.
local email = os.getenv("EMAIL")
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/api/v1/auth/login", { ["Content-Type"] = "application/json" },
    string.format('{"email":"%s","password":"guess-%d-%d"}', email, n, math.random(1e9)))
end

local statuses = {}
response = function(status)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function()
  -- each wrk thread has its own Lua state: `statuses` here is one thread's;
  -- the server's access log is the whole count (the script reads it)
  for status, count in pairs(statuses) do io.write(string.format("thread_status %d %d\n", status, count)) end
end
