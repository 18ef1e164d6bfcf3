"""evently.time in a worker: sleep, every, after."""
import json
import time


def get(conn, method, path):
    conn.request(method, path)
    r = conn.getresponse()
    return r.status, json.loads(r.read())


def test_every_drives_a_counter_and_after_fires_once(server):
    conn = server.connection()  # keep-alive: the same worker each time
    try:
        status, a = get(conn, "GET", "/timers")
        assert status == 200
        assert a["after_fired"] is True
        time.sleep(0.6)
        status, b = get(conn, "GET", "/timers")
        assert b["pid"] == a["pid"]
        # period 0.05 s: ~12 ticks in 0.6 s; allow a busy machine
        assert b["ticks"] - a["ticks"] >= 4, (a, b)
        assert b["ticks"] - a["ticks"] <= 20, (a, b)
    finally:
        conn.close()


def test_after_scheduled_from_a_handler(server):
    key = "k%d" % int(time.time() * 1000)
    conn = server.connection()
    try:
        status, body = get(conn, "POST", "/later/" + key)
        assert (status, body) == (202, {"scheduled": key})
        status, body = get(conn, "GET", "/later/" + key)
        assert body["done"] is False
        time.sleep(0.5)
        status, body = get(conn, "GET", "/later/" + key)
        assert body["done"] is True
    finally:
        conn.close()


def test_sleep_takes_its_time(server):
    t0 = time.monotonic()
    r = server.get("/sleep?s=0.4")
    elapsed = time.monotonic() - t0
    assert r.status == 200
    assert r.json()["slept"] == 0.4
    assert 0.35 <= elapsed < 2.0, elapsed


def test_a_failing_timer_is_logged_and_nothing_else_breaks(server):
    since = server.log_size()
    conn = server.connection()
    try:
        status, _ = get(conn, "POST", "/timer-error?tag=t1")
        assert status == 202
        server.wait_log(r"timer-went-wrong t1", since=since)
        status, a = get(conn, "GET", "/timers")
        time.sleep(0.3)
        status, b = get(conn, "GET", "/timers")
        assert b["ticks"] > a["ticks"]  # the worker's other timers go on
    finally:
        conn.close()
    text = server.log_text().encode()[since:].decode(errors="replace")
    assert "stack traceback" in text
    assert server.get("/health").status == 200
