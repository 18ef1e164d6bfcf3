"""Runaway scripts (issue 11): a handler that never yields cannot freeze a
worker. It is stopped at the slice limit (even through pcall), answered 503,
and the same worker goes on serving."""
import concurrent.futures
import time

import subprocess

from conftest import BIN, Server


def test_a_handler_that_never_yields_is_stopped_and_the_worker_goes_on():
    srv = Server("abuse-spin", workers=1, env={"EVENTLY_SCRIPT_SLICE_MS": "300"}).start()
    try:
        pid = srv.wait_workers(1)[0]
        for path in ("/spin", "/spin-pcall"):
            t0 = time.time()
            r = srv.get(path, timeout=20)
            took = time.time() - t0
            assert r.status == 503 and r.json()["type"].endswith("/busy"), (path, r.status, r.text)
            assert took < 3, (path, took)
        with concurrent.futures.ThreadPoolExecutor(2) as ex:  # a spin and a health check at once
            spin = ex.submit(srv.get, "/spin", timeout=20)
            time.sleep(0.05)
            health = ex.submit(srv.get, "/health", timeout=20)
            assert health.result().status == 200 and spin.result().status == 503
        assert srv.worker_pids() == [pid]  # the same worker, not a replacement
        assert srv.get("/version").status == 200
        assert "without yielding" in srv.log_text()
    finally:
        srv.stop_and_check()


def test_a_script_that_cannot_be_stopped_ends_its_worker_and_another_takes_over():
    """An xpcall whose message handler loops runs with hooks off (Lua runs none
    while handling a hook's error): the worker ends itself a second after the
    stop failed, the master replaces it, and service goes on."""
    srv = Server("abuse-spin-xpcall", workers=1, env={"EVENTLY_SCRIPT_SLICE_MS": "300"}).start()
    try:
        pid = srv.wait_workers(1)[0]
        t0 = time.time()
        try:
            r = srv.get("/spin-pcall-xpcall", timeout=20)
            assert r.status in (502, 503), r.status
        except (ConnectionError, OSError):
            pass  # the worker ended with the request
        assert time.time() - t0 < 5
        srv.wait_workers(1, exclude=[pid], timeout=15)
        deadline = time.time() + 10
        while srv.get("/health").status != 200:
            assert time.time() < deadline
            time.sleep(0.1)
        assert "kept running after it was stopped" in srv.log_text()
    finally:
        srv.stop_and_check()


def test_a_handler_that_eats_memory_hits_the_lua_heap_ceiling_and_gets_503():
    srv = Server("abuse-memory", workers=1, env={"EVENTLY_LUA_MEMORY_MAX": "64m"}).start()
    try:
        pid = srv.wait_workers(1)[0]
        for _ in range(3):
            r = srv.get("/hog-memory", timeout=30)
            assert r.status == 503 and r.json()["type"].endswith("/busy"), (r.status, r.text)
        assert srv.get("/version").status == 200
        assert srv.worker_pids() == [pid]
        version = subprocess.run([BIN, "version"], capture_output=True, text=True).stdout
        if "Asan build" not in version:  # ASan keeps freed memory in quarantine: RSS says nothing
            with open("/proc/%d/status" % pid) as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
            assert rss < 200 * 1024, rss  # KiB: the heap stayed near its 64 MiB ceiling
    finally:
        srv.stop_and_check()
