"""The command line: exit codes and messages."""
import os
import textwrap
import time

import pytest

from api_support import SCRIPTS
from conftest import APP_DIR, MIGRATIONS, clean_env, free_port, make_root, processes_under, run_cli


def one_line(text):
    lines = [l for l in text.splitlines() if l.strip()]
    assert len(lines) == 1, "expected one line, got %r" % text
    return lines[0]


def test_version():
    p = run_cli(["version"])
    assert p.returncode == 0
    assert p.stdout.startswith("evently ")
    assert "Lua 5.4" in p.stdout


def test_help_goes_to_stdout_and_exits_0():
    p = run_cli(["help"])
    assert p.returncode == 0
    assert "usage: evently" in p.stdout
    for cmd in ("serve", "migrate", "check", "lua", "user create", "version"):
        assert cmd in p.stdout


def test_no_command_prints_usage_and_exits_2():
    p = run_cli([])
    assert p.returncode == 2
    assert "usage: evently" in p.stderr


@pytest.mark.parametrize("args,needle", [
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["serve", "--bogus"], "unknown option '--bogus'"),
    (["serve", "--port"], "option '--port' needs a value"),
    (["serve", "extra"], "unexpected argument 'extra'"),
    (["migrate", "--status=yes"], "option '--status=yes' takes no value"),
    (["check", "--nope=1"], "unknown option '--nope=1'"),
    (["user"], "user: expected 'create'"),
    (["user", "create", "--email", "a@b.c"], "--email and a password are required"),
    (["lua"], "lua: missing FILE"),
    (["dead-letters"], "dead-letters: expected list, retry or drop"),
    (["dead-letters", "retry"], "give ids or --group (one of them)"),
    (["dead-letters", "drop", "7", "--group", "g"], "give ids or --group (one of them)"),
    (["dead-letters", "retry", "x1"], "'x1' is not a dead letter id"),
    (["dead-letters", "list", "3"], "unexpected argument '3'"),
])
def test_usage_errors_exit_2_with_one_line(args, needle):
    p = run_cli(args, env=clean_env({"EVENTLY_HOME": "/nonexistent/never-created"}))
    assert p.returncode == 2, (p.returncode, p.stderr)
    line = one_line(p.stderr)
    assert line.startswith("evently: ")
    assert needle in line
    assert p.stdout == ""
    assert not os.path.exists("/nonexistent/never-created")


@pytest.mark.parametrize("var,value", [
    ("EVENTLY_PORT", "abc"),
    ("EVENTLY_PORT", "70000"),
    ("EVENTLY_WORKERS", "0"),
    ("EVENTLY_MAX_BODY", "lots"),
    ("EVENTLY_READ_TIMEOUT", "-1"),
    ("EVENTLY_LOG_LEVEL", "chatty"),
])
def test_bad_environment_value_exits_1_naming_the_variable(var, value):
    root = make_root("badenv")
    home = os.path.join(root, "home")
    p = run_cli(["serve", "--port", str(free_port())],
                env=clean_env({var: value, "EVENTLY_HOME": home, "EVENTLY_SCRIPTS": APP_DIR}),
                cwd=root, timeout=30)
    assert p.returncode == 1, (p.returncode, p.stderr)
    line = one_line(p.stderr)
    assert var in line
    assert value in line
    assert not os.path.exists(home), "a bad configuration still created the home"


def test_bad_flag_value_exits_1():
    p = run_cli(["serve", "--port", "http"], env=clean_env({"EVENTLY_HOME": "/nonexistent/x"}))
    assert p.returncode == 1
    assert "port" in one_line(p.stderr)


# ---- evently check


def write_app(src):
    d = os.path.join(make_root("check"), "app")
    os.makedirs(d)
    with open(os.path.join(d, "app.lua"), "w") as f:
        f.write(textwrap.dedent(src))
    return d


def check_env(scripts, **extra):
    return clean_env(dict({"EVENTLY_SCRIPTS": scripts, "EVENTLY_HOME": "/nonexistent/check",
                           "EVENTLY_PLUGINS_DIR": os.path.join(scripts, "plugins")}, **extra))


def test_check_accepts_the_test_app():
    p = run_cli(["check"], env=check_env(APP_DIR))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ok:")


def test_check_reports_a_syntax_error_with_file_and_line():
    scripts = write_app("""\
        local app = require "evently.app"
        app.get("/x", function() return {} end)
        local broken = = 1
    """)
    p = run_cli(["check"], env=check_env(scripts))
    assert p.returncode != 0
    assert os.path.join(scripts, "app.lua") + ":3:" in p.stderr, p.stderr


def test_check_reports_an_error_raised_at_load_with_file_and_line():
    scripts = write_app("""\
        local app = require "evently.app"

        app.get("no-leading-slash", function() return {} end)
    """)
    p = run_cli(["check"], env=check_env(scripts))
    assert p.returncode != 0
    assert "app.lua:3:" in p.stderr, p.stderr
    assert "must start with '/'" in p.stderr


def test_check_reports_a_missing_app():
    p = run_cli(["check"], env=check_env(os.path.join(make_root("empty"), "nothing")))
    assert p.returncode != 0
    assert "app.lua" in p.stderr


def test_serve_refuses_a_broken_app_before_starting_services():
    scripts = write_app("this is not lua\n")
    root = make_root("brokenserve")
    home = os.path.join(root, "home")
    p = run_cli(["serve", "--port", str(free_port())],
                env=clean_env({"EVENTLY_SCRIPTS": scripts, "EVENTLY_HOME": home}), cwd=root, timeout=60)
    assert p.returncode == 1
    assert "app.lua:1:" in p.stderr
    assert not processes_under(root)
    assert not os.path.exists(os.path.join(home, "pg"))


# ---- evently lua


def test_lua_runs_a_file_with_args_and_can_sleep():
    d = make_root("lua")
    path = os.path.join(d, "script.lua")
    with open(path, "w") as f:
        f.write(textwrap.dedent("""\
            local time = require "evently.time"
            local t0 = time.monotonic()
            local slept = time.sleep(0.3)
            local dt = time.monotonic() - t0
            print(string.format("args=%s,%s n=%d varargs=%s arg0=%s slept=%s dt_ok=%s",
              arg[1], arg[2], #arg, select("#", ...), arg[0], tostring(slept), tostring(dt >= 0.29)))
        """))
    t0 = time.monotonic()
    p = run_cli(["lua", path, "a", "b"], env=clean_env(), timeout=30)
    elapsed = time.monotonic() - t0
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "args=a,b n=2 varargs=2 arg0=%s slept=true dt_ok=true" % path
    assert elapsed >= 0.3


def test_lua_timers_run_while_the_chunk_waits():
    d = make_root("lua")
    path = os.path.join(d, "timers.lua")
    with open(path, "w") as f:
        f.write(textwrap.dedent("""\
            local time = require "evently.time"
            local n = 0
            local h = time.every(0.02, function() n = n + 1 end)
            local fired = false
            time.after(0.05, function() fired = true end)
            time.sleep(0.3)
            h:cancel()
            print(n >= 5, fired)
        """))
    p = run_cli(["lua", path], env=clean_env(), timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "true\ttrue"


def test_lua_error_exits_1_with_the_message():
    d = make_root("lua")
    path = os.path.join(d, "fail.lua")
    with open(path, "w") as f:
        f.write('local x = 1\nerror("script says no")\n')
    p = run_cli(["lua", path], env=clean_env(), timeout=30)
    assert p.returncode == 1
    assert "script says no" in p.stderr
    assert "fail.lua:2:" in p.stderr


def test_lua_missing_file_exits_nonzero():
    p = run_cli(["lua", "/nonexistent/nope.lua"], env=clean_env(), timeout=30)
    assert p.returncode != 0
    assert "nope.lua" in p.stderr


# ---- evently user create / migrate (embedded Postgres in a private home)
# The accounts are the app's: `user create` runs scripts/cli/user_create.lua of
# the real app (SCRIPTS), whose migrations make the users table.


@pytest.fixture(scope="module")
def cli_home():
    root = make_root("cli")
    home = os.path.join(root, "home")
    env = clean_env({"EVENTLY_HOME": home, "EVENTLY_MIGRATIONS": MIGRATIONS,
                     "EVENTLY_SCRIPTS": SCRIPTS})
    yield root, env
    assert not processes_under(root), "CLI commands left processes: %r" % processes_under(root)


def test_user_create_admin_once_then_duplicate(cli_home):
    root, env = cli_home
    args = ["user", "create", "--admin", "--email", "a@b.c", "--password", "longpassword"]
    p = run_cli(args, env=env, cwd=root)
    assert p.returncode == 0, p.stderr
    assert "created admin a@b.c" in p.stdout
    assert not processes_under(root), "postgres left running after user create"
    p = run_cli(args, env=env)
    assert p.returncode == 1
    assert "already exists" in p.stderr
    assert "a@b.c" in p.stderr
    assert "duplicate key" not in p.stderr  # a clear message, not the SQL error
    assert not processes_under(root)
    # email is case-insensitive
    p = run_cli(["user", "create", "--email", "A@B.C", "--password", "otherpassword"], env=env)
    assert p.returncode == 1
    assert "already exists" in p.stderr


def test_user_create_takes_the_password_off_the_command_line(cli_home):
    """Issue 15: a password on the command line is seen by every user of the
    machine (ps); `--password -` reads it from standard input, and with no
    --password EVENTLY_ADMIN_PASSWORD gives it. Either way the account logs in
    with it (checked through the app's own login code)."""
    root, env = cli_home
    p = run_cli(["user", "create", "--email", "stdin@b.c", "--password", "-"], env=env, input="piped password\n")
    assert p.returncode == 0, p.stderr
    p = run_cli(["user", "create", "--email", "env@b.c"], env=dict(env, EVENTLY_ADMIN_PASSWORD="from the env"))
    assert p.returncode == 0, p.stderr
    script = os.path.join(root, "login.lua")
    with open(script, "w") as f:
        f.write('local users = require "domain.users"\n'
                'for i = 1, #arg, 2 do print((users.authenticate(arg[i], arg[i + 1]) or {}).email) end\n')
    p = run_cli(["lua", script, "stdin@b.c", "piped password", "env@b.c", "from the env", "env@b.c", "-"], env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["stdin@b.c", "env@b.c", "nil"], p.stdout


def test_user_create_validates_input(cli_home):
    _, env = cli_home
    p = run_cli(["user", "create", "--email", "x@y.z", "--password", "short"], env=env)
    assert p.returncode == 1
    assert "at least 8" in p.stderr
    p = run_cli(["user", "create", "--email", "not-an-email", "--password", "longpassword"], env=env)
    assert p.returncode == 1
    assert "email" in p.stderr


def test_user_create_says_so_when_the_app_has_no_account_script(cli_home):
    root, env = cli_home
    p = run_cli(["user", "create", "--email", "n@b.c", "--password", "longpassword"],
                env=dict(env, EVENTLY_SCRIPTS=APP_DIR))
    assert p.returncode == 1
    assert "evently user create: this app has no " in p.stderr
    assert "cli/user_create.lua" in p.stderr
    assert not processes_under(root)


def test_dead_letters_are_listed_marked_for_retry_and_dropped(cli_home):
    root, env = cli_home
    script = os.path.join(root, "dead.lua")
    with open(script, "w") as f:
        f.write(textwrap.dedent("""\
            local db = require "evently.db"
            for _, g in ipairs({ "cli-a", "cli-a", "cli-b" }) do
              assert(db.query([[WITH o AS (INSERT INTO outbox (event_type, aggregate_id, payload)
                  VALUES ('booking.cancelled', 1, '{}') RETURNING id)
                INSERT INTO dead_letters (consumer_group, topic, outbox_id, attempts, error)
                SELECT $1, 'booking-cancelled', id, 6, 'boom' || chr(10) || 'line' FROM o]], g))
            end
        """))
    p = run_cli(["lua", script], env=env)
    assert p.returncode == 0, p.stderr

    def listed(*args):
        p = run_cli(["dead-letters", "list"] + list(args), env=env)
        assert p.returncode == 0, p.stderr
        lines = p.stdout.splitlines()
        assert lines[0].split("\t")[0] == "id"
        return [dict(zip(lines[0].split("\t"), line.split("\t"))) for line in lines[1:]]

    rows = listed("--group", "cli-a")
    assert len(rows) == 2 and all(r["group"] == "cli-a" and r["marked"] == "false" for r in rows)
    assert rows[0]["error"] == "boom line"  # one line per dead letter, whatever the error holds
    p = run_cli(["dead-letters", "retry", rows[0]["id"]], env=env)
    assert p.returncode == 0 and "marked for retry 1 dead letter" in p.stdout, p.stderr
    assert [r["marked"] for r in listed("--group", "cli-a")] == ["true", "false"]
    p = run_cli(["dead-letters", "drop", "--group", "cli-a"], env=env)
    assert p.returncode == 0 and "dropped 2 dead letters" in p.stdout, p.stderr
    assert [r["group"] for r in listed()] == ["cli-b"]
    assert not processes_under(root)


def test_migrate_status_lists_applied_migrations(cli_home):
    root, env = cli_home
    p = run_cli(["migrate", "--status"], env=env)
    assert p.returncode == 0, p.stderr
    assert "0001_users.sql" in p.stdout
    assert not processes_under(root)


def test_user_create_against_a_running_server_leaves_it_running(server):
    env = clean_env({"EVENTLY_HOME": server.home, "EVENTLY_MIGRATIONS": MIGRATIONS,
                     "EVENTLY_SCRIPTS": SCRIPTS})
    p = run_cli(["user", "create", "--email", "live@b.c", "--password", "longpassword",
                 "--name", "Live"], env=env)
    assert p.returncode == 0, p.stderr
    assert "created user live@b.c" in p.stdout
    # it reused the server's Postgres and Redis and did not stop them
    # deliberate: the master probes once a second and /health/ready reports
    # its last probe, so a probe must run after the CLI exits for a stopped
    # Postgres or Redis to show (nothing tells when one has run)
    time.sleep(1.2)
    r = server.get("/health/ready")
    assert r.status == 200, r
