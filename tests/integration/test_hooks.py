"""Hooks of the app itself (evently.hooks): "request" may short-circuit with a
response; "response" may change status, headers and body."""


def test_request_hook_short_circuit_with_status_body_headers(server):
    # a hook returns a response the way a handler does: status, body, headers
    r = server.get("/items/1", headers={"X-Test-Short-Circuit": "status-body"})
    assert r.status == 418
    assert r.header("x-short") == "yes"
    assert r.header("content-type", "").startswith("application/json")
    assert r.json() == {"short": "status-body"}


def test_request_hook_short_circuit_with_a_body(server):
    r = server.get("/items/1", headers={"X-Test-Short-Circuit": "body"})
    assert r.status == 200
    assert r.json() == {"short": "body-only"}


def test_request_hook_passes_through_when_it_returns_nothing(server):
    assert server.get("/items/1").json() == {"id": "1"}


def test_response_hook_rewrites_status_and_body(server):
    r = server.get("/hooked/status")
    assert r.status == 202
    assert r.json() == {"rewritten": True}


def test_response_hook_header_stays_on_its_own_response(server):
    # one keep-alive connection: every request goes to the same worker
    conn = server.connection()
    try:
        conn.request("GET", "/hooked")
        r = conn.getresponse()
        r.read()
        assert r.status == 200
        assert r.getheader("x-hooked") == "yes"
        for path in ("/version", "/items/3", "/health"):
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            assert r.status == 200
            assert r.getheader("x-hooked") is None, \
                "X-Hooked set by the response hook for /hooked leaked onto %s" % path
    finally:
        conn.close()
