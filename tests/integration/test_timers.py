"""evently.time in a worker: sleep, every, after."""
import json
import time

from conftest import wait_for


def get(conn, method, path):
    conn.request(method, path)
    r = conn.getresponse()
    return r.status, json.loads(r.read())


def test_every_drives_a_counter_and_after_fires_once(server):
    conn = server.connection()  # keep-alive: the same worker each time
    try:
        status, a = get(conn, "GET", "/timers")
        assert status == 200
        # after(0.05) at load: a worker just started may not be 0.05 s old yet
        a = wait_for(lambda: (t := get(conn, "GET", "/timers")[1])["after_fired"] and t, timeout=10,
                     interval=0.05, what="after(0.05) set at load to fire")
        # deliberate: a fixed 0.6 s window to count ticks in; polling until
        # enough ticks would shrink it and blunt the "never faster" bound below
        time.sleep(0.6)
        status, b = get(conn, "GET", "/timers")
        assert b["pid"] == a["pid"]
        # period 0.05 s: ~12 ticks in 0.6 s; allow a busy machine
        assert b["ticks"] - a["ticks"] >= 4, (a, b)
        # never faster than its period: at most one tick per 0.05 s of the
        # window between the two handlers (the worker's own clock; +2 for
        # libevent's coarse clock at both ends)
        window = b["now"] - a["now"]
        assert b["ticks"] - a["ticks"] <= window / 0.05 + 2, (a, b)
    finally:
        conn.close()


def test_after_scheduled_from_a_handler(server):
    """after(0.2) fires once, not before its 0.2 s are up, on the worker that
    scheduled it. The route reports its due time, when it fired and its own
    now (time.monotonic of the worker): a slow GET may legitimately see it
    fired already, so "not early" is checked against those, not against how
    fast the test asks."""
    key = "k%d" % int(time.time() * 1000)
    early = 0.05  # libevent's coarse clock and cached loop time
    conn = server.connection()
    try:
        status, body = get(conn, "POST", "/later/" + key)
        assert (status, body) == (202, {"scheduled": key})
        status, body = get(conn, "GET", "/later/" + key)
        pid, due = body["pid"], body["due"]
        if body["now"] < due - early:
            assert body["done"] is False, body  # not fired before its time
        body = wait_for(lambda: (b := get(conn, "GET", "/later/" + key)[1])["done"] and b, timeout=10,
                        interval=0.05, what="after(0.2) to fire")
        assert body["pid"] == pid and body["due"] == due
        assert body["fired"] == 1, body
        assert due - early <= body["at"] <= body["now"], body
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
        # the worker's other timers go on (late on a busy machine, not never)
        wait_for(lambda: get(conn, "GET", "/timers")[1]["ticks"] > a["ticks"], timeout=10, interval=0.1,
                 what="the worker's other timers to tick")
    finally:
        conn.close()
    text = server.log_text().encode()[since:].decode(errors="replace")
    assert "stack traceback" in text
    assert server.get("/health").status == 200
