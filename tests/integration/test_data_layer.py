"""Data layer through HTTP: the Postgres pool, transactions, the cache.

Each test starts its own server on the data app (tests/integration/data_app)
with the pool limits it needs; the embedded Postgres and Redis are real.
"""
import concurrent.futures
import os
import pwd
import socket
import subprocess
import time

from conftest import HERE, clean_env, run_cli

DATA_APP = os.path.join(HERE, "data_app")


def pg_ctl(srv, *args):
    """Runs pg_ctl on the server's embedded cluster, as the user that owns it."""
    pgdir = os.path.join(srv.home, "pg")
    version = open(os.path.join(pgdir, "PG_VERSION")).read().strip()
    binary = "/usr/lib/postgresql/%s/bin/pg_ctl" % version
    owner = pwd.getpwuid(os.stat(pgdir).st_uid).pw_name
    cmd = [binary, "-D", pgdir, "-w", "-t", "60"] + list(args)
    if owner != pwd.getpwuid(os.getuid()).pw_name:
        cmd = ["runuser", "-u", owner, "--"] + cmd
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_queries_answer_through_the_pool(start_server):
    srv = start_server("db-basic", scripts=DATA_APP)
    r = srv.get("/db/value?n=41")
    assert r.status == 200
    assert r.json()["value"] == 42


def test_pool_exhaustion_answers_a_timely_503_not_a_hang(start_server):
    srv = start_server("db-exhaust", scripts=DATA_APP, workers=1, env={
        "EVENTLY_DB_POOL_MAX": "2", "EVENTLY_DB_ACQUIRE_TIMEOUT_MS": "300"})
    def timed():
        r = srv.get("/db/sleep?s=1.5")
        return r.status, r.json(), time.time()

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda _: timed(), range(6)))
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    assert len(ok) == 2, results
    assert len(refused) == 4, results
    assert all(r[1]["type"].endswith("/db-timeout") for r in refused)
    assert max(r[2] for r in refused) < min(r[2] for r in ok), "refusals must not wait for the busy connections"
    assert srv.get("/db/value?n=1").status == 200


def test_an_error_inside_a_transaction_leaves_no_connection_stuck(start_server):
    srv = start_server("db-txerr", scripts=DATA_APP, workers=1, env={"EVENTLY_DB_POOL_MAX": "2"})
    for _ in range(10):
        r = srv.post("/db/tx-error")
        assert r.status == 200 and r.json()["rolled_back"] is True
    for _ in range(5):
        assert srv.get("/db/value?n=1").status == 200
    pool = srv.get("/db/pool").json()
    assert pool["busy"] == 0
    assert pool["total"] <= 2


def test_postgres_restart_mid_run_recovers_without_restarting_evently(start_server):
    srv = start_server("db-restart", scripts=DATA_APP, workers=1)
    assert srv.get("/db/value?n=1").status == 200
    pg_ctl(srv, "-m", "fast", "restart")
    deadline = time.time() + 20
    statuses = []
    while time.time() < deadline:
        r = srv.get("/db/value?n=2")
        statuses.append(r.status)
        if r.status == 200:
            break
        assert r.status == 503, r.text  # degraded, with a clear answer
        time.sleep(0.2)
    assert statuses[-1] == 200, statuses
    for _ in range(5):
        assert srv.get("/db/value?n=3").json()["value"] == 4
    assert srv.running()


def test_postgres_down_degrades_to_503_then_recovers(start_server):
    srv = start_server("db-down", scripts=DATA_APP, workers=1)
    assert srv.get("/db/value?n=1").status == 200
    pg_ctl(srv, "-m", "fast", "stop")
    try:
        t0 = time.time()
        r = srv.get("/db/value?n=1")
        assert r.status == 503
        assert r.header("Content-Type") == "application/problem+json"
        assert time.time() - t0 < 7
        ready = srv.get("/health/ready")
        deadline = time.time() + 5
        while ready.status != 503 and time.time() < deadline:
            time.sleep(0.3)
            ready = srv.get("/health/ready")
        assert ready.status == 503
        assert ready.json()["components"]["postgres"]["state"] == "down"
    finally:
        pg_ctl(srv, "start", "-l", os.path.join(srv.home, "log", "postgres.log"))
    deadline = time.time() + 20
    while time.time() < deadline and srv.get("/db/value?n=1").status != 200:
        time.sleep(0.3)
    assert srv.get("/db/value?n=1").status == 200


def test_pool_figures_appear_in_metrics(start_server):
    srv = start_server("db-metrics", scripts=DATA_APP, workers=1)
    for _ in range(3):
        srv.get("/db/value?n=1")
    text = srv.metrics_when(lambda t: t, lambda t: 'evently_pool_queries_total{pool="db",worker="0"}' in t)
    assert 'evently_pool_max{pool="db",worker="0"} 10' in text
    assert 'evently_pool_queries_total{pool="db",worker="0"}' in text
    ready = srv.get("/health/ready").json()
    assert ready["components"]["postgres"]["pool"]["max"] == 10


def read_item_per_worker(srv, item, want_workers=2, tries=60):
    """GET /items/<item> on fresh connections until every worker answered."""
    seen = {}
    for _ in range(tries):
        r = srv.get("/items/%d" % item)
        assert r.status == 200, r.text
        seen[r.header("X-Worker")] = r.json()["name"]
        if len(seen) >= want_workers:
            break
    return seen


def test_cache_invalidation_reaches_every_worker_at_once(start_server):
    srv = start_server("cache-inv", scripts=DATA_APP, workers=2)
    assert srv.request("PUT", "/items/1", body={"name": "first"}).status == 200
    seen = read_item_per_worker(srv, 1)
    assert len(seen) == 2 and set(seen.values()) == {"first"}, seen
    assert srv.request("PUT", "/items/1", body={"name": "second"}).status == 200
    deadline = time.time() + 0.5
    while True:
        seen = read_item_per_worker(srv, 1)
        if set(seen.values()) == {"second"} or time.time() > deadline:
            break
    assert len(seen) == 2 and set(seen.values()) == {"second"}, seen


def test_redis_down_cached_routes_still_answer_from_postgres(start_server):
    srv = start_server("cache-noredis", scripts=DATA_APP, workers=2)
    assert srv.request("PUT", "/items/2", body={"name": "before"}).status == 200
    read_item_per_worker(srv, 2)
    pidfile = os.path.join(srv.home, "run", "redis.pid")
    if not os.path.exists(pidfile):
        pidfile = [os.path.join(d, "redis.pid") for d in
                   (os.path.join("/tmp", x) for x in os.listdir("/tmp") if x.startswith("evently-"))
                   if os.path.exists(os.path.join(d, "redis.pid"))][0]
    os.kill(int(open(pidfile).read().strip()), 15)
    time.sleep(0.5)
    # reads work, writes work, and the invalidation still reaches both workers
    assert srv.request("PUT", "/items/2", body={"name": "after"}).status == 200
    deadline = time.time() + 2
    while True:
        seen = read_item_per_worker(srv, 2)
        if set(seen.values()) == {"after"} or time.time() > deadline:
            break
    assert set(seen.values()) == {"after"}, seen
    r = srv.get("/items/3")
    assert r.status == 404  # a miss goes to Postgres, not to an error
    deadline = time.time() + 5
    ready = srv.get("/health/ready")
    while ready.status != 503 and time.time() < deadline:
        time.sleep(0.3)
        ready = srv.get("/health/ready")
    assert ready.status == 503
    assert ready.json()["components"]["redis"]["state"] == "down"


def test_pool_keeps_its_minimum_open_before_the_first_request(start_server):
    srv = start_server("db-min", scripts=DATA_APP, workers=1, env={"EVENTLY_DB_POOL_MIN": "3"})
    text = srv.metrics_when(lambda t: t, lambda t: 'evently_pool_connections{pool="db",worker="0"} 3' in t)
    assert 'evently_pool_connections{pool="db",worker="0"} 3' in text, text[-2000:]


REACH = """import socket, sys
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        print("reached", path)
    except OSError as e:
        print("refused", path, e.errno)
"""


def test_no_other_local_user_reaches_the_embedded_servers(start_server):
    """The embedded Postgres trusts whoever reaches its socket (a superuser
    login, COPY ... PROGRAM) and Redis holds the token cache: another account
    of the machine must not reach either socket (issue 15). Run as root, as CI
    does: a process of user nobody tries to connect to both."""
    assert os.geteuid() == 0, "this test switches to user nobody: run the suite as root, as CI does"
    srv = start_server("db-sockets", scripts=DATA_APP)
    run = os.path.join(srv.home, "run")
    pg_sock, redis_sock = os.path.join(run, ".s.PGSQL.5432"), os.path.join(run, "redis.sock")
    assert os.path.exists(pg_sock) and os.path.exists(redis_sock), os.listdir(run)
    assert os.stat(run).st_mode & 0o077 == 0, oct(os.stat(run).st_mode)
    for sock in (pg_sock, redis_sock):
        assert os.stat(sock).st_mode & 0o077 == 0, (sock, oct(os.stat(sock).st_mode))
    p = subprocess.run(["/usr/bin/python3", "-c", REACH, pg_sock, redis_sock], user="nobody", group="nogroup",
                       capture_output=True, text=True, timeout=30, cwd="/")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("refused") == 2 and "reached" not in p.stdout, p.stdout
    assert srv.get("/db/value?n=1").json()["value"] == 2  # and evently itself still gets in
    # and the Redis wants its password even from an account that reaches its socket
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(redis_sock)
        s.sendall(b"PING\r\n")
        assert s.recv(64).startswith(b"-NOAUTH"), "the embedded Redis answered without a password"
    # and the cluster trusts nobody: every rule it loaded is peer authentication
    script = os.path.join(srv.root, "hba.lua")
    with open(script, "w") as f:
        f.write('local db = require "evently.db"\n'
                'for _, r in ipairs(assert(db.query("SELECT type, auth_method FROM pg_hba_file_rules"))) do\n'
                '  print(r.type, r.auth_method) end\n')
    p = run_cli(["lua", script], env=clean_env({"EVENTLY_HOME": srv.home}))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["local", "peer"], p.stdout
