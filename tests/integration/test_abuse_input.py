"""Hostile JSON bodies against the real scripts/: what RFC 8259 does not spell
is 400 malformed-json; JSON whose strings are not UTF-8 (raw bytes, unpaired
surrogate escapes) or whose numbers overflow a double is 422 validation with
errors[] naming each field. Never a 500, never a crash, never stored, and
every answer is UTF-8 itself."""
import json

import pytest

from api_support import assert_booking_invariants, BASE, problem, start_api

JSON = {"Content-Type": "application/json"}
REGISTER = BASE + "/auth/register"
BOOKINGS = BASE + "/bookings"

# number spellings lua-cjson took and RFC 8259 has not
BAD_NUMBERS = ["0x10", "0X1f", "-0x10", "NaN", "-NaN", "Infinity", "-Infinity", "inf", "+1",
               "012", "-01", "00", ".5", "-.5", "1.", "1.e2", "1e", "1_000"]


@pytest.fixture(scope="module")
def api():
    srv = start_api("abuse-input", users=1, prefix="abuser")
    yield srv
    assert_booking_invariants(srv)  # nothing the abuse did broke a seat count
    srv.stop_and_check()


def post(api, path, body, headers=None):
    r = api.post(path, body=body, headers=dict(JSON, **(headers or {})))
    assert r.status != 500, r.text
    r.body.decode("utf-8")  # strict: the answer is UTF-8 whatever the request held
    return r


def register_body(email, name=b'"Ann"', password=b'"longpassword"', extra=b""):
    return b'{"email": "' + email + b'", "password": ' + password + b', "name": ' + name + extra + b"}"


def fields(doc):
    return sorted((e["field"], e["message"]) for e in doc["errors"])


@pytest.mark.parametrize("number", BAD_NUMBERS)
def test_register_with_a_number_rfc_8259_has_not_is_400(api, number):
    body = register_body(b"num@example.com", extra=b', "age": ' + number.encode())
    doc = problem(post(api, REGISTER, body), 400, "malformed-json")
    assert doc["status"] == 400


@pytest.mark.parametrize("number", BAD_NUMBERS)
def test_booking_with_a_number_rfc_8259_has_not_is_400(api, number):
    for body in (b'{"event_id": ' + number.encode() + b', "quantity": 1}',
                 b'{"event_id": 1, "quantity": ' + number.encode() + b"}"):
        problem(post(api, BOOKINGS, body, api.users[0]), 400, "malformed-json")


def test_register_with_a_raw_byte_in_a_string_is_422_naming_the_field(api):
    doc = problem(post(api, REGISTER, register_body(b"raw@example.com", name=b'"An\xffn"')), 422, "validation")
    assert fields(doc) == [("name", "must be valid UTF-8")]
    # nothing was stored: the same address registers afterwards
    assert post(api, REGISTER, register_body(b"raw@example.com")).status == 201


def test_register_names_every_field_that_is_not_utf8(api):
    body = register_body(b"bad\xc0\x80@example.com", name=b'"\xed\xa0\x80"', password=b'"long\\udfffpassword"')
    doc = problem(post(api, REGISTER, body), 422, "validation")
    assert fields(doc) == [("email", "must be valid UTF-8"), ("name", "must be valid UTF-8"),
                           ("password", "must not contain an unpaired surrogate escape")]


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\udc00", b"\\ud800\\u0041", b"\\udbff\\udbff"])
def test_register_with_an_unpaired_surrogate_escape_is_422(api, escape):
    body = register_body(b"sur@example.com", name=b'"A' + escape + b'"')
    doc = problem(post(api, REGISTER, body), 422, "validation")
    assert fields(doc) == [("name", "must not contain an unpaired surrogate escape")]


def test_register_with_a_paired_surrogate_escape_is_that_character(api):
    r = post(api, REGISTER, register_body(b"pair@example.com", name=b'"A\\ud83d\\ude00"'))
    assert r.status == 201, r.text
    assert r.json()["user"]["name"] == "A\U0001F600"


def test_a_member_name_that_is_not_utf8_is_named_with_u_fffd(api):
    doc = problem(post(api, REGISTER, register_body(b"key@example.com", extra=b', "x\xff": 1')),
                  422, "validation")
    assert fields(doc) == [("x\ufffd", "name must be valid UTF-8")]


def test_booking_with_bad_strings_or_an_overflowing_number_is_422(api):
    body = b'{"event_id": 1, "quantity": 1e400, "note": ["ok", "\xfe"], "tag": "\\ud800"}'
    doc = problem(post(api, BOOKINGS, body, api.users[0]), 422, "validation")
    assert fields(doc) == [("note[1]", "must be valid UTF-8"), ("quantity", "is out of range"),
                           ("tag", "must not contain an unpaired surrogate escape")]
    doc = problem(post(api, BOOKINGS, b'{"event_id": -1E309, "quantity": 1}', api.users[0]), 422, "validation")
    assert fields(doc) == [("event_id", "is out of range")]


def test_register_with_an_overflowing_number_is_422(api):
    body = register_body(b"big@example.com", extra=b', "age": 1e400')
    assert fields(problem(post(api, REGISTER, body), 422, "validation")) == [("age", "is out of range")]


def test_a_sold_out_event_answers_hostile_bodies_as_lua_does_not_sold_out(api):
    """The early matcher (C, before Lua) reads booking bodies with cJSON,
    which takes leading zeros and raw bytes: it must leave such bodies to
    Lua rather than answer 409 sold-out."""
    r = api.post(BASE + "/events", headers=api.admin, body={
        "name": "Tiny", "venue": "Hall", "starts_at": "2030-05-01T20:00:00Z", "capacity": 1,
        "price_cents": 100, "status": "published"})
    assert r.status == 201, r.text
    ev = r.json()["id"]
    ok = post(api, BOOKINGS, {"event_id": ev, "quantity": 1}, api.users[0])
    assert ok.status == 201, ok.text
    good = json.dumps({"event_id": ev, "quantity": 1}).encode()
    for _ in range(4):  # the gate is closed on every worker now
        problem(post(api, BOOKINGS, good, api.users[0]), 409, "sold-out")
    problem(post(api, BOOKINGS, b'{"event_id": 0%d, "quantity": 1}' % ev, api.users[0]), 400, "malformed-json")
    problem(post(api, BOOKINGS, b'{"event_id": %d, "quantity": 1.}' % ev, api.users[0]), 400, "malformed-json")
    doc = problem(post(api, BOOKINGS, b'{"event_id": %d, "quantity": 1, "n": "\xff"}' % ev, api.users[0]),
                  422, "validation")
    assert fields(doc) == [("n", "must be valid UTF-8")]
    doc = problem(post(api, BOOKINGS, b'{"event_id": %d, "quantity": 1, "n": 1e999}' % ev, api.users[0]),
                  422, "validation")
    assert fields(doc) == [("n", "is out of range")]


def test_well_formed_bodies_still_reach_the_routes(api):
    r = post(api, REGISTER, register_body(b"fine@example.com", name=b'"Zo\xc3\xab \\u00e9"',
                                          extra=b', "n": -0.5e-3, "m": 0, "k": 1E2'))
    assert r.status == 201, r.text
    assert r.json()["user"]["name"] == "Zo\u00eb \u00e9"
    problem(post(api, BOOKINGS, b'{"event_id": 99999999, "quantity": 1}', api.users[0]), 404, "not-found")


def test_the_server_is_still_up(api):
    assert api.get("/health").status == 200
    assert "handler for" not in api.log_text()
