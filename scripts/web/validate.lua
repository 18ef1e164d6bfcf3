--- validate: field checks that collect every problem into one 422.
--   local v = validate.new(req.json)
--   local code = v:string("code", { required = true, max = 8, pattern = "^%u+$" })
--   local email = v:string("email", { valid = users.valid_email, invalid_message = "must be an email address" })
--   local qty = v:integer("quantity", { required = true, min = 1, max = 10 })
--   local off = v:boolean("disabled", { required = true })
--   v:check()   -- raises a 422 problem naming each bad field, or returns
local problem = require "evently.problem"

local V = {}
V.__index = V

local M = {}

function M.new(body)
  -- well-formed JSON of the wrong shape (an array, a number, no body) is a 422
  if type(body) ~= "table" or (next(body) ~= nil and #body > 0) then
    problem.raise(422, "validation", "the body must be a JSON object",
      { errors = { { field = "body", message = "must be a JSON object" } } })
  end
  return setmetatable({ body = body, errors = {} }, V)
end

function V:fail(field, message)
  self.errors[#self.errors + 1] = { field = field, message = message }
end

function V:string(field, opts)
  local v = self.body[field]
  if v == nil or v == require("evently.json").null then
    if opts.required then self:fail(field, "is required") end
    return nil
  end
  if type(v) ~= "string" then self:fail(field, "must be a string"); return nil end
  -- Postgres text cannot hold NUL, and no field of ours needs it
  if v:find("\0", 1, true) then self:fail(field, "must not contain NUL characters"); return nil end
  if opts.min and #v < opts.min then self:fail(field, "must be at least " .. opts.min .. " characters"); return nil end
  if opts.max and #v > opts.max then self:fail(field, "must be at most " .. opts.max .. " characters"); return nil end
  if opts.pattern and not v:match(opts.pattern) then
    self:fail(field, opts.pattern_message or "is not valid")
    return nil
  end
  if opts.valid and not opts.valid(v) then
    self:fail(field, opts.invalid_message or "is not valid")
    return nil
  end
  return v
end

function V:integer(field, opts)
  local v = self.body[field]
  if v == nil or v == require("evently.json").null then
    if opts.required then self:fail(field, "is required") end
    return nil
  end
  if type(v) ~= "number" or v ~= math.floor(v) or v ~= v then self:fail(field, "must be an integer"); return nil end
  v = math.tointeger(v)
  if not v then self:fail(field, "must be an integer"); return nil end
  if opts.min and v < opts.min then self:fail(field, "must be >= " .. opts.min); return nil end
  if opts.max and v > opts.max then self:fail(field, "must be <= " .. opts.max); return nil end
  return v
end

function V:boolean(field, opts)
  local v = self.body[field]
  if v == nil or v == require("evently.json").null then
    if opts and opts.required then self:fail(field, "is required") end
    return nil
  end
  if type(v) ~= "boolean" then self:fail(field, "must be true or false"); return nil end
  return v
end

local DAYS = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

-- "2026-05-01T20:00:00Z", "2026-05-01T20:00:00.5+02:00": fields in range, and
-- an offset Postgres accepts (up to 15:59), so what passes here always parses.
local function rfc3339(v)
  local y, mo, d, h, mi, sec, rest = v:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt](%d%d):(%d%d):(%d%d)(.*)$")
  if not y then return false end
  y, mo, d, h, mi, sec = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(sec)
  if y < 1 or mo < 1 or mo > 12 or d < 1 or d > DAYS[mo] or h > 23 or mi > 59 or sec > 59 then return false end
  if mo == 2 and d == 29 and not (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)) then return false end
  rest = rest:gsub("^%.%d+", "")
  if rest == "Z" or rest == "z" then return true end
  local oh, om = rest:match("^[+-](%d%d):(%d%d)$")
  return oh ~= nil and tonumber(oh) <= 15 and tonumber(om) <= 59
end

--- An RFC 3339 timestamp with a zone ("2026-05-01T20:00:00Z").
function V:timestamp(field, opts)
  local v = self:string(field, { required = opts.required, max = 40 })
  if v and not rfc3339(v) then
    self:fail(field, "must be an RFC 3339 timestamp with a time zone")
    return nil
  end
  return v
end

function V:enum(field, values, opts)
  local v = self:string(field, { required = opts and opts.required })
  if v == nil then return nil end
  for _, allowed in ipairs(values) do
    if v == allowed then return v end
  end
  self:fail(field, "must be one of " .. table.concat(values, ", "))
  return nil
end

function V:check()
  if #self.errors > 0 then
    problem.raise(422, "validation", "some fields are not valid", { errors = self.errors })
  end
end

return M
