"""SIGHUP: a checked reload. New workers load the edited scripts, old ones
drain; not one request fails. A script that does not load is refused and the
old workers keep serving."""
import os
import re
import shutil
import signal
import threading
import time

import pytest

from conftest import APP_DIR, Load, Server, make_root, metric_value, pid_alive


@pytest.fixture(scope="module")
def reloadable():
    """A server on a private copy of the test app, so the test can edit it."""
    scripts = os.path.join(make_root("scripts"), "app")
    shutil.copytree(APP_DIR, scripts)
    s = Server("reload", workers=2, scripts=scripts, env={"EVENTLY_DRAIN_TIMEOUT": "10"})
    try:
        s.start()
        yield s
        s.stop_and_check()
    finally:
        s.force_cleanup()


def set_version(srv, text):
    path = os.path.join(srv.scripts, "app.lua")
    with open(path) as f:
        src = f.read()
    src, n = re.subn(r'local VERSION = "[^"]*"', 'local VERSION = "%s"' % text, src)
    assert n == 1
    with open(path + ".tmp", "w") as f:
        f.write(src)
    os.replace(path + ".tmp", path)


def wait_version(srv, version, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = srv.get("/version", headers={"Connection": "close"})
        if r.status == 200 and r.json()["version"] == version:
            return
        time.sleep(0.05)
    raise AssertionError("version %s never served; log:\n%s" % (version, srv.log_tail()))


def test_reload_under_load_fails_no_request(reloadable):
    srv = reloadable
    assert srv.get("/version").json()["version"] == "v1"
    old_workers = srv.wait_workers(2)
    set_version(srv, "v2")
    with Load(srv, "/version", threads=4, keepalive_threads=2) as load:
        time.sleep(1.0)
        t_hup = time.time()
        srv.signal(signal.SIGHUP)
        srv.wait_log(r"reload: generation \d+ serving")
        wait_version(srv, "v2")
        time.sleep(1.5)  # keep firing across the old generation's drain
    assert load.failures == [], "%d failed of %d: %r" % (len(load.failures), load.ok + len(load.failures),
                                                        load.failures[:5])
    assert load.ok > 50
    versions_before = {b["version"] for t, b in load.bodies if t < t_hup}
    versions_at_end = {b["version"] for t, b in load.bodies[-20:]}
    assert versions_before == {"v1"}
    assert versions_at_end == {"v2"}, versions_at_end
    # the old generation is gone, a new one of the same size serves
    new_workers = srv.wait_workers(2, exclude=old_workers)
    assert not any(pid_alive(p) for p in old_workers)
    for _ in range(10):
        assert srv.get("/version").json()["version"] == "v2"
    assert srv.metrics_when(lambda t: metric_value(t, "evently_workers"), lambda n: n == 2) == 2  # slots clear on reaping


def test_reload_lets_an_inflight_request_finish(reloadable):
    srv = reloadable
    result = {}

    def slow():
        try:
            r = srv.get("/sleep?s=1.5&tag=reload-inflight", timeout=30)
            result["status"], result["body"] = r.status, r.json()
        except Exception as e:  # noqa: BLE001
            result["error"] = repr(e)

    old = srv.wait_workers(2)
    since = srv.log_size()
    t = threading.Thread(target=slow)
    t.start()
    srv.wait_log(r"sleep-start reload-inflight", since=since)  # the request is with its handler now
    srv.signal(signal.SIGHUP)
    t.join(30)
    assert result.get("status") == 200, result
    assert result["body"]["pid"] in old  # answered by the old generation
    srv.wait_workers(2, exclude=old)


def test_broken_script_at_reload_keeps_old_workers(reloadable):
    srv = reloadable
    wait_version(srv, "v2")
    workers = srv.wait_workers(2)
    path = os.path.join(srv.scripts, "app.lua")
    with open(path) as f:
        good = f.read()
    with open(path, "w") as f:
        f.write(good.replace('local VERSION = "v2"', 'local VERSION = "v3"') + "\nthis is not lua(\n")
    since = srv.log_size()
    srv.signal(signal.SIGHUP)
    m = srv.wait_log(r"reload refused[^\n]*", since=since)
    assert "app.lua:" in m.group(0), m.group(0)  # names file:line
    time.sleep(0.3)
    for _ in range(10):
        r = srv.get("/version")
        assert r.status == 200
        assert r.json()["version"] == "v2"
    assert srv.worker_pids() == workers
    # fixed: the next reload goes through
    with open(path, "w") as f:
        f.write(good.replace('local VERSION = "v2"', 'local VERSION = "v3"'))
    srv.signal(signal.SIGHUP)
    wait_version(srv, "v3")
    srv.wait_workers(2, exclude=workers)


def test_runtime_error_in_script_at_reload_is_refused(reloadable):
    srv = reloadable
    path = os.path.join(srv.scripts, "app.lua")
    with open(path) as f:
        good = f.read()
    with open(path, "w") as f:
        f.write(good + '\nerror("refuse me at load")\n')
    since = srv.log_size()
    srv.signal(signal.SIGHUP)
    srv.wait_log(r"reload refused[^\n]*refuse me at load", since=since)
    assert srv.get("/version").json()["version"] == "v3"
    with open(path, "w") as f:
        f.write(good)
