"""GET /openapi.json and /docs: the contract is served, and covers API.md."""
import os

import pytest

from conftest import REPO, Server

SCRIPTS = os.path.join(REPO, "scripts")

API_MD_ROUTES = [
    ("post", "/api/v1/auth/register"), ("post", "/api/v1/auth/login"), ("post", "/api/v1/auth/logout"),
    ("get", "/api/v1/users/me"), ("get", "/api/v1/events"), ("post", "/api/v1/events"),
    ("get", "/api/v1/events/{id}"), ("patch", "/api/v1/events/{id}"), ("delete", "/api/v1/events/{id}"),
    ("post", "/api/v1/bookings"), ("get", "/api/v1/bookings"), ("get", "/api/v1/bookings/{id}"),
    ("delete", "/api/v1/bookings/{id}"), ("post", "/api/v1/events/{id}/waitlist"), ("get", "/api/v1/waitlist"),
    ("delete", "/api/v1/waitlist/{id}"), ("get", "/api/v1/notifications"),
    ("post", "/api/v1/notifications/{id}/read"), ("get", "/api/v1/ws"), ("get", "/api/v1/admin/analytics/summary"),
    ("get", "/api/v1/admin/analytics/events/{id}"), ("get", "/health"), ("get", "/health/ready"),
    ("get", "/metrics"),
]


@pytest.fixture(scope="module")
def api():
    srv = Server("api-openapi", scripts=SCRIPTS, workers=1)
    srv.start()
    yield srv
    srv.stop_and_check()


def test_openapi_document_covers_every_route_of_api_md(api):
    r = api.get("/openapi.json")
    assert r.status == 200 and r.header("Content-Type") == "application/json"
    doc = r.json()
    assert doc["openapi"] == "3.1.0"
    for method, path in API_MD_ROUTES:
        assert method in doc["paths"].get(path, {}), (method, path)
        op = doc["paths"][path][method]
        assert op["responses"], (method, path)


def test_every_documented_error_answer_is_a_problem_document(api):
    doc = api.get("/openapi.json").json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for code, resp in op["responses"].items():
                if code.startswith("4") and path.startswith("/api"):
                    assert "application/problem+json" in resp["content"], (method, path, code)


def test_every_documented_path_exists_on_the_server(api):
    doc = api.get("/openapi.json").json()
    for path, ops in doc["paths"].items():
        concrete = path.replace("{id}", "1")
        for method in ops:
            r = api.request(method.upper(), concrete, body=None)
            assert r.status != 405, (method, path)
            if r.status == 404:
                assert r.json()["type"] != "https://evently.dev/problems/not-found" or \
                    "no route" not in r.json().get("detail", ""), (method, path)


def test_swagger_ui_is_served_at_docs(api):
    r = api.get("/docs")
    assert r.status == 200, r.text[:200]
    assert "text/html" in r.header("Content-Type") and "/openapi.json" in r.text
    js = api.get("/docs/swagger-ui-bundle.js")
    assert js.status == 200 and "javascript" in js.header("Content-Type") and len(js.body) > 100000
    assert api.get("/docs/../../etc/passwd").status == 404
    assert api.get("/docs/package.json").status == 404
