"""evently.mail against a real SMTP server (aiosmtpd, see smtp_sink.py).

Most tests run a Lua script with `evently lua` (no Postgres or Redis needed:
their URLs point nowhere and nothing connects); the last one runs a server
and checks that its worker keeps answering while the SMTP server is slow."""
import json
import os
import subprocess
import threading
import time

from conftest import BIN, REPO, HERE, clean_env, run_cli
from smtp_sink import SmtpSink

NOWHERE = {"EVENTLY_DATABASE_URL": "postgresql://127.0.0.1:1/none",
           "EVENTLY_REDIS_URL": "redis://127.0.0.1:1"}


def lua_env(sink_url, **extra):
    env = dict(NOWHERE, EVENTLY_LOG_LEVEL="info")
    if sink_url:
        env["EVENTLY_SMTP_URL"] = sink_url
    env.update(extra)
    return clean_env(env)


def run_lua(tmp_path, source, env, timeout=60, args=()):
    """Runs source with `evently lua`; returns the JSON its last stdout line prints."""
    path = tmp_path / "script.lua"
    path.write_text(source)
    r = run_cli(["lua", str(path)] + list(args), env=env, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


# seconds: mail.send's own time, not the process's around it
SEND_ONE = """
local mail = require "evently.mail"
local json = require "evently.json"
local time = require "evently.time"
local t0 = time.monotonic()
local ok, res, code = mail.send(json.decode(arg[1]))
print(json.encode({ ok = ok or false, res = res, code = code, seconds = time.monotonic() - t0 }))
"""


def send_one(tmp_path, env, msg, timeout=60):
    return run_lua(tmp_path, SEND_ONE, env, timeout, args=[json.dumps(msg)])


def test_a_message_arrives_with_its_from_to_subject_and_body(tmp_path, smtp_sink):
    subject = "Billets confirmés — Köln 🎟 " + "long " * 20
    text = "Hallo Zoë,\nzweite Zeile = gleich\n" + "x" * 120 + "\n.a line starting with a dot\n"
    env = lua_env(smtp_sink.url, EVENTLY_MAIL_FROM="Évently Tickets <tickets@evently.test>")
    out = send_one(tmp_path, env, {"to": "Zoë Example <zoe@example.com>", "subject": subject,
                                   "text": text, "headers": {"Reply-To": "help@evently.test"}})
    assert out["ok"] is True, out
    [m] = smtp_sink.wait_for(lambda m: m.to == ["zoe@example.com"])
    assert m.mail_from == "tickets@evently.test"
    assert m.subject == subject
    assert m.header("From") == "Évently Tickets <tickets@evently.test>"
    assert m.header("To") == "Zoë Example <zoe@example.com>"
    assert m.header("Reply-To") == "help@evently.test"
    assert m.header("Message-ID") == out["res"]
    assert m.text == text
    assert m.message.get_content_type() == "text/plain"
    assert m.message.get_content_charset() == "utf-8"
    head = m.raw.split(b"\r\n\r\n", 1)[0]
    assert max(map(len, m.raw.split(b"\r\n"))) <= 78  # folded headers, QP body
    assert all(b < 0x80 for b in head)  # 7-bit headers


def test_fifty_concurrent_sends_from_fifty_coroutines_all_arrive(tmp_path, smtp_sink):
    source = """
local mail = require "evently.mail"
local time = require "evently.time"
local json = require "evently.json"
local done, errors = 0, {}
local t0 = time.monotonic()
for i = 1, 50 do
  time.after(0, function()
    local ok, err = mail.send { to = ("user%d@example.com"):format(i), subject = "n" .. i, text = "body " .. i }
    if ok then done = done + 1 else errors[#errors + 1] = err end
  end)
end
while done + #errors < 50 and time.monotonic() - t0 < 60 do time.sleep(0.01) end
print(json.encode({ done = done, errors = errors, seconds = time.monotonic() - t0 }))
"""
    smtp_sink.delay = 0.2  # each answer takes a while: the sends must overlap
    out = run_lua(tmp_path, source, lua_env(smtp_sink.url), timeout=120)
    assert out["done"] == 50, out
    got = smtp_sink.wait_for(count=50, timeout=5)
    assert sorted(m.to[0] for m in got) == sorted("user%d@example.com" % i for i in range(1, 51))
    assert all(m.subject == "n" + m.to[0][4:].split("@")[0] for m in got)
    # overlap, seen by the server: while one send waited for its answer to
    # DATA, others reached DATA too. A send that held the loop (or a single
    # lane) would keep them one at a time however long each took; the four
    # lanes keep up to four waiting at once.
    assert smtp_sink.data_peak >= 3, (smtp_sink.data_peak, out)


def test_a_refused_recipient_gives_the_servers_answer(tmp_path, smtp_sink):
    smtp_sink.reject = {"nobody@example.com"}
    out = send_one(tmp_path, lua_env(smtp_sink.url),
                   {"to": "nobody@example.com", "subject": "x", "text": "x", "retries": 3})
    assert out["ok"] is False
    assert out["res"].startswith("refused: 550 5.1.1 <nobody@example.com>"), out
    assert out["code"] == 550
    assert smtp_sink.messages == []


def test_credentials_never_go_to_a_server_without_tls(tmp_path, smtp_sink):
    """A URL with a user and password requires TLS (issue 15): the sink offers
    no STARTTLS, so nothing is sent (not the password, not the message), and
    the error is the transient "unavailable", so the mail waits for a fixed
    server rather than being lost. Without credentials the same sink is used
    in clear, as before."""
    with_password = smtp_sink.url.replace("smtp://", "smtp://mailer:hunter2@")
    out = send_one(tmp_path, lua_env(with_password), {"to": "tls@example.com", "subject": "x", "text": "x"})
    assert out["ok"] is False
    assert out["res"].startswith("unavailable: the SMTP server offered no TLS"), out
    assert "hunter2" not in out["res"]
    assert smtp_sink.messages == []
    out = send_one(tmp_path, lua_env(smtp_sink.url), {"to": "tls@example.com", "subject": "x", "text": "x"})
    assert out["ok"] is True, out
    smtp_sink.wait_for(lambda m: m.to == ["tls@example.com"])


def test_a_deferred_recipient_is_retried_until_accepted(tmp_path, smtp_sink):
    tries = []

    def defer_twice(address):
        tries.append(address)
        return len(tries) <= 2

    smtp_sink.defer = defer_twice
    out = send_one(tmp_path, lua_env(smtp_sink.url),
                   {"to": "later@example.com", "subject": "x", "text": "x", "retries": 3,
                    "retry_delay": 0.1})
    assert out["ok"] is True, out
    assert len(tries) == 3
    smtp_sink.wait_for(lambda m: m.to == ["later@example.com"])
    smtp_sink.defer = lambda a: True
    out = send_one(tmp_path, lua_env(smtp_sink.url), {"to": "later@example.com", "subject": "x", "text": "x"})
    assert out["res"].startswith("deferred: 451 4.3.0"), out


def test_header_injection_is_refused_and_nothing_is_sent(tmp_path, smtp_sink):
    for msg in ({"to": "a@example.com", "subject": "Hi\r\nBcc: evil@example.com", "text": "x"},
                {"to": "a@example.com\r\nRCPT TO:<evil@example.com>", "subject": "Hi", "text": "x"},
                {"to": "a@example.com", "from": "x@example.com\nBcc: evil@example.com", "subject": "Hi", "text": "x"}):
        out = send_one(tmp_path, lua_env(smtp_sink.url), msg)
        assert out["ok"] is False
        assert out["res"].startswith("invalid: ") and "CR, LF" in out["res"], out
    time.sleep(0.3)
    assert smtp_sink.messages == []


def test_a_slow_server_times_out_with_a_clear_error(tmp_path, smtp_sink):
    smtp_sink.delay = 3
    out = send_one(tmp_path, lua_env(smtp_sink.url), {"to": "a@example.com", "subject": "x", "text": "x", "timeout": 1})
    assert out["ok"] is False
    assert out["res"].startswith("timeout: "), out
    # mail.send alone, not the process around it: the timeout bounds the
    # whole send, so it gives up at 1 s, long before the server's answer at
    # 3 s (libcurl alone would take twice its timeout: one wait for the DATA
    # answer, one for QUIT's; the lane finishes that after the caller is told)
    assert 0.9 <= out["seconds"] < 1.8, out


def test_a_message_after_a_timed_out_one_gets_its_own_answers(tmp_path, smtp_sink):
    # the slow message's late "250" must not be read as the next one's reply
    smtp_sink.delay = lambda env: 1.5 if env.rcpt_tos == ["slow@example.com"] else 0
    source = """
local mail = require "evently.mail"
local json = require "evently.json"
local out = {}
for i = 1, 3 do
  local _, slow = mail.send { to = "slow@example.com", subject = "slow", text = "x", timeout = 1 }
  local ok, err = mail.send { to = "fast@example.com", subject = "fast " .. i, text = "x" }
  out[#out + 1] = { slow = slow, fast = ok or err }
end
print(json.encode(out))
"""
    out = run_lua(tmp_path, source, lua_env(smtp_sink.url))
    for r in out:
        assert r["slow"].startswith("timeout: "), out
        assert r["fast"] is True, out
    smtp_sink.wait_for(lambda m: m.subject.startswith("fast"), count=3)


def test_no_smtp_configured_says_so(tmp_path):
    out = send_one(tmp_path, lua_env(None), {"to": "a@example.com", "subject": "x", "text": "x"})
    del out["seconds"]
    assert out == {"ok": False, "res": "unavailable: no SMTP configured (EVENTLY_SMTP_URL)", "code": 0}


def test_smtp_down_fails_quickly_then_retries_succeed_once_it_is_back(tmp_path):
    sink = SmtpSink()  # not started: its port refuses connections
    try:
        out = send_one(tmp_path, lua_env(sink.url), {"to": "a@example.com", "subject": "x", "text": "x"})
        assert out["ok"] is False
        assert out["res"].startswith("unavailable: "), out
        # mail.send alone: a refused connection fails at once, it does not
        # wait out the 10 s connect timeout
        assert out["seconds"] < 2.0, out

        script = tmp_path / "retry.lua"
        script.write_text(SEND_ONE)
        msg = json.dumps({"to": "back@example.com", "subject": "after the outage", "text": "x",
                          "retries": 8, "retry_delay": 0.1})
        stdout_path = tmp_path / "retry.out"
        with open(stdout_path, "w") as f:
            proc = subprocess.Popen([BIN, "lua", str(script), msg], env=lua_env(sink.url), cwd=REPO,
                                    stdout=f, stderr=subprocess.PIPE, text=True)
        lines, retrying = [], threading.Event()

        def read_stderr():
            for line in proc.stderr:
                lines.append(line)
                if "unavailable" in line and "try 2 of 9" in line:
                    retrying.set()

        reader = threading.Thread(target=read_stderr)
        reader.start()
        try:
            # the first try failed and a retry is due (the next ones come
            # 0.1, 0.2, 0.4 ... s apart: about 25 s of tries are left)
            assert retrying.wait(60), "".join(lines)
            sink.start()
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(10)
        stderr = "".join(lines)
        assert proc.returncode == 0, stderr
        out = json.loads(stdout_path.read_text().strip().splitlines()[-1])
        assert out["ok"] is True, (out, stderr)
        sink.wait_for(lambda m: m.subject == "after the outage")
    finally:
        sink.stop()


def test_templates_render_and_send_end_to_end(tmp_path, smtp_sink):
    source = """
local mail = require "evently.mail"
local dmail = require "domain.mail"
local json = require "evently.json"
local m = assert(dmail.message("booking.confirmed", { booking_id = 12, event_id = 3, quantity = 2 },
  { name = "Ann", email = "ann@example.com" }, { name = "Fête de la Musique", venue = "Parc",
  starts_at = "2026-06-21T18:00:00Z" }))
local ok, res = mail.send(m)
print(json.encode({ ok = ok or false, res = res }))
"""
    out = run_lua(tmp_path, source, lua_env(smtp_sink.url))
    assert out["ok"] is True, out
    [m] = smtp_sink.wait_for()
    assert m.subject == "Booking #12 confirmed: Fête de la Musique"
    assert "2 tickets for Fête de la Musique" in m.text
    assert "Parc, starts 2026-06-21 18:00 UTC." in m.text


def test_the_worker_keeps_serving_while_the_smtp_server_is_slow(start_server, smtp_sink):
    srv = start_server("mail", scripts=os.path.join(HERE, "mail_app"), workers=1,
                       env={"EVENTLY_SMTP_URL": smtp_sink.url, "EVENTLY_HANDLER_TIMEOUT": "3"})
    smtp_sink.delay = 2.0
    result = {}

    def send():
        result["r"] = srv.post("/mail", {"to": "slow@example.com", "subject": "slow", "text": "x"},
                               timeout=30)

    t = threading.Thread(target=send)
    t0 = time.monotonic()
    t.start()
    answers = []  # (path, asked at, answered at, status, body)
    try:
        deadline = time.monotonic() + 30
        while not smtp_sink.data_times and time.monotonic() < deadline:
            time.sleep(0.02)
        assert smtp_sink.data_times, "the send never reached DATA"
        while smtp_sink.data_times[0][1] is None and time.monotonic() < deadline:
            for path in ("/health", "/mail/pending"):
                s = time.monotonic()
                r = srv.get(path)
                answers.append((path, s, time.monotonic(), r.status, r.json()))
            time.sleep(0.05)
    finally:
        t.join(30)
    # by order, not speed: answers asked after the sink had the whole message
    # and complete before it answered were served while the send waited on
    # SMTP. A loop blocked by the send answers none of them in that window;
    # one held for part of it answers none in its second half.
    had_it, answered = smtp_sink.data_times[0]
    assert answered is not None, smtp_sink.data_times
    assert all(a[3] == 200 for a in answers), answers
    during = [a for a in answers if had_it <= a[1] and a[2] < answered]
    assert sum(a[0] == "/health" for a in during) >= 3, (had_it, answered, answers)
    assert any(a[1] >= (had_it + answered) / 2 for a in during), (had_it, answered, answers)
    pending = [a[4]["pending"] for a in during if a[0] == "/mail/pending"]
    assert pending and set(pending) == {1}, during  # still waiting on SMTP
    r = result["r"]
    assert r.status == 200, r
    assert time.monotonic() - t0 >= 1.9
    [m] = smtp_sink.wait_for(lambda m: m.subject == "slow")
    assert m.header("Message-ID") == r.json()["message_id"]

    # a request that ends while its mail is in flight (here: the handler
    # deadline) cancels the send; the worker goes on
    smtp_sink.delay = 5
    r = srv.post("/mail", {"to": "late@example.com", "subject": "late", "text": "x"}, timeout=30)
    assert r.status == 504, r
    assert srv.get("/mail/pending").json()["pending"] == 0

    # a refusal comes back as the route chose to answer it
    smtp_sink.delay = 0
    smtp_sink.reject = {"gone@example.com"}
    r = srv.post("/mail", {"to": "gone@example.com", "subject": "x", "text": "x"})
    assert r.status == 502 and r.json()["error"].startswith("refused: 550"), r
    r = srv.post("/mail", {"to": "fine@example.com", "subject": "fine", "text": "x"})
    assert r.status == 200, r
