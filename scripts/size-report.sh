#!/usr/bin/env bash
# Measures gantry on the build host (x86_64): stripped release binary size,
# idle RSS of `gantry serve`, and time from process start to the first
# successful GET /healthz. It prints figures; it does not judge them.
# Docker is deliberately unreachable (a socket path that does not exist): the
# daemon must start and idle without it, and that is the figure we want.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v curl >/dev/null 2>&1 || { echo "size-report: curl is required" >&2; exit 1; }

# GANTRY_SIZE_CARGO_ARGS: more cargo build arguments, e.g. "--no-default-features" (a
# gateway without the App Pool role).
read -r -a extra <<<"${GANTRY_SIZE_CARGO_ARGS:-}"
echo "size-report: cargo build --release --locked ${extra[*]}"
cargo build --release --locked "${extra[@]}"

target_dir=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/release/gantry"

tmp=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# --- size ----------------------------------------------------------------
cp "$bin" "$tmp/gantry-stripped"
strip "$tmp/gantry-stripped"
size=$(stat -c %s "$tmp/gantry-stripped")
awk -v s="$size" -v a="$(uname -m)" \
    'BEGIN { printf "size-report: %s stripped size: %d bytes (%.2f MiB)\n", a, s, s / 1048576 }'

# --- idle RSS and start-up time -----------------------------------------
# Measured on the stripped copy: that is what packages and Yocto images install.
# Port 0: gantry binds it and logs the address it got (`listening ... address=...`, at
# info), which is read back here; no port is picked for it and released.
mkdir -p "$tmp/state"
cat > "$tmp/gantry.toml" <<TOML
state_dir = "$tmp/state"
docker_host = "unix://$tmp/no-docker.sock"
log_level = "info"

[[listeners]]
dialect = "transfer"
address = "127.0.0.1:0"
TOML

# No GANTRY_* overrides or systemd notify/watchdog from the caller's
# environment: measure exactly the config above.
start_ns=$(date +%s%N)
env -u GANTRY_STATE_DIR -u GANTRY_DOCKER_HOST -u GANTRY_LOG_LEVEL \
    -u GANTRY_SHUTDOWN_TIMEOUT_SECS -u GANTRY_TRANSFER_ADDRESS \
    -u GANTRY_TRANSFER_AUTH -u GANTRY_TRANSFER_TOKEN_FILE \
    -u NOTIFY_SOCKET -u WATCHDOG_USEC -u WATCHDOG_PID \
    "$tmp/gantry-stripped" serve --config "$tmp/gantry.toml" >"$tmp/gantry.log" 2>&1 &
pid=$!

ready_ns=
addr=
deadline=$((start_ns + 30 * 1000000000))
while :; do
    if [ -z "$addr" ]; then
        addr=$(grep -m1 ' listening .*dialect=transfer' "$tmp/gantry.log" |
            grep -o 'address=[^ ]*' | cut -d= -f2 || true)
    fi
    code=
    if [ -n "$addr" ]; then
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://$addr/healthz" || true)
    fi
    now=$(date +%s%N)
    if [ "$code" = 200 ]; then
        ready_ns=$now
        break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "size-report: gantry exited before answering /healthz; its output:" >&2
        cat "$tmp/gantry.log" >&2
        exit 1
    fi
    if [ "$now" -gt "$deadline" ]; then
        echo "size-report: no listening address and 200 from /healthz within 30 s; gantry output:" >&2
        cat "$tmp/gantry.log" >&2
        exit 1
    fi
    sleep 0.005
done
awk -v ns="$((ready_ns - start_ns))" \
    'BEGIN { printf "size-report: start to first /healthz 200: %.1f ms (includes curl polling, 5 ms steps)\n", ns / 1e6 }'

sleep 2
rss_kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
hwm_kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
threads=$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status")
awk -v r="$rss_kb" -v h="$hwm_kb" -v t="$threads" 'BEGIN {
    printf "size-report: idle VmRSS after 2 s: %d kB (%.2f MiB); peak VmHWM %d kB; %d threads\n", r, r / 1024, h, t
}'
echo "size-report: /healthz said: $(curl -s --max-time 1 "http://$addr/healthz")"

# --- start to READY=1 (sd_notify) ------------------------------------------
# A second start, this time with a notify socket of our own, the way systemd runs the unit
# (Type=notify): the figure is the time from spawn to gantry's READY=1 datagram, median of 5.
kill -TERM "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
pid=
python3 - "$tmp/gantry-stripped" "$tmp/gantry.toml" <<'PY'
import os, socket, statistics, subprocess, sys, tempfile, time
binary, config = sys.argv[1], sys.argv[2]
times = []
for _ in range(5):
    d = tempfile.mkdtemp()
    path = os.path.join(d, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(30)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
    env.pop("WATCHDOG_USEC", None)
    env["NOTIFY_SOCKET"] = path
    t0 = time.monotonic()
    p = subprocess.Popen([binary, "serve", "--config", config], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            msg = s.recv(4096).decode(errors="replace")
            if "READY=1" in msg.split("\n"):
                times.append((time.monotonic() - t0) * 1000)
                break
    finally:
        p.terminate()
        p.wait(timeout=30)
        s.close()
        os.unlink(path)
        os.rmdir(d)
print("size-report: start to READY=1: median %.1f ms (min %.1f, max %.1f, n=%d)"
      % (statistics.median(times), min(times), max(times), len(times)))
PY
