"""X-Request-Id: echoed when given, generated (unique) when not, on every
response (API.md: "Every response carries X-Request-Id")."""
import threading

import pytest

from conftest import MAX_BODY, MAX_HEADER, read_response


def test_given_id_is_echoed(server):
    r = server.get("/health", headers={"X-Request-Id": "it-given-0001"})
    assert r.status == 200
    assert r.header("x-request-id") == "it-given-0001"


def test_generated_when_absent_and_unique(server):
    ids = []
    lock = threading.Lock()

    def worker():
        for _ in range(10):
            r = server.get("/items/1")
            assert r.status == 200
            with lock:
                ids.append(r.header("x-request-id"))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(ids) == 40
    assert all(ids), ids
    assert len(set(ids)) == 40, "duplicate request ids: %r" % ids


def test_ids_on_one_keep_alive_connection_differ(server):
    conn = server.connection()
    try:
        seen = set()
        for _ in range(5):
            conn.request("GET", "/health")
            r = conn.getresponse()
            r.read()
            seen.add(r.getheader("x-request-id"))
        assert len(seen) == 5 and None not in seen
    finally:
        conn.close()


def test_unsafe_given_id_is_replaced(server):
    for bad in ("x" * 200, 'quote"id', "back\\slash"):
        r = server.get("/health", headers={"X-Request-Id": bad})
        rid = r.header("x-request-id")
        assert rid and rid != bad
        assert len(rid) <= 64


@pytest.mark.parametrize("path,method,body,headers,status", [
    ("/no/such/route", "GET", None, {}, 404),
    ("/items/1", "DELETE", None, {}, 405),
    ("/boom", "GET", None, {}, 500),
    ("/conflict", "GET", None, {}, 409),
    ("/echo", "POST", b"{not json", {"Content-Type": "application/json"}, 400),
])
def test_echoed_and_generated_on_handler_level_errors(server, path, method, body, headers, status):
    r = server.request(method, path, body=body, headers=dict(headers, **{"X-Request-Id": "err-%d" % status}))
    assert r.status == status
    assert r.header("x-request-id") == "err-%d" % status
    r = server.request(method, path, body=body, headers=headers)
    assert r.status == status
    assert r.header("x-request-id"), r


def test_500_body_names_the_request_id(server):
    r = server.get("/boom", headers={"X-Request-Id": "boom-id-77"})
    assert r.status == 500
    assert r.json()["request_id"] == "boom-id-77"


def test_access_log_carries_the_request_id(server):
    since = server.log_size()
    server.get("/items/logged", headers={"X-Request-Id": "access-log-id-1"})
    server.wait_log(r'"request_id":"access-log-id-1"', since=since)
    line = [l for l in server.access_log(since) if l.get("request_id") == "access-log-id-1"][0]
    assert line["status"] == 200
    assert line["route"] == "/items/:id"
    assert line["path"] == "/items/logged"


def test_app_log_lines_carry_the_request_id(server):
    since = server.log_size()
    r = server.get("/log?msg=hello-from-test", headers={"X-Request-Id": "app-log-id-1"})
    assert r.status == 200
    server.wait_log(r"\[app-log-id-1\] app-log-line hello-from-test", since=since)


TRANSPORT_ERRORS = {
    # Content-Length over EVENTLY_MAX_BODY: refused before the body is read
    "413": (b"POST /echo HTTP/1.1\r\nHost: t\r\nX-Request-Id: transport-413\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), 413),
    # one header bigger than EVENTLY_MAX_HEADER
    "431": (b"GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: transport-431\r\nX-Big: "
            + b"a" * (MAX_HEADER + 100) + b"\r\n\r\n", 431),
    # bad syntax after a complete header block
    "400": (b"GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: transport-400\r\n"
            b"Content-Length: abc\r\n\r\n", 400),
}


@pytest.mark.parametrize("case", sorted(TRANSPORT_ERRORS))
def test_transport_errors_carry_a_request_id(server, case):
    data, status = TRANSPORT_ERRORS[case]
    with server.socket() as s:
        s.sendall(data)
        r = read_response(s.makefile("rb"))
    assert r is not None and r.status == status, r
    assert r.header("content-type") == "application/problem+json"
    # API.md: every response carries X-Request-Id
    assert r.header("x-request-id"), "no X-Request-Id on the %d answer: %r" % (status, r)
