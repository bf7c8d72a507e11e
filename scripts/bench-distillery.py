"""The measurements of scripts/bench-distillery (run by it; see there).

Arguments: transfer port, distillery port, token, gantry's pid, app id, rounds, sessions.
A minimal websocket client (RFC 6455, client frames masked) keeps it free of packages.
"""

import base64
import http.client
import json
import os
import socket
import statistics
import struct
import sys
import time
import urllib.parse

tport, dport = int(sys.argv[1]), int(sys.argv[2])
token, gpid, app = sys.argv[3], int(sys.argv[4]), sys.argv[5]
rounds, sessions = int(sys.argv[6]), int(sys.argv[7])
GUARD = 120  # seconds any one read may take


class Ws:
    """One Distillery session: `/api/v1/ws` with the bench's token."""

    def __init__(self):
        self.s = socket.create_connection(("127.0.0.1", dport), timeout=GUARD)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall(
            (
                "GET /api/v1/ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Key: {key}\r\nAuthorization: Bearer {token}\r\n\r\n"
            ).encode()
        )
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            b = self.s.recv(1)
            if not b:
                raise SystemExit("the distillery listener closed during the handshake")
            head += b
        if not head.startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"no upgrade: {head[:80]!r}")

    def send(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.s.sendall(head + mask + body)

    def exact(self, n):
        out = b""
        while len(out) < n:
            b = self.s.recv(n - len(out))
            if not b:
                raise EOFError
            out += b
        return out

    def frame(self):
        b1, b2 = self.exact(2)
        n = b2 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.exact(8))[0]
        return b1 & 0x0F, self.exact(n)

    def call(self, name, params):
        self.send(2, json.dumps({"call": name, "params": params}).encode())

    def result(self):
        """Reads the lines up to the result frame, answers the server's close; the result."""
        while True:
            op, data = self.frame()
            if op == 2:
                result = json.loads(data)
                break
            if op == 8:
                raise SystemExit("closed without a result")
        try:
            while self.frame()[0] != 8:
                pass
            self.send(8, struct.pack("!H", 1000))
        except (EOFError, OSError):
            pass
        self.s.close()
        return result


def distillery(call):
    ws = Ws()
    ws.call(call, [app])
    r = ws.result()
    if r != {"success": True}:
        raise SystemExit(f"{call} over the websocket: {r}")


def rest(action):
    c = http.client.HTTPConnection("127.0.0.1", tport, timeout=GUARD)
    c.request("PUT", f"/api/1/transfer/apps/{urllib.parse.quote(app, safe='')}/{action}")
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200 or json.loads(body).get("ExitCode") != 0:
        raise SystemExit(f"REST {action}: {r.status} {body[:200]!r}")


def timed(f):
    t = time.perf_counter()
    f("start")
    mid = time.perf_counter()
    f("stop")
    end = time.perf_counter()
    return (mid - t) * 1000, (end - mid) * 1000


def rss_kib():
    with open(f"/proc/{gpid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("gantry is gone")


def start_stop():
    times = {"distillery": [], "rest": []}
    ratios = []
    timed(distillery)  # warm-up: images cached, first connections made
    for i in range(rounds):
        order = ["distillery", "rest"] if i % 2 == 0 else ["rest", "distillery"]
        this = {}
        for who in order:
            this[who] = timed(distillery if who == "distillery" else rest)
            times[who].append(this[who])
        ratios.append(sum(this["distillery"]) / sum(this["rest"]))
    med = {w: [statistics.median(x[k] for x in t) for k in (0, 1)] for w, t in times.items()}
    total = {w: statistics.median(sum(x) for x in t) for w, t in times.items()}
    print(f"start+stop, {rounds} rounds, medians (ms): start / stop / start+stop")
    for w in ("rest", "distillery"):
        print(f"  {w:<11} {med[w][0]:8.1f} {med[w][1]:8.1f} {total[w]:10.1f}")
    print(
        f"  ratio distillery/REST: {total['distillery'] / total['rest']:.3f} "
        f"(per-round ratios: median {statistics.median(ratios):.3f}, "
        f"min {min(ratios):.3f}, max {max(ratios):.3f}; goal <= 1.05)"
    )


def idle_sessions():
    rest("start")
    time.sleep(1)
    before = rss_kib()
    open_ = []
    for _ in range(sessions):
        ws = Ws()
        ws.call("logs", [app])
        open_.append(ws)
    time.sleep(2)
    during = rss_kib()
    for ws in open_:
        ws.send(2, b'{"signal":"cancel"}')
    for ws in open_:
        r = ws.result()
        if r != {"success": True}:
            raise SystemExit(f"logs: {r}")
    time.sleep(1)
    after = rss_kib()
    rest("stop")
    grow = during - before
    print(f"RSS with {sessions} idle sessions (each following the app's logs):")
    print(f"  before {before} KiB, with them {during} KiB, after they ended {after} KiB")
    print(
        f"  growth {grow} KiB ({grow / sessions:.1f} KiB per session), "
        f"ratio with/before {during / before:.3f}, after/before {after / before:.3f}"
    )


start_stop()
idle_sessions()
