"""Routing, request parsing and response shaping of evently.app."""
import json
import threading

from conftest import read_response


def test_json_echo_round_trip(server):
    doc = {"name": "Zoë ✓", "n": [1, 2, 3], "nested": {"a": True, "b": None}, "price_cents": 1999}
    r = server.post("/echo", doc)
    assert r.status == 200
    assert r.header("content-type").startswith("application/json")
    got = r.json()
    assert got["method"] == "POST"
    assert got["json"] == doc
    assert got["content_type"] == "application/json"


def test_put_and_patch_reach_their_handlers(server):
    for method in ("PUT", "PATCH"):
        r = server.request(method, "/echo", body={"m": method})
        assert r.status == 200, r
        assert r.json()["method"] == method
        assert r.json()["json"] == {"m": method}


def test_json_integers_round_trip_exactly(server):
    # API.md: IDs are opaque strings or integers; clients pass back exactly
    # what they received. 2**53 - 1 is the largest integer every JSON
    # client represents exactly.
    doc = {"id": 9007199254740991, "big": 123456789012345}
    r = server.post("/echo", doc)
    assert r.status == 200
    assert r.json()["json"] == doc, r.text


def test_route_param(server):
    r = server.get("/items/42")
    assert r.status == 200
    assert r.json() == {"id": "42"}


def test_route_param_is_percent_decoded(server):
    assert server.get("/items/a%20b").json() == {"id": "a b"}


def test_rest_param_takes_the_rest_of_the_path(server):
    assert server.get("/files/a/b/c.txt").json() == {"rest": "a/b/c.txt"}


def test_query_parsing(server):
    r = server.get("/query?a=1&b=hello+world&c=%41%42&a=2&empty=&flag")
    assert r.status == 200
    q = r.json()["query"]
    assert q["a"] == "1"  # the first of repeated keys
    assert q["b"] == "hello world"
    assert q["c"] == "AB"
    assert q["empty"] == ""
    assert q["flag"] == ""


def test_unknown_route_is_a_404_problem(server):
    r = server.get("/no/such/route")
    assert r.status == 404
    assert r.header("content-type") == "application/problem+json"
    doc = r.json()
    assert doc["status"] == 404
    assert doc["type"].endswith("/not-found")
    assert doc["title"]


def test_wrong_method_is_a_405_problem_with_allow(server):
    r = server.request("DELETE", "/items/7")
    assert r.status == 405
    assert r.header("content-type") == "application/problem+json"
    assert r.header("allow") == "GET, HEAD"
    doc = r.json()
    assert doc["status"] == 405
    assert doc["type"].endswith("/method-not-allowed")


def test_405_on_static_route(server):
    r = server.post("/health", b"")
    assert r.status == 405
    assert r.header("allow") == "GET, HEAD"
    assert r.header("content-type") == "application/problem+json"


def test_handler_status_body_and_headers(server):
    r = server.post("/created", b"")
    assert r.status == 201
    assert r.header("location") == "/items/1"
    assert r.header("x-custom") == "yes"
    assert r.json() == {"created": True}


def test_string_body_is_text_plain(server):
    r = server.get("/text")
    assert r.status == 200
    assert r.header("content-type").startswith("text/plain")
    assert r.body == b"plain text body"


def test_204_has_no_body(server):
    r = server.get("/nobody")
    assert r.status == 204
    assert r.body == b""


def test_head_of_a_get_route(server):
    g = server.get("/items/9")
    h = server.request("HEAD", "/items/9")
    assert h.status == 200
    assert h.body == b""
    assert h.header("content-length") == g.header("content-length")


def test_header_injection_from_a_handler_is_dropped(server):
    with server.socket() as s:
        s.sendall(b"GET /inject HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        raw = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            raw += b
    head = raw.split(b"\r\n\r\n", 1)[0].lower()
    assert raw.startswith(b"HTTP/1.1 200")
    assert b"set-cookie" not in head
    assert b"x-good: fine" in head


def test_request_headers_reach_the_handler_lowercased(server):
    r = server.get("/headers", headers={"X-Thing": "One", "Accept": "application/json"})
    h = r.json()["headers"]
    assert h["x-thing"] == "One"
    assert h["accept"] == "application/json"


def test_keep_alive_serves_several_requests_on_one_connection(server):
    conn = server.connection()
    try:
        conn.connect()
        sock = conn.sock
        for i in range(5):
            conn.request("GET", "/items/%d" % i)
            r = conn.getresponse()
            assert r.status == 200
            assert json.loads(r.read()) == {"id": str(i)}
            assert r.getheader("connection") == "keep-alive"
            assert conn.sock is sock  # never reconnected
    finally:
        conn.close()


def test_pipelined_requests_are_answered_in_order(server):
    with server.socket() as s:
        # the first is slow, the second fast: answers must still come in order
        s.sendall(b"GET /sleep?s=0.3 HTTP/1.1\r\nHost: t\r\nX-Request-Id: pipe-1\r\n\r\n"
                  b"GET /items/second HTTP/1.1\r\nHost: t\r\nX-Request-Id: pipe-2\r\n\r\n"
                  b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 9\r\nX-Request-Id: pipe-3\r\n\r\n{\"n\": 3}\n")
        f = s.makefile("rb")
        r1, r2, r3 = read_response(f), read_response(f), read_response(f)
    assert (r1.status, r1.header("x-request-id")) == (200, "pipe-1")
    assert r1.json()["slept"] == 0.3
    assert (r2.status, r2.header("x-request-id")) == (200, "pipe-2")
    assert r2.json() == {"id": "second"}
    assert (r3.status, r3.header("x-request-id")) == (200, "pipe-3")
    assert r3.json()["json"] == {"n": 3}


def test_connection_close_is_honoured(server):
    with server.socket() as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        f = s.makefile("rb")
        r = read_response(f)
        assert r.status == 200
        assert r.header("connection") == "close"
        assert f.read() == b""  # closed by the server


def test_http10_without_keep_alive_is_closed(server):
    with server.socket() as s:
        s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        f = s.makefile("rb")
        r = read_response(f)
        assert r.status == 200
        assert f.read() == b""


def test_concurrent_sleeps_do_not_block_a_worker(server):
    """10 handlers sleeping 0.5 s on 2 workers: a sleeping handler yields, so
    one worker runs several at once. Proved by overlap, not by the total
    time: each answer says when its handler started and ended (the worker's
    monotonic clock) and which worker ran it, and some worker must have run
    two whose intervals overlap. A worker blocked by time.sleep runs them
    one after another, however fast the machine."""
    results = []

    def one():
        r = server.get("/sleep?s=0.5", timeout=30)
        results.append((r.status, r.json() if r.status == 200 else r.text))

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [status for status, _ in results] == [200] * 10, results
    runs = sorted((b["pid"], b["started"], b["ended"]) for _, b in results)
    overlapping = [(a, b) for a, b in zip(runs, runs[1:]) if a[0] == b[0] and b[1] < a[2]]
    assert overlapping, "no worker ran two sleeps at once: %r" % runs


def test_handler_may_fill_in_query_defaults(server):
    r = server.get("/query-defaults?page=3")
    assert r.status == 200
    assert r.json() == {"page": "3", "size": "20"}
    # the same handler, no query string at all
    r = server.get("/query-defaults")
    assert r.status == 200, r
    assert r.json() == {"page": "1", "size": "20"}


def test_static_route_of_another_method_does_not_hide_a_param_route(server):
    assert server.post("/items/new", b"").status == 201
    # GET /items/new is GET /items/:id with id "new"
    r = server.get("/items/new")
    assert r.status == 200, r
    assert r.json() == {"id": "new"}


def test_json_media_type_is_case_insensitive(server):
    # RFC 9110 8.3.1: type and subtype are case-insensitive
    r = server.post("/echo", b'{"a": 1}', headers={"Content-Type": "Application/JSON"})
    assert r.status == 200
    assert r.json().get("json") == {"a": 1}, "body not decoded as JSON: %s" % r.text
    r = server.post("/echo", b'{"a": ', headers={"Content-Type": "APPLICATION/JSON"})
    assert r.status == 400
