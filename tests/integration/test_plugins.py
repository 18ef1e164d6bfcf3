"""Plugins (EVENTLY_PLUGINS, EVENTLY_PLUGINS_DIR): request hooks that
short-circuit, priority order, refusal of two plugins with one priority."""
import os
import textwrap

import pytest

from conftest import APP_DIR, Server, clean_env, free_port, make_root, processes_under, run_cli

PLUGINS = {
    # highest priority: runs first; blocks on a header, may add a route
    "alpha": """\
        local problem = require "evently.problem"
        return {
          version = "1.0",
          priority = 100,
          hooks = {
            request = function(req)
              req.trace = req.trace or {}
              table.insert(req.trace, "alpha")
              if req.headers["x-plugin-block"] then
                return problem.response(403, "blocked-by-plugin", "alpha says no")
              end
            end,
          },
          routes = function(app)
            app.get("/alpha/hello", function() return { from = "alpha" } end)
          end,
        }
    """,
    "beta": """\
        return {
          version = "2.0",
          priority = 50,
          hooks = {
            request = function(req)
              req.trace = req.trace or {}
              table.insert(req.trace, "beta")
            end,
          },
        }
    """,
    # same priority as alpha
    "gamma": """\
        return { version = "1.0", priority = 100, hooks = {} }
    """,
    "badprio": """\
        return { version = "1.0", priority = "high" }
    """,
}


@pytest.fixture(scope="module")
def plugins_dir():
    d = os.path.join(make_root("plugins"), "plugins")
    for name, src in PLUGINS.items():
        os.makedirs(os.path.join(d, name))
        with open(os.path.join(d, name, "plugin.lua"), "w") as f:
            f.write(textwrap.dedent(src))
    return d


@pytest.fixture(scope="module")
def plugged(plugins_dir):
    # listed lowest priority first: the platform must order them
    s = Server("plugged", workers=2, plugins_dir=plugins_dir, env={"EVENTLY_PLUGINS": "beta,alpha"})
    try:
        s.start()
        yield s
        s.stop_and_check()
    finally:
        s.force_cleanup()


def test_plugin_hooks_run_in_priority_order(plugged):
    r = plugged.get("/trace")
    assert r.status == 200
    assert r.json()["trace"] == ["alpha", "beta"]


def test_plugin_request_hook_short_circuits(plugged):
    r = plugged.get("/trace", headers={"X-Plugin-Block": "1"})
    assert r.status == 403
    assert r.header("content-type") == "application/problem+json", r
    doc = r.json()
    assert doc["type"].endswith("/blocked-by-plugin")
    assert doc["detail"] == "alpha says no"


def test_plugin_routes_are_served(plugged):
    r = plugged.get("/alpha/hello")
    assert r.status == 200
    assert r.json() == {"from": "alpha"}


def test_app_routes_still_served_with_plugins(plugged):
    assert plugged.get("/items/5").json() == {"id": "5"}


def test_check_counts_plugins(plugins_dir):
    env = clean_env({"EVENTLY_SCRIPTS": APP_DIR, "EVENTLY_PLUGINS_DIR": plugins_dir,
                     "EVENTLY_PLUGINS": "alpha,beta", "EVENTLY_HOME": "/nonexistent/p"})
    p = run_cli(["check"], env=env)
    assert p.returncode == 0, p.stderr
    assert "2 plugin(s)" in p.stdout


@pytest.mark.parametrize("names,needle", [
    ("alpha,gamma", "share priority 100"),
    ("alpha,badprio", "priority must be an integer"),
    ("alpha,missing", "missing"),
    ("../alpha", "not a plain name"),
])
def test_bad_plugin_set_is_refused_at_start(plugins_dir, names, needle):
    root = make_root("badplug")
    home = os.path.join(root, "home")
    env = clean_env({"EVENTLY_SCRIPTS": APP_DIR, "EVENTLY_PLUGINS_DIR": plugins_dir,
                     "EVENTLY_PLUGINS": names, "EVENTLY_HOME": home})
    p = run_cli(["serve", "--port", str(free_port()), "--workers", "1"], env=env, cwd=root, timeout=60)
    assert p.returncode != 0
    assert needle in p.stderr, p.stderr
    assert not processes_under(root)
    p = run_cli(["check"], env=env)
    assert p.returncode != 0
    assert needle in p.stderr
