"""Packaging (issue 16, item 4): examples/deploy/{systemd,kubernetes,docker}.

Nothing is built or deployed here: no systemd runs as PID 1, no Kubernetes
API server answers and no Docker engine runs. What can be checked offline is:

- systemd: `systemd-analyze verify` on the unit (ExecStart pointed at the
  binary under test, EnvironmentFile made optional), failing on any line it
  prints about the unit; the settings the deployment relies on (drain vs stop
  timeout, reload by SIGHUP, sandboxing); `evently check` under the kernel's
  MDWE (what MemoryDenyWriteExecute=yes enforces); and that every EVENTLY_*
  name in evently.env.example is one README.md documents.
- Kubernetes: every manifest parses, has apiVersion/kind/metadata.name, and the
  objects fit together (probes on the container port, Service, PDB and HPA
  pointing at the Deployment, the rules ConfigMap equal to scripts/rules/);
  `kubectl kustomize` (offline) builds the directory. `kubectl apply/create
  --dry-run=client` need the API server's discovery even with
  --validate=false, so they are not used.
- Dockerfile: the runtime stage installs a package for every shared library
  the binary links (ldd + dpkg -S), and the rest comes with their Depends;
  COPY sources exist; the build stage uses the build packages of .ci/packages.

Each checker returns a list of problems; every one is also run on a broken copy
(in a temp dir) to show it catches the break."""
import ctypes
import functools
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import BIN, REPO

# The Dockerfile builds a Release binary; its libraries are that build's
# (build/, which .ci/setup makes), not those of the binary under test: an
# ASan or Debug build links more (sanitizer runtimes, no --as-needed trim).
RELEASE_BIN = os.path.join(REPO, "build", "evently")

DEPLOY = os.path.join(REPO, "examples", "deploy")
UNIT = os.path.join(DEPLOY, "systemd", "evently.service")
ENV_EXAMPLE = os.path.join(DEPLOY, "systemd", "evently.env.example")
K8S = os.path.join(DEPLOY, "kubernetes")
DOCKERFILE = os.path.join(DEPLOY, "docker", "Dockerfile")
RULES = os.path.join(REPO, "scripts", "rules")
CI_PACKAGES = os.path.join(REPO, ".ci", "packages")
README = os.path.join(REPO, "README.md")


def read(path):
    with open(path) as f:
        return f.read()


def readme_names():
    """Every EVENTLY_* name README.md mentions (its settings and the rest)."""
    return set(re.findall(r"EVENTLY_[A-Z0-9_]*[A-Z0-9]", read(README)))


def undocumented(names):
    known = readme_names()
    # any EVENTLY_KAFKA_<NAME> is a librdkafka property (README "Configuration")
    return sorted(n for n in names if n not in known and not n.startswith("EVENTLY_KAFKA_"))


def readme_default(key):
    """The default column of a README Configuration row, e.g. drain_timeout -> '30'."""
    m = re.search(r"^\| %s \| `[A-Z_]+` \| `([^`]*)` \|" % re.escape(key), read(README), re.M)
    assert m, "README.md has no Configuration row for %s" % key
    return m.group(1)


# ================================================================== systemd


def parse_unit(text):
    """{key: [values]} of a unit file (sections merged; keys may repeat)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def env_file_settings(text):
    """KEY=value lines of an environment file, and every EVENTLY_ name in it
    (commented examples too)."""
    settings = {}
    for line in text.splitlines():
        m = re.match(r"^\s*(EVENTLY_[A-Z0-9_]+)=(.*)$", line)
        if m:
            settings[m.group(1)] = m.group(2)
    return settings, set(re.findall(r"EVENTLY_[A-Z0-9_]*[A-Z0-9]", text))


def seconds(value):
    m = re.fullmatch(r"(\d+)(s|min)?", value)
    assert m, "cannot read %r as seconds" % value
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


def unit_problems(unit_text, env_text):
    """What the deployment needs of the unit, beyond what systemd parses."""
    u = parse_unit(unit_text)
    problems = []

    def one(key):
        v = u.get(key, [])
        return v[-1] if v else None

    def want(key, value):
        if one(key) != value:
            problems.append("%s=%s, want %s" % (key, one(key), value))

    want("Type", "simple")  # evently does not speak sd_notify
    want("User", "evently")
    want("Group", "evently")
    want("KillSignal", "SIGTERM")
    want("KillMode", "mixed")  # the master drains its workers itself
    want("Restart", "on-failure")
    want("NoNewPrivileges", "yes")
    want("ProtectSystem", "strict")
    want("ProtectHome", "yes")
    want("PrivateTmp", "yes")
    want("MemoryDenyWriteExecute", "yes")
    want("SystemCallFilter", "@system-service")
    want("CapabilityBoundingSet", "")
    if set((one("RestrictAddressFamilies") or "").split()) != {"AF_UNIX", "AF_INET", "AF_INET6"}:
        problems.append("RestrictAddressFamilies=%s" % one("RestrictAddressFamilies"))
    start = (one("ExecStart") or "").split()
    if len(start) < 2 or os.path.basename(start[0]) != "evently" or start[1] != "serve":
        problems.append("ExecStart=%s is not `evently serve`" % one("ExecStart"))
    if not one("WorkingDirectory"):
        problems.append("no WorkingDirectory")
    if (one("EnvironmentFile") or "").lstrip("-") != "/etc/evently/evently.env":
        problems.append("EnvironmentFile=%s" % one("EnvironmentFile"))
    if not re.search(r"kill -HUP \$MAINPID$", one("ExecReload") or ""):
        problems.append("ExecReload=%s does not send SIGHUP to the master" % one("ExecReload"))
    # the home must be writable under ProtectSystem=strict
    env = dict(v.split("=", 1) for v in u.get("Environment", []))
    home = env.get("EVENTLY_HOME")
    writable = " ".join(u.get("ReadWritePaths", [])).split()
    if not home or home not in [p.lstrip("-") for p in writable]:
        problems.append("EVENTLY_HOME %s is not in ReadWritePaths %s" % (home, writable))
    nofile = one("LimitNOFILE") or "0"
    if not nofile.isdigit() or int(nofile) < 16384:
        problems.append("LimitNOFILE=%s is too small for many connections" % nofile)
    # stop: drain_timeout from the env file when set there, else README's default
    settings, _ = env_file_settings(env_text)
    drain = int(settings.get("EVENTLY_DRAIN_TIMEOUT") or readme_default("drain_timeout"))
    stop = seconds(one("TimeoutStopSec") or "0")
    if stop <= drain:
        problems.append("TimeoutStopSec=%d is not above the drain timeout %d" % (stop, drain))
    return problems


def verify_unit(unit_text, workdir):
    """systemd-analyze verify on a copy running the binary under test; the
    lines it prints about the unit, and a failing exit status, are problems."""
    text = re.sub(r"^ExecStart=\S+", "ExecStart=" + BIN, unit_text, flags=re.M)
    text = re.sub(r"^EnvironmentFile=-?", "EnvironmentFile=-", text, flags=re.M)
    path = os.path.join(workdir, "evently.service")
    with open(path, "w") as f:
        f.write(text)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", path], capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, SYSTEMD_LOG_COLOR="0"))
    out = (r.stdout + r.stderr).splitlines()
    problems = [l for l in out if "evently.service" in l or path in l]
    if r.returncode != 0:
        problems.append("systemd-analyze verify exited %d: %s" % (r.returncode, out))
    return problems


@pytest.fixture
def systemd_analyze():
    """systemd-analyze is required, never skipped: .ci/packages-test installs
    Debian's systemd for it (nothing runs it as a service manager)."""
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: .ci/packages-test lists systemd"


needs_systemd_analyze = pytest.mark.usefixtures("systemd_analyze")


@needs_systemd_analyze
def test_unit_verifies(tmp_path):
    assert verify_unit(read(UNIT), str(tmp_path)) == []


@needs_systemd_analyze
@pytest.mark.parametrize("break_it, caught", [
    (lambda t: t.replace("ProtectSystem=", "ProtectSytem="), "Unknown key 'ProtectSytem'"),
    (lambda t: t.replace("RestrictAddressFamilies=AF_UNIX", "RestrictAddressFamilies=AF_BOGUS"),
     "Failed to parse address family"),
    (lambda t: t.replace("KillMode=mixed", "KillMode=gently"), "Failed to parse kill mode"),
], ids=["misspelt key", "bad address family", "bad kill mode"])
def test_unit_verify_catches(tmp_path, break_it, caught):
    broken = break_it(read(UNIT))
    assert broken != read(UNIT)
    problems = verify_unit(broken, str(tmp_path))
    assert any(caught in p for p in problems), problems


def test_unit_settings():
    assert unit_problems(read(UNIT), read(ENV_EXAMPLE)) == []


@pytest.mark.parametrize("break_it, caught", [
    (lambda u, e: (u.replace("TimeoutStopSec=45", "TimeoutStopSec=20"), e), "TimeoutStopSec=20"),
    (lambda u, e: (u, e.replace("#EVENTLY_DRAIN_TIMEOUT=30", "EVENTLY_DRAIN_TIMEOUT=60")),
     "drain timeout 60"),
    (lambda u, e: (u.replace("ExecReload=/bin/kill -HUP", "ExecReload=/bin/kill -TERM"), e),
     "ExecReload"),
    (lambda u, e: (u.replace("ReadWritePaths=/var/lib/evently\n", ""), e), "ReadWritePaths"),
    (lambda u, e: (u.replace("MemoryDenyWriteExecute=yes", "MemoryDenyWriteExecute=no"), e),
     "MemoryDenyWriteExecute"),
], ids=["stop timeout below drain", "drain raised in env file", "reload by TERM",
        "home not writable", "W+X allowed"])
def test_unit_settings_catch(break_it, caught):
    u, e = break_it(read(UNIT), read(ENV_EXAMPLE))
    assert (u, e) != (read(UNIT), read(ENV_EXAMPLE))
    problems = unit_problems(u, e)
    assert any(caught in p for p in problems), problems


def test_env_example_names_are_documented():
    settings, names = env_file_settings(read(ENV_EXAMPLE))
    assert {"EVENTLY_DATABASE_URL", "EVENTLY_REDIS_URL", "EVENTLY_SECRET_KEY",
            "EVENTLY_PORT", "EVENTLY_WORKERS", "EVENTLY_OPS_LISTEN"} <= names
    assert undocumented(names) == []
    assert undocumented(names | {"EVENTLY_DATABASE_REPLICA_URL"}) == ["EVENTLY_DATABASE_REPLICA_URL"]


def test_scripts_load_without_write_execute_memory():
    """MemoryDenyWriteExecute=yes: Lua 5.4 interprets (no JIT), so loading every
    script and plugin works under PR_SET_MDWE (the kernel's own W^X lock,
    inherited across exec). The probe shows the lock really refuses W+X."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(66, 0, 0, 0, 0) < 0:  # PR_GET_MDWE: Linux 6.3+
        pytest.skip("this kernel has no PR_SET_MDWE")
    lock = "import ctypes, os, sys\n" \
           "libc = ctypes.CDLL(None, use_errno=True)\n" \
           "assert libc.prctl(65, 1, 0, 0, 0) == 0, os.strerror(ctypes.get_errno())\n"
    probe = lock + "import mmap\n" \
        "try:\n    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n" \
        "except PermissionError:\n    sys.exit(0)\nsys.exit('W+X mapping allowed')\n"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLY_")}
    r = subprocess.run([sys.executable, "-c", lock + "os.execv(sys.argv[1], sys.argv[1:])", BIN, "check"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("ok:"), (r.stdout, r.stderr)


# =============================================================== Kubernetes


def load_manifests(directory):
    """({file: [documents]}, kustomization or None, problems)."""
    docs, kust, problems = {}, None, []
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        name = os.path.basename(path)
        try:
            loaded = [d for d in yaml.safe_load_all(read(path)) if d is not None]
        except yaml.YAMLError as e:
            problems.append("%s: not YAML: %s" % (name, str(e).splitlines()[0]))
            continue
        if name == "kustomization.yaml":
            kust = loaded[0] if loaded else {}
        else:
            docs[name] = loaded
    return docs, kust, problems


def container_port(container, port):
    """A probe's or Service's port (number or name) as a number, or None."""
    for p in container.get("ports", []):
        if port in (p.get("name"), p.get("containerPort")):
            return p["containerPort"]
    return None


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def k8s_problems(directory):
    docs, kust, problems = load_manifests(directory)
    objects = {}
    for name, loaded in docs.items():
        for d in loaded:
            if not isinstance(d, dict) or not d.get("apiVersion") or not d.get("kind") \
                    or not (d.get("metadata") or {}).get("name"):
                problems.append("%s: a document without apiVersion, kind and metadata.name" % name)
                continue
            objects.setdefault(d["kind"], []).append(d)
    if problems:
        return problems
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                 "ConfigMap", "Secret"):
        if len(objects.get(kind, [])) != 1:
            problems.append("want one %s, have %d" % (kind, len(objects.get(kind, []))))
    if problems:
        return problems
    if kust is None or set(kust.get("resources", [])) != set(docs):
        problems.append("kustomization.yaml resources %s are not the manifests %s"
                        % (kust and kust.get("resources"), sorted(docs)))
    dep, svc, pdb, hpa, cm, secret = (objects[k][0] for k in (
        "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap", "Secret"))
    pod = dep["spec"]["template"]
    labels = pod["metadata"].get("labels", {})
    if not selects(dep["spec"]["selector"].get("matchLabels"), labels):
        problems.append("the Deployment's selector does not match its pods")
    spec = pod["spec"]
    (c,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    port = int(env.get("EVENTLY_PORT") or readme_default("port"))
    if env.get("EVENTLY_HOST") != "0.0.0.0":
        problems.append("EVENTLY_HOST=%s: the pod would not be reachable" % env.get("EVENTLY_HOST"))
    if container_port(c, port) != port:
        problems.append("no containerPort %d (EVENTLY_PORT)" % port)
    for probe, path in (("readinessProbe", "/health/ready"), ("livenessProbe", "/health")):
        get = (c.get(probe) or {}).get("httpGet") or {}
        if get.get("path") != path or container_port(c, get.get("port")) != port:
            problems.append("%s is GET %s on %s, want %s on %d"
                            % (probe, get.get("path"), get.get("port"), path, port))
    # stop: preStop pause + drain must fit in the grace period
    pre = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
    if len(pre) != 2 or os.path.basename(pre[0]) != "sleep" or not pre[1].isdigit():
        problems.append("preStop is %s, want a short sleep" % pre)
    else:
        drain = int(env.get("EVENTLY_DRAIN_TIMEOUT") or readme_default("drain_timeout"))
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace <= int(pre[1]) + drain:
            problems.append("terminationGracePeriodSeconds %d is not above preStop %s s + drain %d s"
                            % (grace, pre[1], drain))
    res = c.get("resources", {})
    for part in ("requests", "limits"):
        if not {"cpu", "memory"} <= set(res.get(part, {})):
            problems.append("resources.%s lacks cpu or memory" % part)
    psc, csc = spec.get("securityContext", {}), c.get("securityContext", {})
    if not (csc.get("runAsNonRoot", psc.get("runAsNonRoot"))):
        problems.append("not runAsNonRoot")
    if not csc.get("readOnlyRootFilesystem"):
        problems.append("not readOnlyRootFilesystem")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    home = env.get("EVENTLY_HOME")
    if not home or "emptyDir" not in volumes.get(mounts.get(home), {}):
        problems.append("EVENTLY_HOME %s is not an emptyDir mount" % home)
    # rules: the ConfigMap mounted over <scripts>/rules holds scripts/rules/ exactly
    scripts = env.get("EVENTLY_SCRIPTS", "/opt/evently/scripts")  # the image's ENV
    vol = volumes.get(mounts.get(scripts.rstrip("/") + "/rules"), {})
    if (vol.get("configMap") or {}).get("name") != cm["metadata"]["name"]:
        problems.append("the ConfigMap %s is not mounted at %s/rules" % (cm["metadata"]["name"], scripts))
    data = cm.get("data", {})
    for path in sorted(glob.glob(os.path.join(RULES, "*"))):
        name = os.path.basename(path)
        if name not in data:
            problems.append("ConfigMap lacks %s" % name)
        elif data[name] != read(path):
            problems.append("ConfigMap %s differs from scripts/rules/%s" % (name, name))
    for name in sorted(set(data) - {os.path.basename(p) for p in glob.glob(os.path.join(RULES, "*"))}):
        problems.append("ConfigMap has %s, which scripts/rules/ does not" % name)
    # secrets come from the Secret
    refs = [e.get("secretRef", {}).get("name") for e in c.get("envFrom", [])]
    if secret["metadata"]["name"] not in refs:
        problems.append("the Secret is not in envFrom")
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for k in ("EVENTLY_DATABASE_URL", "EVENTLY_REDIS_URL", "EVENTLY_SECRET_KEY"):
        if k not in keys:
            problems.append("the Secret lacks %s" % k)
    bad = undocumented(set(env) | keys)
    if bad:
        problems.append("settings README.md does not have: %s" % bad)
    # the Service, PDB and HPA point at the Deployment
    if not selects(svc["spec"].get("selector"), labels):
        problems.append("the Service's selector does not match the Deployment's pods")
    for p in svc["spec"].get("ports", []):
        if container_port(c, p.get("targetPort")) != port:
            problems.append("the Service targets %s, not the container port %d" % (p.get("targetPort"), port))
    if not selects((pdb["spec"].get("selector") or {}).get("matchLabels"), labels):
        problems.append("the PDB's selector does not match the Deployment's pods")
    target = hpa["spec"].get("scaleTargetRef", {})
    if (target.get("kind"), target.get("name"), target.get("apiVersion")) != \
            ("Deployment", dep["metadata"]["name"], "apps/v1"):
        problems.append("the HPA targets %s" % target)
    if not any(m.get("type") == "Resource" and m["resource"].get("name") == "cpu"
               for m in hpa["spec"].get("metrics", [])):
        problems.append("the HPA does not scale on CPU")
    return problems


def test_kubernetes_manifests():
    assert k8s_problems(K8S) == []


def k8s_copy(tmp_path):
    d = str(tmp_path / "k8s")
    shutil.copytree(K8S, d)
    return d


def edit(path, old, new):
    text = read(path)
    assert old in text, (path, old)
    with open(path, "w") as f:
        f.write(text.replace(old, new, 1))


K8S_BREAKS = [
    ("deployment.yaml", "path: /health/ready", "path: /healthz", "readinessProbe is GET /healthz"),
    ("deployment.yaml", "              path: /health\n              port: http\n            periodSeconds: 10",
     "              path: /health\n              port: 9090\n            periodSeconds: 10",
     "livenessProbe is GET /health on 9090"),
    ("deployment.yaml", "terminationGracePeriodSeconds: 45", "terminationGracePeriodSeconds: 30",
     "terminationGracePeriodSeconds 30"),
    ("deployment.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false",
     "not readOnlyRootFilesystem"),
    ("deployment.yaml", "name: EVENTLY_WORKERS", "name: EVENTLY_WORKER_COUNT", "EVENTLY_WORKER_COUNT"),
    ("service.yaml", "targetPort: http", "targetPort: 9999", "the Service targets 9999"),
    ("pdb.yaml", "app.kubernetes.io/component: api", "app.kubernetes.io/component: web",
     "the PDB's selector"),
    ("hpa.yaml", "name: evently\n  minReplicas", "name: evently-api\n  minReplicas", "the HPA targets"),
    ("configmap-rules.yaml", "max_password_length = 1024", "max_password_length = 4096",
     "ConfigMap auth.lua differs"),
    ("configmap-rules.yaml", "  waitlist.lua: |", "  waitlists.lua: |", "ConfigMap lacks waitlist.lua"),
    ("secret.yaml", "  EVENTLY_SECRET_KEY:", "  EVENTLY_SECRET:", "the Secret lacks EVENTLY_SECRET_KEY"),
    ("kustomization.yaml", "  - hpa.yaml\n", "", "kustomization.yaml resources"),
    ("service.yaml", "kind: Service", "kind: Service\n  bad: [", "service.yaml: not YAML"),
    ("pdb.yaml", "  name: evently\n", "", "pdb.yaml: a document without"),
]


@pytest.mark.parametrize("file, old, new, caught", K8S_BREAKS, ids=[b[3] for b in K8S_BREAKS])
def test_kubernetes_checks_catch(tmp_path, file, old, new, caught):
    d = k8s_copy(tmp_path)
    edit(os.path.join(d, file), old, new)
    problems = k8s_problems(d)
    assert any(caught in p for p in problems), problems


def test_kubernetes_rules_track_the_repo(tmp_path, monkeypatch):
    """A rule file added to scripts/rules/ without the ConfigMap is caught."""
    rules = str(tmp_path / "rules")
    shutil.copytree(RULES, rules)
    with open(os.path.join(rules, "extra.lua"), "w") as f:
        f.write("return {}\n")
    monkeypatch.setattr(sys.modules[__name__], "RULES", rules)
    assert "ConfigMap lacks extra.lua" in k8s_problems(K8S)


def kustomize(directory, tmp_path):
    """`kubectl kustomize` builds offline (no API server); the kinds it renders."""
    kubeconfig = tmp_path / "kubeconfig"  # empty: never reach a cluster
    kubeconfig.write_text("")
    r = subprocess.run(["kubectl", "kustomize", directory], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, KUBECONFIG=str(kubeconfig)))
    if r.returncode != 0:
        return None, r.stderr
    return sorted(d["kind"] for d in yaml.safe_load_all(r.stdout) if d), r.stderr


needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


@needs_kubectl
def test_kubectl_kustomize_builds(tmp_path):
    kinds, err = kustomize(K8S, tmp_path)
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                     "Secret", "Service"], err


@needs_kubectl
def test_kubectl_kustomize_catches(tmp_path):
    d = k8s_copy(tmp_path)
    os.remove(os.path.join(d, "pdb.yaml"))
    kinds, err = kustomize(d, tmp_path)
    assert kinds is None and "pdb.yaml" in err, (kinds, err)


# =============================================================== Dockerfile


def dockerfile_stages(text):
    """[(from_line, [(INSTRUCTION, args)])] with continuations joined."""
    text = re.sub(r"\\\n", " ", text)
    stages = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            stages.append((args.strip(), []))
        elif stages:
            stages[-1][1].append((instr, re.sub(r"\s+", " ", args).strip()))
    return stages


def apt_installs(instructions):
    pkgs = []
    for instr, args in instructions:
        if instr != "RUN":
            continue
        for cmd in re.split(r"&&|;", args):
            words = cmd.split()
            if words[:2] == ["apt-get", "install"]:
                pkgs += [w for w in words[2:] if not w.startswith("-")]
    return pkgs


def packages_of(lib_paths):
    """{path: Debian package that ships it}, trying both sides of the merged
    /usr; one dpkg -S for all (it scans every file list once)."""
    cands = {}
    for path in lib_paths:
        c = [path, os.path.realpath(path)]
        c += [p[4:] if p.startswith("/usr/") else "/usr" + p for p in c]
        cands[path] = c
    every = sorted({c for cs in cands.values() for c in cs})
    r = subprocess.run(["dpkg", "-S"] + every, capture_output=True, text=True)
    owner = {}
    for line in r.stdout.splitlines():
        pkgs, _, path = line.partition(": ")
        owner[path.strip()] = pkgs.split(",")[0].split(":")[0].strip()
    return {path: next((owner[c] for c in cs if c in owner), None) for path, cs in cands.items()}


@functools.lru_cache(maxsize=None)
def installed():
    """{package: (priority, essential, [dependency alternatives])} of dpkg's database."""
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package}\t${Status}\t${Priority}\t${Essential}"
                          "\t${Pre-Depends}, ${Depends}\n"], capture_output=True, text=True, check=True)
    db = {}
    for line in out.stdout.splitlines():
        name, status, priority, essential, deps = line.split("\t")
        if status.endswith(" installed"):
            alts = [a.strip().split(" ")[0].split(":")[0] for a in re.split(r"[,|]", deps)]
            db[name] = (priority, essential, [a for a in alts if a])
    return db


def depends_closure(pkgs):
    """Installed packages reached from pkgs by Depends/Pre-Depends (any alternative)."""
    db, seen, todo = installed(), set(), list(pkgs)
    while todo:
        p = todo.pop()
        if p in seen or p not in db:
            continue
        seen.add(p)
        todo += db[p][2]
    return seen


def base_packages():
    """What every Debian image has (debian:12-slim included): the Essential
    and Priority: required packages and what they depend on (libc6...)."""
    db = installed()
    return depends_closure(p for p, (prio, ess, _) in db.items() if ess == "yes" or prio == "required")


SANITIZER_RUNTIMES = re.compile(r"^lib(asan|ubsan|lsan|tsan)\.so")


def release_bin():
    assert os.access(RELEASE_BIN, os.X_OK), "no Release build at %s: .ci/setup makes it" % RELEASE_BIN
    return RELEASE_BIN


@functools.lru_cache(maxsize=None)
def binary_libraries(binary):
    """(direct, all): {soname: path} from readelf's NEEDED and ldd."""
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    paths = dict(re.findall(r"^\s*(\S+) => (/\S+)", ldd, re.M))
    elf = subprocess.run(["readelf", "-d", binary], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(\S+)\]", elf)
    # an ASan/UBSan build (EVENTLY_BIN) links sanitizer runtimes the Release
    # build the Dockerfile makes does not
    keep = {k: v for k, v in paths.items() if not SANITIZER_RUNTIMES.match(k)}
    return {n: keep[n] for n in needed if n in keep}, keep


def dockerfile_problems(text, binary):
    problems = []
    stages = dockerfile_stages(text)
    if len(stages) < 2:
        return ["not multi-stage: %d stage(s)" % len(stages)]
    for frm, _ in stages:
        if frm.split()[0] != "debian:12-slim":
            problems.append("FROM %s, want debian:12-slim" % frm)
    names = {frm.split()[-1] for frm, _ in stages[:-1] if " AS " in frm.upper()}
    build, runtime = stages[0][1], stages[-1][1]
    # the build stage: the build packages of .ci/packages, a Release build
    ci = [l.strip() for l in read(CI_PACKAGES).splitlines() if l.strip() and not l.startswith("#")]
    build_pkgs = apt_installs(build)
    wanted = [p for p in ci if p.endswith("-dev") or p in ("build-essential", "cmake", "ninja-build", "pkg-config")]
    for p in wanted:
        if p not in build_pkgs:
            problems.append("the build stage does not install %s (.ci/packages)" % p)
    for p in build_pkgs:
        if p not in ci:
            problems.append("the build stage installs %s, which .ci/packages does not list" % p)
    if not any(i == "RUN" and "cmake" in a and "-DCMAKE_BUILD_TYPE=Release" in a for i, a in build):
        problems.append("the build stage does not run a cmake Release build")
    # the runtime stage: a package for every library the binary links
    run_pkgs = apt_installs(runtime)
    for p in run_pkgs:
        if p.endswith("-dev") or p in ("build-essential", "cmake", "ninja-build", "pkg-config"):
            problems.append("the runtime stage installs the build package %s" % p)
    direct, every = binary_libraries(binary)
    base = {}
    owners = packages_of(tuple(every.values()))
    for soname, path in sorted(every.items()):
        pkg = owners[path]
        if pkg is None:
            problems.append("no Debian package ships %s (%s)" % (soname, path))
            continue
        base[soname] = pkg
    required = base_packages()
    for soname in sorted(direct):
        pkg = base.get(soname)
        if pkg and pkg not in run_pkgs and pkg not in required:
            problems.append("the runtime stage does not install %s (for %s)" % (pkg, soname))
    closure = depends_closure(run_pkgs)
    for soname, pkg in sorted(base.items()):
        if soname not in direct and pkg not in closure and pkg not in required:
            problems.append("%s (%s) comes with none of the runtime packages" % (soname, pkg))
    # COPY: sources in the build context (the repository), or a build stage's output
    for instr, args in runtime + build:
        if instr not in ("COPY", "ADD"):
            continue
        words = args.split()
        frm = [w.split("=", 1)[1] for w in words if w.startswith("--from=")]
        paths = [w for w in words if not w.startswith("--")]
        if frm:
            if frm[0] not in names:
                problems.append("COPY --from=%s: no such stage" % frm[0])
            continue
        for src in paths[:-1]:
            if not os.path.exists(os.path.join(REPO, src)):
                problems.append("COPY %s: not in the repository" % src)
    # run as a non-root user, serve on the documented port, with a health check
    users = [a for i, a in runtime if i == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the runtime stage runs as root")
    env = dict(re.findall(r"(EVENTLY_[A-Z_]+)=(\S+)", " ".join(a for i, a in runtime if i == "ENV")))
    port = env.get("EVENTLY_PORT") or readme_default("port")
    if not any(i == "EXPOSE" and port in a.split() for i, a in runtime):
        problems.append("no EXPOSE %s" % port)
    if env.get("EVENTLY_HOST") != "0.0.0.0":
        problems.append("EVENTLY_HOST is not 0.0.0.0 in the image")
    if not any(i == "HEALTHCHECK" and "/health" in a for i, a in runtime):
        problems.append("no HEALTHCHECK on /health")
    entry = [a for i, a in runtime if i == "ENTRYPOINT"]
    cmd = [a for i, a in runtime if i == "CMD"]
    if not entry or "evently" not in entry[-1] or "serve" not in (entry[-1] + " " + " ".join(cmd[-1:])):
        problems.append("the image does not run `evently serve`: ENTRYPOINT %s CMD %s" % (entry, cmd))
    bad = undocumented(set(env))
    if bad:
        problems.append("settings README.md does not have: %s" % bad)
    return problems


def test_dockerfile():
    assert dockerfile_problems(read(DOCKERFILE), release_bin()) == []


DOCKER_BREAKS = [
    ("libwslay1 ", "", "does not install libwslay1 (for libwslay.so.1)"),
    ("libsodium23 libcurl4", "libcurl4", "does not install libsodium23 (for libsodium.so.23)"),
    ("COPY migrations/ migrations/", "COPY migration/ migrations/", "COPY migration/: not in the repository"),
    ("COPY --from=build", "COPY --from=builder", "COPY --from=builder: no such stage"),
    ("libhttp-parser-dev libcjson-dev", "libhttp-parser-dev", "does not install libcjson-dev"),
    ("FROM debian:12-slim\n", "FROM debian:12\n", "FROM debian:12, want debian:12-slim"),
    ("USER 10001:10001", "USER root", "runs as root"),
]


@pytest.mark.parametrize("old, new, caught", DOCKER_BREAKS, ids=[b[2] for b in DOCKER_BREAKS])
def test_dockerfile_checks_catch(old, new, caught):
    text = read(DOCKERFILE)
    assert old in text
    problems = dockerfile_problems(text.replace(old, new, 1), release_bin())
    assert any(caught in p for p in problems), problems
