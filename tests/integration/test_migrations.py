"""`evently migrate`: order, checksums, refusing edits, instances starting together."""
import os
import shutil
import subprocess

from conftest import BIN, clean_env, make_root, run_cli, wait_no_processes_under


def migration_home(name, files):
    root = make_root(name)
    mig = os.path.join(root, "migrations")
    os.makedirs(mig)
    for fname, sql in files.items():
        with open(os.path.join(mig, fname), "w") as f:
            f.write(sql)
    env = clean_env({"EVENTLY_HOME": os.path.join(root, "home"), "EVENTLY_MIGRATIONS": mig})
    return root, mig, env


def test_applies_in_order_once_then_refuses_an_edited_file():
    root, mig, env = migration_home("mig-edit", {
        "0002_b.sql": "CREATE TABLE b (id int REFERENCES a (id));",
        "0001_a.sql": "CREATE TABLE a (id int PRIMARY KEY);",
    })
    p = run_cli(["migrate"], env=env)
    assert p.returncode == 0, p.stderr
    assert p.stderr.index("applied 0001_a.sql") < p.stderr.index("applied 0002_b.sql")
    p = run_cli(["migrate"], env=env)
    assert p.returncode == 0 and "applied 0" not in p.stderr  # nothing applied twice
    with open(os.path.join(mig, "0001_a.sql"), "a") as f:
        f.write("\n-- edited\n")
    p = run_cli(["migrate"], env=env)
    assert p.returncode == 1
    assert "0001_a.sql" in p.stderr and "edited" in p.stderr
    p = run_cli(["migrate", "--status"], env=env)
    assert "edited" in p.stdout and "0001_a.sql" in p.stdout
    assert not wait_no_processes_under(root)  # a server still exiting is not left over


def test_a_failing_migration_leaves_nothing_behind():
    root, mig, env = migration_home("mig-fail", {
        "0001_ok.sql": "CREATE TABLE ok (id int);",
        "0002_bad.sql": "CREATE TABLE half (id int); SELEC 1;",
    })
    p = run_cli(["migrate"], env=env)
    assert p.returncode == 1
    assert "0002_bad.sql" in p.stderr
    p = run_cli(["migrate", "--status"], env=env)
    assert "pending" in p.stdout and "0002_bad.sql" in p.stdout
    # fix it: the half-created table must not be in the way
    with open(os.path.join(mig, "0002_bad.sql"), "w") as f:
        f.write("CREATE TABLE half (id int);")
    p = run_cli(["migrate"], env=env)
    assert p.returncode == 0, p.stderr
    assert not wait_no_processes_under(root)  # a server still exiting is not left over


def test_instances_migrating_together_apply_each_file_once():
    files = {"%04d_t%d.sql" % (i, i): "CREATE TABLE t%d (id int);" % i for i in range(1, 6)}
    root, mig, env = migration_home("mig-race", files)
    assert run_cli(["migrate", "--status"], env=env).returncode == 0  # cluster created first
    procs = [subprocess.Popen([BIN, "migrate"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    applied = sum(err.count("applied 0") for _, err in outs)
    assert applied == 5, outs
    assert not wait_no_processes_under(root)  # a server still exiting is not left over
