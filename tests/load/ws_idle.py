"""Holds N WebSockets open to evently's /api/v1/ws (tokens from a file, used
in turn), answers the server's pings, and records when each socket receives a
message of type "bench.broadcast" (payload.sent_ms: when it was published).
Used by tests/load/websockets.sh.

    python3 ws_idle.py HOST PORT TOKENS N READY_FILE RESULT_FILE

Writes READY_FILE ("<open sockets>") once every socket is open, waits for
RESULT_FILE's trigger: a line "collect <seconds>" on stdin; then waits that
long for the broadcast and writes "<received> <max latency ms> <p50 ms>".
RESULT_FILE "-": hold the sockets until killed (tests/load/soak.sh)."""
import asyncio
import base64
import json
import os
import struct
import sys
import time

HOST, PORT, TOKENS, N, READY, RESULT = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
tokens = [line.strip() for line in open(TOKENS) if line.strip()]
latencies = []
opened = 0


def frame(opcode, payload=b""):
    mask = os.urandom(4)
    head = bytes([0x80 | opcode])
    n = len(payload)
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def one(i):
    global opened
    for attempt in range(20):
        try:
            reader, writer = await asyncio.open_connection(HOST, PORT)
            break
        except OSError:
            await asyncio.sleep(0.2 * (attempt + 1))
    else:
        return
    key = base64.b64encode(os.urandom(16)).decode()
    token = tokens[i % len(tokens)]
    writer.write(("GET /api/v1/ws?token=%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                  % (token, HOST, key)).encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        print("upgrade refused: %r" % head[:80], file=sys.stderr)
        writer.close()
        return
    opened += 1
    try:
        while True:
            b0, b1 = await reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await reader.readexactly(8))[0]
            payload = await reader.readexactly(n)
            op = b0 & 0x0F
            if op == 0x9:  # ping: pong, or the server drops us
                writer.write(frame(0xA, payload))
            elif op == 0x8:
                break
            elif op == 0x1:
                now = time.time() * 1000
                msg = json.loads(payload)
                if msg.get("type") == "bench.broadcast":
                    latencies.append(now - msg["payload"]["sent_ms"])
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    opened -= 1


async def main():
    tasks = []
    for i in range(N):
        tasks.append(asyncio.create_task(one(i)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)  # a steady ramp, not one SYN flood
    deadline = time.time() + 120
    while opened < N and time.time() < deadline:
        await asyncio.sleep(0.2)
    with open(READY, "w") as f:
        f.write("%d\n" % opened)
    if RESULT == "-":
        await asyncio.Event().wait()
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    wait = float(line.split()[1])
    end = time.time() + wait
    while len(latencies) < opened and time.time() < end:
        await asyncio.sleep(0.05)
    lat = sorted(latencies)
    with open(RESULT, "w") as f:
        f.write("%d %.0f %.0f %d\n" % (len(lat), lat[-1] if lat else -1, lat[len(lat) // 2] if lat else -1, opened))
    os._exit(0)


asyncio.run(main())
