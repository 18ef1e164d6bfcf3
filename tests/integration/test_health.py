"""Operations endpoints: /health, /health/ready, /metrics."""
from conftest import metric_value


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
