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
        assert srv.request("PUT", "/items/7", body={"name": "seven"}).status == 200
        assert srv.get("/items/7").json()["name"] == "seven"  # cached in Redis too
        cli = ["redis-cli", "-p", str(port), "--no-auth-warning", "-a", "correct horse battery"]
        cached = subprocess.run(cli + ["EXISTS", "evently:cache:item:7"], capture_output=True, text=True).stdout
        assert cached.strip() == "1", cached
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
        assert r.json()["components"]["redis"]["detail"] == "AUTH refused" and "password" not in r.text, r.text
    finally:
        redis.terminate()
        redis.wait(10)
