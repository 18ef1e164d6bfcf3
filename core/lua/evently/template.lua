--- evently.template: tiny {{name}} substitution for plain-text messages.
--   text = template.render(tpl, vars, opts?)
--       Replaces each {{name}} (or {{a.b}}, a path into nested tables; spaces
--       inside the braces are allowed) by the value in vars. Strings are used
--       as they are, integers without ".0", other numbers with up to 14
--       digits, booleans as true/false, JSON/db null as "". A missing name or
--       a table value raises "template: no value for 'name'": a typo in a
--       template is a bug, not something to mail to a customer.
--       Plain-text rules (there is no markup to escape): control characters
--       in values are dropped, except line breaks and tabs in body text; with
--       opts.line = true (subjects, any one-line header) every line break or
--       tab in a value becomes one space, so a value can never start a new
--       header line. Substituted values are not scanned again, so a value
--       holding "{{x}}" stays literal.
local M = {}

local function lookup(vars, name)
  local v = vars
  for part in name:gmatch("[^%.]+") do
    if type(v) ~= "table" then return nil end
    v = v[part]
  end
  return v
end

local function format(v, name)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then
    if math.type(v) == "integer" then return string.format("%d", v) end
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return string.format("%d", math.floor(v)) end
    return string.format("%.14g", v)
  end
  if t == "boolean" then return tostring(v) end
  if t == "userdata" then return "" end -- json.null / db.null
  error(("template: no value for '%s'"):format(name), 0)
end

local function clean(s, line)
  if line then
    s = s:gsub("[\r\n\t]+", " ")
    return (s:gsub("[%c]", ""))
  end
  s = s:gsub("\r\n", "\n")
  return (s:gsub("[%c]", function(c) return (c == "\n" or c == "\t") and c or "" end))
end

function M.render(tpl, vars, opts)
  if type(tpl) ~= "string" then error("template.render: template must be a string", 2) end
  if type(vars) ~= "table" then error("template.render: vars must be a table", 2) end
  local line = opts and opts.line
  local ok, out = pcall(string.gsub, tpl, "{{%s*([%w_%.]+)%s*}}", function(name)
    local v = lookup(vars, name)
    if v == nil then error(("template: no value for '%s'"):format(name), 0) end
    return clean(format(v, name), line)
  end)
  if not ok then error(out, 2) end
  return out
end

return M
