"""The master keeps a server answering whatever its scripts do (issue 11): a
reload whose new workers never become ready keeps the old generation, a
script that never finishes loading is refused at the check, and a worker
that stops answering heartbeats is replaced."""
import os
import shutil
import signal
import time

from conftest import APP_DIR, Server, make_root
from test_reload import set_version, wait_version


def private_app(name):
    scripts = os.path.join(make_root(name), "app")
    shutil.copytree(APP_DIR, scripts)
    return scripts


def prepend(srv, lua):
    path = os.path.join(srv.scripts, "app.lua")
    with open(path) as f:
        src = f.read()
    with open(path + ".tmp", "w") as f:
        f.write(lua + "\n" + src)
    os.replace(path + ".tmp", path)


def test_a_reload_whose_new_workers_crash_at_start_keeps_the_old_generation():
    srv = Server("sup-crash", workers=2, scripts=private_app("sup-crash-app")).start()
    try:
        old = set(srv.wait_workers(2))
        set_version(srv, "v2")
        # loads in the master's check (no worker slot there), fails in every worker
        prepend(srv, 'if require("evently.runtime").worker().slot >= 0 then error("boom at start") end')
        since = srv.log_size()
        srv.signal(signal.SIGHUP)
        srv.wait_log(r"reload abandoned", timeout=30, since=since)
        for _ in range(20):
            r = srv.get("/version")
            assert r.status == 200 and r.json()["version"] == "v1"
        assert set(srv.wait_workers(2)) == old
        # a good reload afterwards goes through
        with open(os.path.join(srv.scripts, "app.lua")) as f:
            src = f.read().split("\n", 1)[1]
        with open(os.path.join(srv.scripts, "app.lua"), "w") as f:
            f.write(src)
        srv.signal(signal.SIGHUP)
        wait_version(srv, "v2", timeout=30)
    finally:
        srv.stop_and_check()


def test_a_script_that_never_finishes_loading_is_refused_at_the_check():
    srv = Server("sup-loop", workers=1, scripts=private_app("sup-loop-app")).start()
    try:
        old = srv.wait_workers(1)
        prepend(srv, "while true do end")
        since = srv.log_size()
        srv.signal(signal.SIGHUP)
        srv.wait_log(r"reload refused.*did not finish loading within 10 s", timeout=30, since=since)
        assert srv.get("/version").json()["version"] == "v1"
        assert srv.wait_workers(1) == old
    finally:
        srv.stop_and_check()


def test_a_worker_that_stops_answering_heartbeats_is_replaced():
    srv = Server("sup-watchdog", workers=1, env={"EVENTLY_WORKER_WATCHDOG": "2"}).start()
    try:
        pid = srv.wait_workers(1)[0]
        time.sleep(1.5)  # its first beats are in
        os.kill(pid, signal.SIGSTOP)  # a loop stuck in C looks like this from outside
        try:
            srv.wait_workers(1, exclude=[pid], timeout=15)
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert "has not answered" in srv.log_text()
        deadline = time.time() + 10
        while srv.get("/health").status != 200:
            assert time.time() < deadline
            time.sleep(0.1)
    finally:
        srv.stop_and_check()
