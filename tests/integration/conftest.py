"""Black-box integration tests for the evently binary.

The suite builds nothing: it runs the binary named by EVENTLY_BIN (default
<repo>/build/evently) against the test app in tests/integration/app/.

One server (the session-scoped `server` fixture) serves most tests. Tests that
need other limits, other scripts, plugins, or that signal/stop the server start
their own with `launch()` / the `start_server` factory. Every server gets its own
temporary EVENTLY_HOME (so its own embedded Postgres and Redis); on stop we
assert it exited 0 and that no process of that home (postgres, redis, workers)
is left. A session finalizer kills whatever a failed test left running.
"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
APP_DIR = os.path.join(HERE, "app")
BIN = os.path.abspath(os.environ.get("EVENTLY_BIN", os.path.join(REPO, "build", "evently")))
MIGRATIONS = os.path.join(REPO, "migrations")

READY_TIMEOUT = 90

# Limits of the shared server; tests import these instead of repeating numbers.
MAX_BODY = 64 * 1024
MAX_HEADER = 8192
READ_TIMEOUT = 2
HANDLER_TIMEOUT = 2
IDLE_TIMEOUT = 3
SESSION_ENV = {
    "EVENTLY_MAX_BODY": str(MAX_BODY),
    "EVENTLY_MAX_HEADER": str(MAX_HEADER),
    "EVENTLY_READ_TIMEOUT": str(READ_TIMEOUT),
    "EVENTLY_HANDLER_TIMEOUT": str(HANDLER_TIMEOUT),
    "EVENTLY_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
}

_ALL_SERVERS = []
_ALL_ROOTS = []


# ---------------------------------------------------------------- helpers


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_root(name):
    """A short temp dir (unix socket paths must stay short)."""
    root = tempfile.mkdtemp(prefix="evit-%s-" % name)
    os.chmod(root, 0o755)  # as root, postgres runs as user evently and must traverse it
    _ALL_ROOTS.append(root)
    return root


def clean_env(extra=None):
    """The process environment without any EVENTLY_* setting of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLY_")}
    env.update(extra or {})
    return env


def processes_under(root):
    """(pid, cmdline) of live processes whose cwd is under root or whose
    command line names it: workers, the master, postgres (cwd = its data
    dir), redis (cwd = its --dir)."""
    found = []
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        pid = int(d)
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # a zombie is gone, only not yet reaped
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):
            continue
        try:
            cwd = os.readlink("/proc/%d/cwd" % pid)
        except OSError:
            cwd = ""
        if cwd == root or cwd.startswith(root + "/") or root in cmd:
            found.append((pid, cmd))
    return found


def wait_no_processes_under(root, timeout=3.0):
    deadline = time.time() + timeout
    left = processes_under(root)
    while left and time.time() < deadline:
        time.sleep(0.1)
        left = processes_under(root)
    return left


def kill_everything_under(root):
    """Last resort after a failed test: SIGKILL, by pid, what runs in root."""
    for _ in range(3):
        left = processes_under(root)
        if not left:
            return
        for pid, _cmd in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.3)


def children_of(pid):
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[1]) == pid:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    cmd = f.read().split(b"\0")[0].decode(errors="replace")
                kids.append((int(d), cmd))
        except (OSError, IndexError, ValueError):
            continue
    return kids


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Response:
    def __init__(self, status, reason, header_list, body, version="HTTP/1.1"):
        self.status = status
        self.reason = reason
        self.header_list = header_list
        self.headers = {k.lower(): v for k, v in header_list}
        self.body = body
        self.version = version

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    @property
    def text(self):
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "<Response %d %r %r>" % (self.status, self.header_list, self.body[:300])


def read_response(f, head=False):
    """Reads one HTTP/1.1 response from a binary file object; None on EOF
    before a status line."""
    line = f.readline()
    if not line:
        return None
    version, status, reason = (line.decode("latin-1").rstrip("\r\n").split(" ", 2) + [""])[:3]
    headers = []
    while True:
        h = f.readline()
        if not h:
            raise EOFError("connection closed inside the response head")
        h = h.decode("latin-1").rstrip("\r\n")
        if not h:
            break
        name, _, value = h.partition(":")
        headers.append((name.strip(), value.strip()))
    r = Response(int(status), reason, headers, b"", version)
    n = int(r.header("content-length", "0"))
    if not head and n and int(status) not in (204, 304):
        body = f.read(n)
        if len(body) != n:
            raise EOFError("short body: %d of %d bytes" % (len(body), n))
        r.body = body
    return r


def encode_body(body, headers):
    if body is None:
        return None
    if isinstance(body, (dict, list)):
        headers.setdefault("Content-Type", "application/json")
        return json.dumps(body).encode()
    if isinstance(body, str):
        return body.encode()
    return body


# ----------------------------------------------------------------- server


class Server:
    """One `evently serve` process with its own home, port and log file."""

    def __init__(self, name="srv", env=None, workers=2, scripts=APP_DIR, plugins_dir=None, nofile=None):
        self.name = name
        self.nofile = nofile  # RLIMIT_NOFILE (soft and hard) for the server, like `ulimit -n`
        self.shared = False  # the session's shared server (the `server` fixture)
        self.root = make_root(name)
        self.home = os.path.join(self.root, "home")
        self.log_path = os.path.join(self.root, "server.log")
        self.scripts = scripts
        self.workers = workers
        self.port = free_port()
        self.host = "127.0.0.1"
        self.base_url = "http://%s:%d" % (self.host, self.port)
        if plugins_dir is None:
            plugins_dir = os.path.join(self.root, "plugins")
            os.makedirs(plugins_dir, exist_ok=True)
        self.env = clean_env({
            "EVENTLY_HOME": self.home,
            "EVENTLY_SCRIPTS": scripts,
            "EVENTLY_MIGRATIONS": MIGRATIONS,
            "EVENTLY_PLUGINS_DIR": plugins_dir,
            "EVENTLY_ACCESS_LOG": "stderr",
            "EVENTLY_LOG_LEVEL": "info",
        })
        self.env.update(env or {})
        self.proc = None
        self.returncode = None
        self._log = None
        _ALL_SERVERS.append(self)

    # -- lifecycle

    def start(self, wait=True):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--port", str(self.port), "--workers", str(self.workers)],
            env=self.env, cwd=self.root, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=self._limits)
        if wait:
            self.wait_ready()
        return self

    def _limits(self):
        if self.nofile:
            import resource
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def wait_ready(self, timeout=READY_TIMEOUT):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("evently exited with %s before it was ready; log:\n%s"
                                   % (self.proc.returncode, self.log_tail()))
            try:
                r = self.request("GET", "/health/ready", timeout=2)
                if r.status == 200:
                    return r
                last = r
            except OSError as e:
                last = e
            time.sleep(0.1)
        raise RuntimeError("not ready after %ss (last: %r); log:\n%s"
                           % (timeout, last, self.log_tail()))

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=60):
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        finally:
            if self._log:
                self._log.close()
                self._log = None
        return self.returncode

    def stop(self, timeout=60):
        """SIGTERM, wait; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def leftovers(self, timeout=3.0):
        return wait_no_processes_under(self.root, timeout)

    def stop_and_check(self, timeout=60):
        rc = self.stop(timeout)
        left = self.leftovers()
        assert rc == 0, "evently exited %r; log:\n%s" % (rc, self.log_tail())
        assert not left, "processes of %s left after stop: %r" % (self.home, left)
        return rc

    def force_cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            for pid, _ in children_of(self.proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            self.proc.kill()
            self.proc.wait()
        if self._log:
            self._log.close()
            self._log = None
        kill_everything_under(self.root)

    # -- processes

    def worker_pids(self):
        """Worker processes: the master's children that run the evently binary
        (the embedded redis-server is a child too)."""
        return sorted(pid for pid, cmd in children_of(self.proc.pid)
                      if os.path.basename(cmd) == os.path.basename(BIN))

    def wait_workers(self, n, timeout=15, exclude=()):
        deadline = time.time() + timeout
        pids = self.worker_pids()
        while time.time() < deadline:
            pids = self.worker_pids()
            if len(pids) == n and not set(pids) & set(exclude):
                return pids
            time.sleep(0.05)
        raise AssertionError("expected %d workers (not %r), have %r" % (n, exclude, pids))

    # -- logs

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")

    def log_size(self):
        return os.path.getsize(self.log_path)

    def log_tail(self, n=60):
        return "\n".join(self.log_text().splitlines()[-n:])

    def wait_log(self, pattern, timeout=10, since=0):
        """Waits until the log (from byte offset since) matches pattern."""
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        while True:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                text = f.read().decode("utf-8", errors="replace")
            m = rx.search(text)
            if m:
                return m
            if time.time() > deadline:
                raise AssertionError("log never matched %r; tail:\n%s" % (pattern, self.log_tail()))
            time.sleep(0.05)

    def access_log(self, since=0):
        """Parsed JSON access-log lines."""
        out = []
        with open(self.log_path, "rb") as f:
            f.seek(since)
            for line in f.read().decode("utf-8", errors="replace").splitlines():
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
        return out

    # -- HTTP

    def connection(self, timeout=15):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=15):
        headers = dict(headers or {})
        data = encode_body(body, headers)
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            return Response(r.status, r.reason, r.getheaders(), r.read())
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def socket(self, timeout=15):
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def raw(self, data, timeout=15):
        """Sends raw bytes, returns everything until the server closes."""
        with self.socket(timeout) as s:
            s.sendall(data)
            return recv_all(s)

    def metrics(self):
        r = self.get("/metrics")
        assert r.status == 200, r
        return r.text

    def metric(self, name, **labels):
        return metric_value(self.metrics(), name, **labels)

    def metrics_when(self, read, ready=None, gap=1.1, deadline_s=20):
        """read(/metrics text) once the workers' once-a-second flushes have
        caught up: the first reading for which ready(value) holds or, without
        ready, two readings `gap` apart that agree. An AssertionError with the
        last reading when neither comes by the deadline."""
        value = read(self.metrics())
        end = time.time() + deadline_s
        while time.time() < end:
            if ready is not None and ready(value):
                return value
            time.sleep(gap)
            again = read(self.metrics())
            if ready is None and again == value:
                return again
            value = again
        raise AssertionError("/metrics never %s: last reading %r" % ("got ready" if ready else "settled", value))


def recv_all(sock):
    chunks = []
    while True:
        try:
            b = sock.recv(65536)
        except ConnectionResetError:
            break
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def wait_for(fn, timeout=60, interval=0.3, what="condition"):
    """fn()'s first truthy value, asking every `interval` seconds; an
    AssertionError naming `what` (and fn's last value) at the deadline."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))


def metric_value(text, name, **labels):
    """Value of the sample `name` whose labels include `labels`; the sum when
    several match; None when none does."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(got.get(k) == str(v) for k, v in labels.items()):
            total += float(m.group(4))
            seen = True
    return total if seen else None


def launch(name, **kw):
    return Server(name, **kw).start()


def run_cli(args, env=None, timeout=120, cwd=None, input=None):
    """Runs `evently <args>`; returns CompletedProcess with text output."""
    return subprocess.run([BIN] + list(args), env=env if env is not None else clean_env(),
                          cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout,
                          input=input)


# ---------------------------------------------------------------- fixtures


# Stops of session-wide services (the Kafka brokers), run before the stray
# check: pytest may end that check's fixture before theirs.
_SESSION_STOPS = []


def stop_at_session_end(fn):
    _SESSION_STOPS.append(fn)


@pytest.fixture(scope="session", autouse=True)
def _no_strays():
    if not os.access(BIN, os.X_OK):
        pytest.exit("EVENTLY_BIN %s is not an executable; build it first" % BIN, returncode=2)
    yield
    strays = []
    for s in _ALL_SERVERS:  # the shared server may still be up: pytest can end this fixture first
        if s.shared and s.running():
            s.stop()
    for stop in _SESSION_STOPS:
        stop()
    for s in _ALL_SERVERS:
        if s.running():
            strays.append((s.name, s.pid))
        s.force_cleanup()
    for root in _ALL_ROOTS:
        left = processes_under(root)
        if left:
            strays.append((root, left))
            kill_everything_under(root)
    if not os.environ.get("EVENTLY_KEEP_TEST_HOMES"):  # set it to read server logs after a failure
        for root in _ALL_ROOTS:
            shutil.rmtree(root, ignore_errors=True)
    assert not strays, "processes were left running: %r" % strays


@pytest.fixture(scope="session")
def server():
    """The shared server: test app, 2 workers, small limits (SESSION_ENV)."""
    s = Server("main", env=SESSION_ENV, workers=2)
    s.shared = True
    try:
        s.start()
    except Exception:
        s.force_cleanup()
        raise
    yield s
    try:
        s.stop_and_check()
    finally:
        s.force_cleanup()


@pytest.fixture
def start_server():
    """Factory for extra servers; each is stopped (and checked) after the test
    unless the test stopped it itself."""
    started = []

    def factory(name="extra", wait=True, **kw):
        s = Server(name, **kw)
        started.append(s)
        return s.start(wait=wait)

    yield factory
    errors = []
    for s in started:
        try:
            if s.running():
                s.stop_and_check()
        except AssertionError as e:
            errors.append(str(e))
        finally:
            s.force_cleanup()
    assert not errors, errors


class Load:
    """Threads firing requests until stopped; records every outcome."""

    def __init__(self, srv, path="/version", threads=4, keepalive_threads=2):
        self.srv = srv
        self.path = path
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures = []
        self.bodies = []
        self.threads = [threading.Thread(target=self._fresh, daemon=True) for _ in range(threads)]
        self.threads += [threading.Thread(target=self._keepalive, daemon=True)
                         for _ in range(keepalive_threads)]

    def _record(self, r=None, err=None):
        with self.lock:
            if err is not None:
                self.failures.append(repr(err))
            elif r.status != 200:
                self.failures.append(repr(r))
            else:
                self.ok += 1
                self.bodies.append((time.time(), r.json()))

    def _fresh(self):
        while not self.stop_flag.is_set():
            try:
                self._record(self.srv.get(self.path, headers={"Connection": "close"}, timeout=20))
            except Exception as e:  # noqa: BLE001 - every failure counts
                self._record(err=e)

    def _keepalive(self):
        conn = self.srv.connection(timeout=20)
        while not self.stop_flag.is_set():
            try:
                conn.request("GET", self.path)
                r = conn.getresponse()
                resp = Response(r.status, r.reason, r.getheaders(), r.read())
                if resp.header("connection", "").lower() == "close":
                    conn.close()  # next request reconnects
                self._record(resp)
            except Exception as e:  # noqa: BLE001
                self._record(err=e)
                conn.close()
        conn.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(30)
        return False
from smtp_sink import smtp_sink  # noqa: F401  (the SMTP sink fixture, for any test)
