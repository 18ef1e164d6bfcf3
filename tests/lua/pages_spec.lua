-- #pg: domain/pages.lua: a page of rows and the list's total.
local pages = require "domain.pages"

describe("domain.pages #pg", function()
  local FROM = "generate_series(1, $1::int) g"

  it("gives a page in order and the total of the whole list", function()
    local rows, total = pages.fetch("g", FROM, { 45 }, "g DESC", 2, 20)
    assert.are.equal(45, total)
    assert.are.equal(20, #rows)
    assert.are.equal(25, rows[1].g)
    rows, total = pages.fetch("g", FROM, { 45 }, "g DESC", 3, 20)
    assert.are.same({ 45, 5, 1 }, { total, #rows, rows[5].g })
    rows, total = pages.fetch("g", FROM, { 45 }, "g DESC", 4, 20)
    assert.are.same({ 45, 0 }, { total, #rows })
  end)

  it("counts a first page that is not full without asking again", function()
    local rows, total = pages.fetch("g", FROM, { 7 }, "g", 1, 20)
    assert.are.same({ 7, 7 }, { total, #rows })
    rows, total = pages.fetch("g", FROM, { 0 }, "g", 1, 20)
    assert.are.same({ 0, 0 }, { total, #rows })
  end)

  it("returns nil and the error when a statement fails", function()
    local rows, err = pages.fetch("g", "no_such_table", {}, "g", 1, 20)
    assert.is_nil(rows)
    assert.are.equal("sql", err.kind)
  end)
end)
