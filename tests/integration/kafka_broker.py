"""A real Apache Kafka broker for the suite (KRaft, single node, loopback),
from the jars tests/kafka/pom.xml fetches from Maven Central. The session
fixture `kafka` starts it once; tests may stop and start it again (same data
and ports). `read(topic)` uses Kafka's own console consumer, so what a test
sees is what reached the broker, independent of our client."""
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import REPO, free_port, make_root, stop_at_session_end

KAFKA_DIR = os.path.join(REPO, "tests", "kafka")


class Broker:
    def __init__(self, sasl_users=None):
        """sasl_users: {"name": "password"}: a SASL_PLAINTEXT (PLAIN) listener."""
        self.sasl_users = sasl_users
        self.root = make_root("kafka")
        self.port, self.ctl = free_port(), free_port()
        self.brokers = "127.0.0.1:%d" % self.port
        self.log_path = os.path.join(self.root, "broker.log")
        self.proc = None

    def start(self, timeout=90):
        log = open(self.log_path, "ab")
        env = dict(os.environ)
        if self.sasl_users:
            env["KAFKA_SASL_USERS"] = " ".join("%s=%s" % kv for kv in self.sasl_users.items())
        self.proc = subprocess.Popen(
            [os.path.join(KAFKA_DIR, "broker.sh"), os.path.join(self.root, "data"), str(self.port), str(self.ctl)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, "kafka broker exited; see " + self.log_path
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.3)
        raise AssertionError("kafka broker did not listen within %ds; see %s" % (timeout, self.log_path))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def read(self, topic, idle_ms=4000):
        """Every message of topic: dicts with partition, offset, headers, key, value."""
        out = subprocess.run([os.path.join(KAFKA_DIR, "read-topic.sh"), self.brokers, topic, str(idle_ms)],
                             capture_output=True, text=True, timeout=120).stdout
        msgs = []
        for line in out.splitlines():
            parts = line.split("\t", 4)
            if len(parts) != 5 or not parts[0].startswith("Partition:"):
                continue
            headers = {}
            if parts[2] != "NO_HEADERS":
                for h in parts[2].split(","):
                    k, _, v = h.partition(":")
                    headers[k] = v
            msgs.append({"partition": int(parts[0].split(":")[1]), "offset": int(parts[1].split(":")[1]),
                         "headers": headers, "key": parts[3], "value": parts[4]})
        return msgs


@pytest.fixture(scope="session")
def kafka():
    b = Broker().start()
    stop_at_session_end(b.stop)  # idempotent: the fixture's own stop may come first
    try:
        yield b
    finally:
        b.stop()
