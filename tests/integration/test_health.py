"""Operations endpoints: /health, /health/ready, /metrics."""
import os
import subprocess
import time

from conftest import HERE, free_port, metric_value

DATA_APP = os.path.join(HERE, "data_app")


def test_health_is_up(server):
    r = server.get("/health")
    assert r.status == 200
    assert r.header("content-type", "").startswith("application/json")
    assert r.json() == {"status": "up"}


def test_head_health_has_no_body(server):
    r = server.request("HEAD", "/health")
    assert r.status == 200
    assert r.body == b""
    assert int(r.header("content-length")) == len(b'{"status":"up"}')


def test_ready_names_postgres_and_redis_up(server):
    r = server.get("/health/ready")
    assert r.status == 200
    doc = r.json()
    assert doc["status"] == "ready"
    assert doc["components"]["postgres"]["state"] == "up"
    assert doc["components"]["redis"]["state"] == "up"


def test_metrics_counts_requests_by_route_pattern(server):
    def items(t):
        return metric_value(t, "evently_http_requests_total", method="GET", route="/items/:id", status="200") or 0
    old = server.metrics_when(items)  # earlier requests all counted (each is, after its answer is sent)
    for i in range(5):
        assert server.get("/items/%d" % i).status == 200
    assert server.get("/definitely/not/here").status == 404
    text = server.metrics_when(lambda t: t, lambda t: items(t) == old + 5)
    assert "# TYPE evently_http_requests_total counter" in text
    # the route label is the pattern, never the concrete path
    assert 'route="/items/1"' not in text
    new = items(text)
    assert new == old + 5  # shared across both workers
    assert metric_value(text, "evently_http_requests_total", route="unmatched", status="404") >= 1
    assert metric_value(text, "evently_http_request_duration_seconds_count", route="/items/:id", status="200") == new


def test_metrics_reports_two_workers(server):
    r = server.get("/metrics")
    assert r.status == 200
    assert r.header("content-type", "").startswith("text/plain")
    assert metric_value(r.text, "evently_workers") == 2


def test_a_redis_that_requires_a_password_is_ready_and_used(start_server, tmp_path):
    """EVENTLY_REDIS_URL with a password (issue 15): the readiness probe sends
    AUTH before PING (it used to PING without it, so a protected Redis stayed
    "not ready" forever), and the client's commands reach it."""
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass",
                              "correct horse battery", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        srv = start_server("redis-auth", scripts=DATA_APP, env={
            "EVENTLY_REDIS_URL": "redis://:correct horse battery@127.0.0.1:%d" % port})
        doc = srv.get("/health/ready").json()
        assert doc["status"] == "ready" and doc["components"]["redis"]["state"] == "up", doc
        # the change's invalidation went through that Redis (its stamp is there)
        assert srv.request("PUT", "/items/7", body={"name": "seven"}).status == 200
        assert srv.get("/items/7").json()["name"] == "seven"
        cli = ["redis-cli", "-p", str(port), "--no-auth-warning", "-a", "correct horse battery"]
        stamped = subprocess.run(cli + ["EXISTS", "evently:cache:inv:item:7"], capture_output=True, text=True).stdout
        assert stamped.strip() == "1", stamped
        # a wrong password: not ready, saying why without repeating it
        wrong = start_server("redis-wrong-auth", wait=False, env={
            "EVENTLY_REDIS_URL": "redis://:not the password@127.0.0.1:%d" % port})
        deadline, r = time.time() + 30, None
        while time.time() < deadline:
            try:
                r = wrong.request("GET", "/health/ready", timeout=2)
                if r.status == 503 and r.json()["components"]["redis"]["state"] == "down":
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert r is not None and r.status == 503, r and r.text
        assert r.json()["components"]["redis"]["detail"] == "AUTH refused" and "not the password" not in r.text, r.text
    finally:
        redis.terminate()
        redis.wait(10)


def ops_get(port, path):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def test_ops_listen_keeps_metrics_and_dependency_details_off_the_public_listener(start_server):
    """ops_listen (API.md "Operations additions"; issue 15): /metrics and the
    detailed readiness move to their own listener; the public /health/ready
    says ready or not and nothing else, even when a dependency is down (its
    error text, host and user stay private), and the operations listener
    serves nothing but the operations routes."""
    import json
    ops = free_port()
    srv = start_server("ops-listen", scripts=DATA_APP, env={"EVENTLY_OPS_LISTEN": "127.0.0.1:%d" % ops})
    r = srv.get("/health/ready")
    assert r.status == 200 and r.json() == {"status": "ready"}, r.text
    assert srv.get("/metrics").status == 404
    status, text = ops_get(ops, "/health/ready")
    assert status == 200 and json.loads(text)["components"]["postgres"]["state"] == "up", text
    status, text = ops_get(ops, "/metrics")
    assert status == 200 and "evently_http_requests_total" in text
    assert ops_get(ops, "/items/1")[0] == 404 and ops_get(ops, "/db/value?n=1")[0] == 404
    assert srv.get("/db/value?n=1").status == 200  # the app itself is on the public listener still

    down = free_port()  # nothing listens there
    ops2 = free_port()
    bad = start_server("ops-listen-down", wait=False, scripts=DATA_APP, env={
        "EVENTLY_OPS_LISTEN": "127.0.0.1:%d" % ops2, "EVENTLY_REDIS_URL": "redis://127.0.0.1:%d" % down})
    deadline, r = time.time() + 30, None
    while time.time() < deadline:
        try:
            r = bad.get("/health/ready", timeout=2)
            if r.status == 503:
                break
        except OSError:
            pass
        time.sleep(0.2)
    assert r is not None and r.status == 503 and r.json() == {"status": "not-ready"}, r and r.text
    status, text = ops_get(ops2, "/health/ready")
    assert status == 503 and json.loads(text)["components"]["redis"]["detail"] == "cannot connect", text
