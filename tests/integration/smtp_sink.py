"""A real SMTP server for the tests: aiosmtpd (Debian python3-aiosmtpd) on
127.0.0.1 and a free port, in this process (its own thread and asyncio loop).

    sink = SmtpSink().start()          # or the `smtp_sink` fixture
    ... point EVENTLY_SMTP_URL at sink.url ...
    [m] = sink.wait_for(lambda m: m.to == ["a@example.com"])
    m.mail_from, m.to, m.subject, m.header("From"), m.text, m.raw

Behaviour knobs, changeable while it runs:
    sink.delay = 3          seconds before answering the end of DATA (a slow server);
                            or a function of the envelope giving them
    sink.reject = {"x@y"}   recipients answered "550 5.1.1 ... unknown" (or a predicate)
    sink.defer = {"x@y"}    recipients answered "451 4.3.0 ... try again later"
sink.stop() closes the port (connections are refused); sink.start() opens
the same port again.

What the sink saw of the DATA phases (time.monotonic() of this process):
    sink.data_times         [(had the message, answered it)], answered None while waiting
    sink.data_peak          most DATA phases waiting for their answer at once
"""
import asyncio
import email.parser
import email.policy
import os
import socket
import sys
import threading
import time

try:
    from aiosmtpd.controller import Controller
except ImportError:  # an interpreter outside Debian's (pyenv): use Debian's pure-Python package
    sys.path.append("/usr/lib/python3/dist-packages")
    from aiosmtpd.controller import Controller

import pytest


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Received:
    """One accepted message: the envelope and the parsed message."""

    def __init__(self, mail_from, rcpt_tos, raw):
        self.mail_from = mail_from
        self.to = list(rcpt_tos)
        self.raw = raw
        self.message = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
        self.at = time.time()

    def header(self, name):
        v = self.message[name]
        return None if v is None else str(v)

    @property
    def subject(self):
        return self.header("Subject")

    @property
    def text(self):
        """The body, transfer encoding undone, as str with \n line ends."""
        return self.message.get_content().replace("\r\n", "\n")

    def __repr__(self):
        return "<Received from=%r to=%r subject=%r>" % (self.mail_from, self.to, self.subject)


def _matches(rule, address):
    if rule is None:
        return False
    if callable(rule):
        return rule(address)
    return address in rule


class _Handler:
    def __init__(self, sink):
        self.sink = sink

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if _matches(self.sink.reject, address):
            return "550 5.1.1 <%s>: Recipient address rejected: user unknown" % address
        if _matches(self.sink.defer, address):
            return "451 4.3.0 <%s>: Temporary failure, try again later" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        delay = self.sink.delay(envelope) if callable(self.sink.delay) else self.sink.delay
        i = self.sink._data_begins()
        try:
            if delay:
                await asyncio.sleep(delay)  # slow, but the sink itself keeps serving
            self.sink._record(Received(envelope.mail_from, envelope.rcpt_tos, envelope.original_content
                                       or envelope.content))
        finally:
            self.sink._data_ends(i)
        return "250 2.0.0 Message accepted for delivery"


class SmtpSink:
    def __init__(self, port=None):
        self.host = "127.0.0.1"
        self.port = port or _free_port()
        self.delay = 0
        self.reject = None
        self.defer = None
        self.messages = []
        self.data_times = []
        self.data_peak = 0
        self._data_active = 0
        self._cv = threading.Condition()
        self._controller = None

    @property
    def url(self):
        return "smtp://%s:%d" % (self.host, self.port)

    def start(self):
        if self._controller is None:
            # decode_data=False keeps the bytes exactly as they came
            self._controller = Controller(_Handler(self), hostname=self.host, port=self.port,
                                          decode_data=False)
            self._controller.start()
        return self

    def stop(self):
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def _record(self, msg):
        with self._cv:
            self.messages.append(msg)
            self._cv.notify_all()

    def _data_begins(self):
        with self._cv:
            self.data_times.append((time.monotonic(), None))
            self._data_active += 1
            self.data_peak = max(self.data_peak, self._data_active)
            self._cv.notify_all()
            return len(self.data_times) - 1

    def _data_ends(self, i):
        with self._cv:
            self.data_times[i] = (self.data_times[i][0], time.monotonic())
            self._data_active -= 1
            self._cv.notify_all()

    def clear(self):
        with self._cv:
            self.messages.clear()
            self.data_times.clear()
            self.data_peak = self._data_active

    def wait_for(self, predicate=lambda m: True, count=1, timeout=10):
        """The first `count` received messages matching predicate, waiting up
        to timeout seconds for them; AssertionError when they do not come."""
        deadline = time.time() + timeout
        with self._cv:
            while True:
                got = [m for m in self.messages if predicate(m)]
                if len(got) >= count:
                    return got[:count]
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError("expected %d message(s), have %d: %r"
                                         % (count, len(got), self.messages[-5:]))
                self._cv.wait(left)


@pytest.fixture
def smtp_sink():
    """A started SmtpSink, stopped after the test."""
    sink = SmtpSink().start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture(scope="module")
def sink():
    """A started SmtpSink shared by a module's tests (and the server they share), stopped
    after them. A module imports it by name: `from smtp_sink import sink`."""
    s = SmtpSink().start()
    try:
        yield s
    finally:
        s.stop()


if __name__ == "__main__":  # a sink to try things by hand: prints what arrives
    s = SmtpSink(int(os.environ.get("PORT", "0")) or None).start()
    print("listening on", s.url, flush=True)
    seen = 0
    while True:
        time.sleep(0.2)
        for m in s.messages[seen:]:
            print(m, m.text, sep="\n", flush=True)
        seen = len(s.messages)
