"""Monitoring as code (issue 16): examples/deploy/monitoring/.

The alert rules pass `promtool check rules` and their unit tests `promtool
test rules`; the scrape configuration passes `promtool check config`; and
every series that an alert expression or a dashboard query names is one a live
server on the real scripts/ (in-process event stream) exposes on /metrics,
with the labels (and label values, for exact matches) it really has. The
checker is tested on bad input too: a made-up series, label or route in a copy
of the dashboard is caught."""
import copy
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import time

import pytest
import yaml

from api_support import BASE, book, new_event, problem, start_api, token_of
from conftest import BIN, REPO
from ws_client import CLOSE, Client

MON = os.path.join(REPO, "examples", "deploy", "monitoring")
ALERTS = os.path.join(MON, "alerts.yml")
ALERTS_TEST = os.path.join(MON, "alerts_test.yml")
PROMETHEUS_YML = os.path.join(MON, "prometheus.yml")
DASHBOARD = os.path.join(MON, "grafana-dashboard.json")

# Series Prometheus makes itself, with the labels they carry.
PROMETHEUS_OWN = {"up": {"job", "instance"}}
# Labels the scrape adds to every evently series (prometheus.yml).
TARGET_LABELS = {"job", "instance"}
# Series that exist only in Kafka mode, which a server with the in-process
# stream cannot show: each must at least be a name the binary renders.
KAFKA_ONLY = {"evently_outbox_published_total": "counted by the outbox relay, which runs only with Kafka",
              "evently_outbox_oldest_unpublished_seconds": "the relay's backlog, reported only with Kafka"}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^{}]*)\}")
EVENTLY_NAME = re.compile(r"\bevently_[a-z0-9_]+\b")
MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
# label_replace(v, "dst", "replacement", "src", "regex"): dst is a label the query makes
LABEL_REPLACE_DST = re.compile(r'"([a-zA-Z_][a-zA-Z0-9_]*)"\s*,\s*"(?:[^"\\]|\\.)*"\s*,\s*"[a-zA-Z_][a-zA-Z0-9_]*"'
                               r'\s*,\s*"(?:[^"\\]|\\.)*"\s*\)')
LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$", re.S)


# ------------------------------------------------------------------ the checker


def exposition(text):
    """family -> {"type": str, "labels": {label: set of values}} from /metrics text."""
    families, samples = {}, []
    for line in text.splitlines():
        m = re.match(r"^# TYPE (\S+) (\S+)", line)
        if m:
            families.setdefault(m.group(1), {"type": m.group(2), "labels": {}})
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+\S+", line)
        if m:
            samples.append((m.group(1), m.group(2) or ""))
    for name, labels in samples:
        family = family_of(name, families)
        entry = families.setdefault(family, {"type": "untyped", "labels": {}})
        for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels):
            entry["labels"].setdefault(k, set()).add(v)
    return families


def family_of(name, families):
    """The family a sample or selector name belongs to: a histogram's (or
    summary's) _bucket, _sum and _count are its family's."""
    if name in families:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        base = name[: -len(suffix)]
        if name.endswith(suffix) and families.get(base, {}).get("type") in ("histogram", "summary"):
            return base
    return name


def mask_strings(expr):
    """expr with the inside of every string literal replaced by '_', same length
    (so braces or words inside strings do not look like syntax)."""
    return re.sub(r'"((?:[^"\\]|\\.)*)"', lambda m: '"' + "_" * len(m.group(1)) + '"', expr)


def grafana_to_promql(expr):
    """Grafana's interval variables as durations; $job/$instance stay inside
    their regex matchers (valid PromQL as they are)."""
    return re.sub(r"\$(?:__rate_interval|__interval|__range)\b", "1m", expr)


def check_expr(expr, families, where):
    """Problems (strings) with one PromQL expression against the exposed
    families: names not exposed, labels the family does not have, exact label
    values it never showed."""
    problems = []
    label_values = LABEL_VALUES.match(expr)
    asked_labels = []
    if label_values:  # a Grafana variable query
        expr, asked_labels = label_values.group(1), [label_values.group(2)]
    expr = grafana_to_promql(expr)
    masked = mask_strings(expr)
    used = set()
    for name in EVENTLY_NAME.findall(masked):
        family = family_of(name, families)
        used.add(family)
        if family in KAFKA_ONLY:
            continue
        if family not in families:
            problems.append("%s: %s is not exposed by /metrics" % (where, name))
        elif family != name and families[family]["type"] not in ("histogram", "summary"):
            problems.append("%s: %s: %s is a %s, not a histogram" % (where, name, family, families[family]["type"]))
    labels_in_play = set(TARGET_LABELS)
    for family in used:
        labels_in_play |= set(families.get(family, {}).get("labels", {}))
    labels_in_play |= set(LABEL_REPLACE_DST.findall(expr))
    for m in SELECTOR.finditer(masked):
        name = m.group(1)
        matchers = expr[m.start(2):m.end(2)]
        if name in PROMETHEUS_OWN:
            allowed, values = PROMETHEUS_OWN[name], {}
        elif name.startswith("evently_"):
            family = family_of(name, families)
            values = families.get(family, {}).get("labels", {})
            allowed = set(values) | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
        else:
            problems.append("%s: %s is neither an evently series nor one of Prometheus' own" % (where, name))
            continue
        pos = 0
        while pos < len(matchers.strip()):
            mm = MATCHER.match(matchers, pos)
            if not mm:
                problems.append("%s: cannot read the matchers of %s{%s}" % (where, name, matchers))
                break
            pos = mm.end()
            label, op, value = mm.groups()
            if label not in allowed:
                problems.append("%s: %s has no label %r (it has %s)" % (where, name, label, sorted(allowed)))
            elif op == "=" and "$" not in value and label in values and value not in values[label]:
                problems.append("%s: %s{%s=%r}: /metrics never showed that value (it has %s)"
                                % (where, name, label, value, sorted(values[label])))
    grouping = [lbl.strip() for g in GROUPING.findall(masked) for lbl in g.split(",") if lbl.strip()]
    for label in grouping + asked_labels:
        if label not in labels_in_play | {"le"}:
            problems.append("%s: label %r is on none of the series used (%s)" % (where, label, sorted(used)))
    if not used and "up" not in re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", masked):
        problems.append("%s: names no series at all" % where)
    return problems


def alert_exprs(rules_doc):
    return [("alert %s" % r["alert"], r["expr"]) for g in rules_doc["groups"] for r in g["rules"] if "alert" in r]


def dashboard_panels(dash):
    for p in dash.get("panels", []):
        yield p
        for inner in p.get("panels", []):
            yield inner


def dashboard_exprs(dash):
    out = []
    for p in dashboard_panels(dash):
        for t in p.get("targets", []):
            out.append(("panel %r target %s" % (p.get("title"), t.get("refId")), t["expr"]))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append(("variable %s" % v["name"], q))
    return out


def check_all(exprs, families):
    return [p for where, expr in exprs for p in check_expr(expr, families, where)]


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def load_dashboard(path=None):
    with open(path or DASHBOARD) as f:
        return json.load(f)


def promtool():
    path = shutil.which("promtool")
    assert path, "promtool missing: .ci/packages-test lists prometheus"
    return path


def run_promtool(*args, cwd=MON):
    p = subprocess.run([promtool()] + list(args), cwd=cwd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p.stdout + p.stderr


# ------------------------------------------------------------------ promtool


def test_alert_rules_pass_promtool_check():
    out = run_promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in out, out


def test_alert_rules_pass_their_unit_tests():
    out = run_promtool("test", "rules", "alerts_test.yml")
    assert "SUCCESS" in out, out


def test_prometheus_config_passes_promtool_and_scrapes_three_instances():
    out = run_promtool("check", "config", "prometheus.yml")
    assert "SUCCESS" in out, out
    doc = load_yaml(PROMETHEUS_YML)
    assert doc["rule_files"] == ["alerts.yml"]
    job = [j for j in doc["scrape_configs"] if j["job_name"] == "evently"]
    assert len(job) == 1
    targets = [t for sc in job[0]["static_configs"] for t in sc["targets"]]
    assert targets == ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"]


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_must_not():
    alerts = {r["alert"] for g in load_yaml(ALERTS)["groups"] for r in g["rules"] if "alert" in r}
    fires, silent = set(), set()
    for case in load_yaml(ALERTS_TEST)["tests"]:
        for t in case.get("alert_rule_test", []):
            (fires if t.get("exp_alerts") else silent).add(t["alertname"])
    assert alerts - fires == set(), "alerts never tested firing"
    assert alerts - silent == set(), "alerts never tested staying silent"
    assert (fires | silent) - alerts == set(), "tests of alerts that do not exist"


def test_every_alert_has_for_or_says_why_not_a_severity_and_a_runbook():
    for g in load_yaml(ALERTS)["groups"]:
        for r in g["rules"]:
            assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
            assert r["annotations"]["summary"] and "Runbook:" in r["annotations"]["description"], r["alert"]
            # without `for`, the expression itself spans a window (increase over 15m)
            assert "for" in r or re.search(r"\[\d+m\]", r["expr"]), r["alert"]


def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses each dashboard query (as a recording rule), with
    Grafana's $__rate_interval as a duration."""
    rules = [{"record": "dashboard:query_%d" % i, "expr": grafana_to_promql(expr)}
             for i, (_where, expr) in enumerate(dashboard_exprs(load_dashboard()))
             if not LABEL_VALUES.match(expr)]
    assert len(rules) >= 20
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = run_promtool("check", "rules", str(path), cwd=str(tmp_path))
    assert "SUCCESS: %d rules found" % len(rules) in out, out


def test_dashboard_is_importable_with_a_datasource_input():
    dash = load_dashboard()
    assert 36 <= dash["schemaVersion"] <= 41
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in dashboard_panels(dash)]
    assert len(ids) == len(set(ids))
    for p in dashboard_panels(dash):
        for holder in [p] + p.get("targets", []):
            if "datasource" in holder:
                assert holder["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
    titles = " | ".join(p["title"].lower() for p in dashboard_panels(dash))
    for want in ("requests/s", "latency", "bookings/s", "sold-out", "pool", "lag", "dead letters", "outbox",
                 "workers", "lua memory", "websockets"):
        assert want in titles, want


# ------------------------------------------------------------------ live server


def wait_for_names(srv, names, deadline_s=20):
    """/metrics once every name in `names` shows up (counters appear with their
    first count, flushed once a second); the last reading otherwise."""
    end = time.time() + deadline_s
    text = srv.metrics()
    while time.time() < end:
        fams = exposition(text)
        if all(n in fams for n in names):
            return text
        time.sleep(0.5)
        text = srv.metrics()
    return text


@pytest.fixture(scope="module")
def live():
    """A server on the real scripts/ (in-process stream) after a booking, a
    sold-out 409, a 404, a WebSocket opened and closed and a worker killed and
    replaced: the families that appear only once something happened now exist.
    Yields the parsed /metrics."""
    srv = start_api("monitoring", users=2, prefix="mon")
    try:
        ev = new_event(srv, capacity=1)["id"]
        assert book(srv, srv.users[0], ev, 1).status == 201
        for _ in range(3):  # the first refusal comes from Lua, the next ones from C (early answers)
            problem(book(srv, srv.users[1], ev, 1), 409, "sold-out")
        assert srv.get(BASE + "/events/999999999").status == 404
        assert srv.get("/no/such/route").status == 404  # route="unmatched"
        ws = Client(srv, BASE + "/ws?token=" + token_of(srv.users[1]))
        assert ws.accepted(), ws.status
        ws.send(CLOSE, struct.pack("!H", 1000))
        ws.sock.close()
        victim = srv.wait_workers(2)[0]
        time.sleep(1.1)  # older than a second: replaced at once, not after the crash-loop pause
        os.kill(victim, signal.SIGKILL)
        srv.wait_workers(2, exclude=[victim])
        used = {family_of(n, {}) for _w, e in alert_exprs(load_yaml(ALERTS)) + dashboard_exprs(load_dashboard())
                for n in EVENTLY_NAME.findall(e)}
        wanted = {n for n in used if n not in KAFKA_ONLY and not n.endswith(HISTOGRAM_SUFFIXES)}
        wanted |= {"evently_http_request_duration_seconds", "evently_worker_restarts_total",
                   "evently_websocket_opened_total", "evently_websocket_closed_total"}
        text = wait_for_names(srv, wanted)
        yield exposition(text)
    finally:
        srv.stop_and_check()


def test_live_metrics_have_the_labels_the_rules_rely_on(live):
    assert {"method", "route", "status"} <= set(live["evently_http_requests_total"]["labels"])
    assert live["evently_http_request_duration_seconds"]["type"] == "histogram"
    assert {"bookings.create", "unmatched"} <= live["evently_http_requests_total"]["labels"]["route"]
    assert {"201", "404", "409"} <= live["evently_http_requests_total"]["labels"]["status"]
    assert {"db", "redis"} <= live["evently_pool_busy"]["labels"]["pool"]
    assert {"group", "topic"} <= set(live["evently_consumer_lag"]["labels"])
    assert "evently_worker_restarts_total" in live and "evently_websocket_opened_total" in live


def test_every_series_in_the_alert_rules_is_exposed(live):
    problems = check_all(alert_exprs(load_yaml(ALERTS)), live)
    assert problems == [], "\n".join(problems)


def test_every_series_in_the_dashboard_is_exposed(live):
    problems = check_all(dashboard_exprs(load_dashboard()), live)
    assert problems == [], "\n".join(problems)


def test_kafka_only_series_are_named_by_the_binary(live):
    """What a server without Kafka cannot show must at least be a series the
    server renders, spelled the same: in the binary (C) or in the platform's
    Lua modules (core/lua)."""
    with open(BIN, "rb") as f:
        sources = [f.read()]
    for d, _, files in os.walk(os.path.join(REPO, "core", "lua")):
        for name in files:
            with open(os.path.join(d, name), "rb") as f:
                sources.append(f.read())
    for name, why in KAFKA_ONLY.items():
        assert any(name.encode() in s for s in sources), (name, why)
        assert name not in live, "%s is exposed without Kafka now: drop it from KAFKA_ONLY" % name


def test_the_checker_catches_a_made_up_series_in_a_copy_of_the_dashboard(live):
    bad = copy.deepcopy(load_dashboard())
    bad["panels"][1]["targets"].append({"refId": "Z", "expr": "sum(rate(evently_made_up_total[$__rate_interval]))"})
    problems = check_all(dashboard_exprs(bad), live)
    title = bad["panels"][1]["title"]
    assert problems == ["panel %r target Z: evently_made_up_total is not exposed by /metrics" % title]


@pytest.mark.parametrize("expr, complaint", [
    ("rate(evently_made_up_total[5m])", "evently_made_up_total is not exposed"),
    ("evently_made_up_bucket", "evently_made_up_bucket is not exposed"),
    ('sum(rate(evently_http_requests_total{code=~"5.."}[5m]))', "has no label 'code'"),
    ('sum(rate(evently_http_requests_total{route="/api/v1/bookings"}[5m]))', "never showed that value"),
    ('sum by (path) (rate(evently_http_requests_total[5m]))', "label 'path' is on none"),
    ('evently_pool_busy{pool="postgres"}', "never showed that value"),
    ("rate(process_cpu_seconds_total{job=\"evently\"}[5m])", "neither an evently series"),
    ("evently_workers_count", "evently_workers_count is not exposed"),
    ("label_values(evently_workers, worker)", "label 'worker' is on none"),
])
def test_the_checker_rejects(live, expr, complaint):
    problems = check_expr(expr, live, "q")
    assert any(complaint in p for p in problems), problems


@pytest.mark.parametrize("expr", [
    'up{job="evently"} == 0',
    "rate(evently_outbox_published_total[5m])",
    'histogram_quantile(0.99, sum by (le) '
    '(rate(evently_http_request_duration_seconds_bucket{route="bookings.create"}[5m])))',
    'sum by (route, class) (label_replace(rate(evently_http_requests_total{job=~"$job"}[$__rate_interval]), '
    '"class", "${1}xx", "status", "(.).."))',
    'label_values(evently_workers{job=~"$job"}, instance)',
])
def test_the_checker_accepts(live, expr):
    assert check_expr(expr, live, "q") == []
