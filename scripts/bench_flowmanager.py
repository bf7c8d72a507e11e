"""The body of scripts/bench-flowmanager (run it through that script, which sets up the
virtualenv and the binary): crash latency, memory, and message round trips of gantry's
flowmanager dialect, each against its baseline in the same run."""

import json
import os
import queue
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

import socketio

HOST = os.environ.get("GANTRY_BENCH_DOCKER_HOST", "unix:///tmp/gt/docker.sock")
IMAGE = os.environ.get("GANTRY_BENCH_IMAGE", "gantry-test/busybox:latest")
CLIENTS = int(os.environ.get("GANTRY_BENCH_CLIENTS", "200"))
ROUNDS = int(os.environ.get("GANTRY_BENCH_ROUNDS", "10"))
MESSAGES = int(os.environ.get("GANTRY_BENCH_MESSAGES", "1000"))
FOLLOWED = int(os.environ.get("GANTRY_BENCH_FOLLOWED", "20"))
IDLE_RUNS = int(os.environ.get("GANTRY_BENCH_IDLE_RUNS", "3"))
# gantry pages its code out at READY and again this long after (src/server/memory.rs), plus 1 s.
SETTLE_SECS = 11
BIN = os.environ["GANTRY_BENCH_BIN"]
BASE_BIN = os.environ.get("GANTRY_BENCH_BASE_BIN")
DOCKER = [os.environ.get("DOCKER_CLI", "docker"), "-H", HOST]
TMP = tempfile.mkdtemp(prefix="gantry-bench-fm.")
STOPPABLE = "trap 'exit 0' TERM; sleep 3600 & wait"


def say(*a):
    print("bench-flowmanager:", *a, flush=True)


def docker(*args):
    return subprocess.run(DOCKER + list(args), capture_output=True, text=True, check=True).stdout


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        kb = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    return kb / 1024


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Gantry:
    def __init__(self, name, listeners, port_of="flowmanager", binary=None):
        d = os.path.join(TMP, name)
        os.makedirs(d)
        self.dir = d
        with open(f"{d}/corekey.bin", "wb") as f:
            f.write(os.urandom(64))
        text = (f'state_dir = "{d}/state"\ndocker_host = "{HOST}"\nlog_level = "warn"\n'
                f'[flowmanager]\nsocket_dir = "{d}/sockets"\nstop_timeout_secs = 1\n'
                'status_interval_secs = 3600\nmax_clients = 4096\n'
                f'[duxcore]\ncorekey_file = "{d}/corekey.bin"\n'
                '[intervirt]\npower = "none"\nupgrade_command = "none"\n' + listeners)
        with open(f"{d}/gantry.toml", "w") as f:
            f.write(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GANTRY_", "NOTIFY_", "LISTEN_"))}
        env["GANTRY_LOG_LEVEL"] = "info"
        self.log = open(f"{d}/gantry.log", "w+")
        self.proc = subprocess.Popen([binary or BIN, "serve", "--config", f"{d}/gantry.toml"], stdout=self.log,
                                     stderr=self.log, env=env)
        self.port = None
        for _ in range(300):
            self.log.seek(0)
            m = re.search(rf"listening dialect={port_of} address=127\.0\.0\.\d+:(\d+)", self.log.read())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                sys.exit(f"gantry exited: see {d}/gantry.log")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(20)


LISTENER = '[[listeners]]\ndialect = "{}"\naddress = "127.0.0.{}:0"\n'


class Client:
    """A python-socketio client with a queue per event."""

    def __init__(self, url, transports=("websocket",)):
        self.sio = socketio.Client(reconnection=False)
        self.queues = {}
        self.lock = threading.Lock()
        self.sio.on("*", self._on)
        self.sio.connect(url, transports=list(transports), wait_timeout=20)

    def _q(self, event):
        with self.lock:
            return self.queues.setdefault(event, queue.Queue())

    def _on(self, event, data=None):
        self._q(event).put((time.time(), data))

    def wait(self, event, timeout=60):
        return self._q(event).get(timeout=timeout)

    def request(self, event, data, reply):
        self.sio.emit(event, data)
        t, d = self.wait(reply)
        return d


def frame(body):
    return struct.pack(">I", len(body)) + body


def echo_peer(container):
    pid = docker("inspect", "-f", "{{.State.Pid}}", container).strip()
    s = socket.socket(socket.AF_UNIX)
    s.connect(f"/proc/{pid}/root/var/run/kawaflow.sock")

    def run():
        f = s.makefile("rb")
        while True:
            head = f.read(4)
            if len(head) < 4:
                return
            s.sendall(head + f.read(struct.unpack(">I", head)[0]))

    threading.Thread(target=run, daemon=True).start()
    return s


def crash_latency(g, c):
    name = f"bench-crash-{os.getpid()}"
    made = c.request("create_container", {"image": IMAGE, "name": name,
                                          "command": ["sh", "-c", "sleep 0.3; exit 3"]}, "container_created")
    dies = queue.Queue()
    ev = subprocess.Popen(DOCKER + ["events", "--filter", f"container={name}", "--filter", "event=die",
                                    "--format", "{{json .}}"], stdout=subprocess.PIPE, text=True)

    def read():
        for line in ev.stdout:
            dies.put((time.time(), json.loads(line)["timeNano"] / 1e9))

    threading.Thread(target=read, daemon=True).start()
    time.sleep(0.5)
    d_lat, g_lat, s_lat = [], [], []
    for _ in range(ROUNDS):
        c.request("start_container", {"container_id": name}, "container_started")
        seen, at = dies.get(timeout=30)
        while True:
            t, data = c.wait("container_crashed")
            if data["container_id"] == made["container_id"]:
                break
        while True:
            ts, data = c.wait("status_changed")
            if data["container_id"] == made["container_id"] and data["new_state"] == "exited":
                break
        d_lat.append((seen - at) * 1000)
        g_lat.append((t - at) * 1000)
        s_lat.append((ts - at) * 1000)
    ev.kill()
    c.request("delete_container", {"container_id": name}, "container_deleted")
    md, mg = statistics.median(d_lat), statistics.median(g_lat)
    say(f"(a) crash latency over {ROUNDS} rounds, from dockerd's die: docker events median {md:.1f} ms, "
        f"container_crashed median {mg:.1f} ms; ratio {mg / md:.2f}, difference {mg - md:.1f} ms "
        f"(goal: at most 1.2x + 5 ms = {1.2 * md + 5:.1f} ms); the same die as status_changed "
        f"median {statistics.median(s_lat):.1f} ms; fastest rounds: docker events {min(d_lat):.1f} ms, "
        f"container_crashed {min(g_lat):.1f} ms, status_changed {min(s_lat):.1f} ms")


def memory():
    g = Gantry("memory", LISTENER.format("flowmanager", 1))
    time.sleep(2)
    idle = rss_mib(g.proc.pid)
    clients = [Client(g.url) for _ in range(CLIENTS)]
    time.sleep(3)
    busy = rss_mib(g.proc.pid)
    say(f"(b) RSS idle {idle:.2f} MiB; with {CLIENTS} Socket.IO clients {busy:.2f} MiB "
        f"(+{busy - idle:.2f} MiB, {(busy - idle) * 1024 / CLIENTS:.1f} KiB per client; goal +16 MiB)")
    for c in clients:
        c.sio.disconnect()
    g.stop()


def first_request_ms(g):
    """After idle: the first client's connection (websocket) and its first two requests, in
    ms; the code they run comes back from the binary's file."""
    t0 = time.monotonic()
    c = Client(g.url)
    t1 = time.monotonic()
    c.request("list_containers", {}, "container_list")
    t2 = time.monotonic()
    c.request("list_containers", {}, "container_list")
    t3 = time.monotonic()
    c.sio.disconnect()
    return (t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000


def idle():
    """Idle RSS with every listener against transfer only, alternating starts; with
    GANTRY_BENCH_BASE_BIN, the every-listener daemon of that binary too (a before/after)."""
    # One loopback address each: two listeners may not share an address, port 0 included.
    every = LISTENER.format("transfer", 2) + LISTENER.format("flowmanager", 1) + \
        LISTENER.format("intervirt", 3) + 'auth = "none"\n' + LISTENER.format("duxcore", 4) + \
        LISTENER.format("distillery", 5) + f'token_file = "{TMP}/distillery-tokens"\n'
    with open(f"{TMP}/distillery-tokens", "w") as f:
        f.write("bench " + os.urandom(24).hex() + "\n")
    os.chmod(f"{TMP}/distillery-tokens", 0o600)
    kinds = [("transfer", LISTENER.format("transfer", 2), "transfer", BIN),
             ("all", every, "flowmanager", BIN)]
    if BASE_BIN:
        kinds.append(("all-base", every, "flowmanager", BASE_BIN))
    early = {k[0]: [] for k in kinds}
    settled = {k[0]: [] for k in kinds if k[0] != "transfer"}
    parts = {k: [] for k in settled}
    firsts = {k: [] for k in settled}
    for i in range(IDLE_RUNS):
        for label, listeners, port_of, binary in kinds:
            g = Gantry(f"idle-{label}-{i}", listeners, port_of, binary)
            time.sleep(3)
            early[label].append(rss_mib(g.proc.pid))
            if label != "transfer":
                # gantry pages its code out again once the start-up work in the background ran.
                time.sleep(SETTLE_SECS)
                settled[label].append(rss_mib(g.proc.pid))
                parts[label].append(rss_parts(g.proc.pid))
                firsts[label].append(first_request_ms(g))
            g.stop()
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)
    med = statistics.median
    names = {"transfer": "transfer only", "all": "every listener",
             "all-base": f"every listener, {BASE_BIN}"}
    say(f"(b) idle RSS, {IDLE_RUNS} alternating starts, 3 s after start (after the page-out at READY); "
        "every listener = transfer, intervirt, flowmanager, duxcore, distillery; goal <= 6 MiB")
    for k, xs in early.items():
        say(f"(b)   {names[k]}: {fmt(xs)} MiB (median {med(xs):.2f})")
    say(f"(b) {3 + SETTLE_SECS} s after start (after the second page-out):")
    for k, xs in settled.items():
        pss = [p["PSS"] for p in parts[k]]
        say(f"(b)   {names[k]}: RSS {fmt(xs)} MiB (median {med(xs):.2f}); PSS {fmt(pss)} MiB "
            f"(median {med(pss):.2f})")
        say(f"(b)   {names[k]}, where it is, last start (MiB): " +
            ", ".join(f"{n} {v:.2f}" for n, v in parts[k][-1].items()))
        f = firsts[k]
        say(f"(b)   {names[k]}, then a first client (ms, median): connect {med(x[0] for x in f):.1f}, "
            f"first list_containers {med(x[1] for x in f):.1f}, second {med(x[2] for x in f):.1f}")
    if BASE_BIN:
        r = med(settled["all"]) / med(settled["all-base"])
        p = med(x["PSS"] for x in parts["all"]) / med(x["PSS"] for x in parts["all-base"])
        say(f"(b) ratios {BIN} / {BASE_BIN} at {3 + SETTLE_SECS} s: RSS {r:.2f}, PSS {p:.2f}")


def rss_parts(pid):
    """The resident set by kind of mapping, and the proportional set size (shared pages
    divided among the processes that map them)."""
    exe = os.readlink(f"/proc/{pid}/exe")
    out = {"own code and data (the binary)": 0, "shared libraries": 0, "heap, stacks, other": 0,
           "PSS": 0}
    kind = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                path = head[5] if len(head) > 5 else ""
                kind = ("own code and data (the binary)" if path == exe else
                        "shared libraries" if ".so" in path else "heap, stacks, other")
            elif head[0] == "Rss:":
                out[kind] += int(head[1]) / 1024
            elif head[0] == "Pss:":
                out["PSS"] += int(head[1]) / 1024
    return out


def socket_fds(pid):
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


def dockerd_pid():
    sock = HOST.removeprefix("unix://")
    for p in os.listdir("/proc"):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"dockerd") and f"unix://{sock}".encode() in argv:
            return int(p)
    return None


def followed(g, c):
    """What the running containers cost: gantry's RSS and sockets, dockerd's RSS."""
    dpid = dockerd_pid()
    dmem = lambda: f"{rss_mib(dpid):.1f} MiB" if dpid else "?"
    time.sleep(1)
    before = (rss_mib(g.proc.pid), socket_fds(g.proc.pid), dmem())
    names = [f"bench-run-{os.getpid()}-{i}" for i in range(FOLLOWED)]
    for n in names:
        c.request("create_container", {"image": IMAGE, "name": n, "command": ["sh", "-c", STOPPABLE]},
                  "container_created")
        c.request("start_container", {"container_id": n}, "container_started")
    time.sleep(3)
    after = (rss_mib(g.proc.pid), socket_fds(g.proc.pid), dmem())
    say(f"(d) {FOLLOWED} running containers: gantry RSS {before[0]:.2f} -> {after[0]:.2f} MiB "
        f"({(after[0] - before[0]) * 1024 / FOLLOWED:.1f} KiB each), gantry sockets {before[1]} -> "
        f"{after[1]} ({(after[1] - before[1]) / FOLLOWED:.1f} each: its listening socket, and the "
        f"follow of its logs), dockerd RSS {before[2]} -> {after[2]}")
    for n in names:
        c.request("delete_container", {"container_id": n}, "container_deleted")


def round_trips(c, target, label):
    lat = []
    for i in range(MESSAGES):
        t0 = time.time()
        c.sio.emit("send_message", {"container_id": target, "message": {"i": i}})
        while True:
            t, data = c.wait("message_received")
            if data["message"].get("i") == i:
                break
        lat.append((t - t0) * 1000)
    t0 = time.time()
    for i in range(MESSAGES):
        c.sio.emit("send_message", {"container_id": target, "message": {"p": i}})
    got = 0
    while got < MESSAGES:
        t, data = c.wait("message_received")
        got += "p" in data["message"]
    rate = MESSAGES / (t - t0)
    say(f"(c) {label}: round trip median {statistics.median(lat):.2f} ms, p99 {pct(lat, 99):.2f} ms; "
        f"{rate:.0f} msgs/s pipelined ({MESSAGES} messages)")
    return statistics.median(lat), pct(lat, 99), rate


BASELINE = r'''
import socketio, uvicorn, sys
sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*")
@sio.on("send_message")
async def send(sid, data):
    await sio.emit("message_sent", {**data, "status": "sent"}, to=sid)
    await sio.emit("message_received", {"container_id": data["container_id"], "message": data["message"]})
uvicorn.run(socketio.ASGIApp(sio), fd=int(sys.argv[1]), log_level="warning")
'''


def messages(g, c):
    name = f"bench-echo-{os.getpid()}"
    c.request("create_container", {"image": IMAGE, "name": name, "command": ["sh", "-c", STOPPABLE]},
              "container_created")
    c.request("start_container", {"container_id": name}, "container_started")
    peer = echo_peer(name)
    time.sleep(0.5)
    mg, pg, rg = round_trips(c, name, "gantry, container echoing through its socket")
    peer.close()
    c.request("delete_container", {"container_id": name}, "container_deleted")
    # The baseline serves a socket bound here (port 0, kept open): no port changes hands.
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    port = lsock.getsockname()[1]
    srv = subprocess.Popen([sys.executable, "-c", BASELINE, str(lsock.fileno())], pass_fds=[lsock.fileno()])
    for _ in range(100):
        try:
            b = Client(f"http://127.0.0.1:{port}")
            break
        except Exception:
            time.sleep(0.1)
    mb, pb, rb = round_trips(b, "echo", "baseline: plain python-socketio echo server (uvicorn)")
    b.sio.disconnect()
    srv.terminate()
    say(f"(c) ratios gantry/baseline: median {mg / mb:.2f}, p99 {pg / pb:.2f}, msgs/s {rg / rb:.2f}")


def main():
    say(f"dockerd {HOST}, image {IMAGE}, binary {BIN}, temp {TMP}")
    phases = os.environ.get("GANTRY_BENCH_PHASES", "crash,messages,followed,memory").split(",")
    if "crash" in phases or "messages" in phases or "followed" in phases:
        g = Gantry("main", LISTENER.format("flowmanager", 1))
        c = Client(g.url)
        try:
            if "crash" in phases:
                crash_latency(g, c)
            if "messages" in phases:
                messages(g, c)
            if "followed" in phases:
                followed(g, c)
        finally:
            c.sio.disconnect()
            g.stop()
    if "memory" in phases:
        memory()
    if "memory" in phases or "idle" in phases:
        idle()


main()
