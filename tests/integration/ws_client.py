"""A raw RFC 6455 client for the suite (no library: tests need to send what a
library would refuse to, such as oversized and unmasked frames)."""
import base64
import hashlib
import json
import os
import struct

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


class Client:
    """One WebSocket connection: handshake, masked frames out, frames in."""

    def __init__(self, srv, path, headers=None, timeout=5):
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.sock = srv.socket(timeout)
        lines = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1:%d" % srv.port, "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: " + self.key, "Sec-WebSocket-Version: 13"]
        lines += ["%s: %s" % kv for kv in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = b""
        head = self._until(b"\r\n\r\n")
        status_line, *rest = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in rest if h)}

    def _until(self, marker):
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        head, self.buf = self.buf.split(marker, 1)
        return head

    def _exactly(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def accepted(self):
        want = base64.b64encode(hashlib.sha1((self.key + GUID).encode()).digest()).decode()
        return self.status == 101 and self.headers.get("sec-websocket-accept") == want

    def body(self):
        return json.loads(self._exactly(int(self.headers.get("content-length", "0"))))

    def send(self, opcode, payload=b"", mask=True):
        if isinstance(payload, str):
            payload = payload.encode()
        n = len(payload)
        head = bytes([0x80 | opcode])
        bit = 0x80 if mask else 0
        if n < 126:
            head += bytes([bit | n])
        elif n < 65536:
            head += bytes([bit | 126]) + struct.pack("!H", n)
        else:
            head += bytes([bit | 127]) + struct.pack("!Q", n)
        if mask:
            key = os.urandom(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            head += key
        self.sock.sendall(head + payload)

    def recv(self):
        """(opcode, payload) of the next frame; raises socket.timeout when none comes."""
        b0, b1 = self._exactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._exactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._exactly(8))[0]
        assert not b1 & 0x80, "a server must not mask its frames"
        return b0 & 0x0F, self._exactly(n)

    def recv_close(self):
        """Skips data frames; returns the close code the server sent."""
        while True:
            op, payload = self.recv()
            if op == CLOSE:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None

    def close(self):
        self.sock.close()

    def next_message(self):
        """The next text frame as JSON, answering pings on the way."""
        while True:
            op, payload = self.recv()
            if op == PING:
                self.send(PONG, payload)
            elif op == TEXT:
                return json.loads(payload)
            elif op == CLOSE:
                raise EOFError("closed by the server")
