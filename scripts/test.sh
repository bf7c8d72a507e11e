#!/usr/bin/env bash
# The one test command for gantry (README: `bash scripts/test.sh`; `.ci/run` calls exactly it).
#
# As root on Debian 12 it:
#   1. installs what is missing (docker.io, busybox-static, nftables, iproute2, curl,
#      docker-compose, docker-registry, apache2-utils, openssl), without letting the packages
#      start their services on the host;
#   2. builds everything, checks formatting and runs clippy (host network: cargo may fetch);
#   3. creates a private network namespace and starts a private containerd + dockerd in it,
#      with their own sockets, data and exec roots under a temp dir and addresses from
#      198.18.0.0/15, so docker0 and Docker's firewall rules live in that namespace only;
#   4. builds the test image gantry-test/busybox:latest from busybox-static (no registry);
#   5. runs `cargo test` inside the namespace (127.0.0.1 is the namespace's loopback), with
#      GANTRY_TEST_DOCKER_HOST and GANTRY_TEST_IMAGE pointing at the private daemon, then
#      scripts/schemathesis.sh there: schemathesis (PyPI, pinned, installed into a virtualenv
#      under ~/.cache/gantry-test) against the OpenAPI document the real gantry serves;
#      then scripts/browser-test.py there: the dashboard in Debian's headless Chromium, driven
#      by selenium (PyPI, pinned, in its own virtualenv);
#   6. tears the daemon and namespace down (also on failure or a signal), then builds the
#      Debian package and installs it into a fresh Debian root (scripts/test-deb.sh), then
#      runs scripts/check-yocto.sh and scripts/cross-aarch64.sh when they exist.
# Exit status: 0 only if every step passed.
#
# Arguments are passed on to `cargo test` (e.g. `bash scripts/test.sh --test apps_api`), and
# GANTRY_TEST_QUICK=1 skips fmt, clippy and the Yocto/cross checks: both are for developers'
# inner loop; `.ci/run` passes neither. GANTRY_TEST_DOCKERD=/path/to/dockerd runs the suite
# against another dockerd than Debian's (a compatibility check; CI uses Debian's). The schemathesis run happens when no arguments are
# given, or when GANTRY_TEST_SCHEMATHESIS=1 (GANTRY_TEST_SCHEMATHESIS=0 skips it); so do the
# browser test (GANTRY_TEST_BROWSER=0|1) and the Debian package test (GANTRY_TEST_DEB=0|1).
#
# The tests that need the dockerd (or root and network namespaces) are #[ignore]d, so a plain
# `cargo test` lists them as ignored; with the private dockerd up, this runs them too
# (`--include-ignored`, added after the caller's `--` or after one of its own). Without root
# and outside CI it runs the cargo steps only, and they stay listed as ignored. Under CI (CI
# is true, 1 or yes), no root or no dockerd is a failure, and so is such a test that cannot
# reach the dockerd.

set -uo pipefail

CARGO_TEST_ARGS=("$@")
quick() { [[ "${GANTRY_TEST_QUICK:-}" == 1 ]]; }
# An optional part runs when its variable says 1, never when it says 0, and otherwise when
# cargo test got no arguments (a full run, as in CI).
wanted() {
    case "${1:-}" in
    1) return 0 ;;
    0) return 1 ;;
    esac
    [[ ${#CARGO_TEST_ARGS[@]} -eq 0 ]]
}
want_browser() { wanted "${GANTRY_TEST_BROWSER:-}"; }
want_deb() { ! quick && wanted "${GANTRY_TEST_DEB:-}"; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1

TEST_TIMEOUT_SECS="${GANTRY_TEST_TIMEOUT_SECS:-1500}"
DOCKERD_WAIT_SECS=30
IMAGE="gantry-test/busybox:latest"
SCHEMATHESIS_VERSION=4.32.5
ST_VENV="${GANTRY_TEST_VENV_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gantry-test}/schemathesis-$SCHEMATHESIS_VERSION"
SELENIUM_VERSION=4.51.0
SE_VENV="${GANTRY_TEST_VENV_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gantry-test}/selenium-$SELENIUM_VERSION"
# python-socketio: the real Socket.IO client of the flowmanager tests (tests/flowmanager.rs).
SOCKETIO_VERSION=5.14.1
SIO_VENV="${GANTRY_TEST_VENV_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gantry-test}/socketio-$SOCKETIO_VERSION"

log() { printf '\n==> %s\n' "$*" >&2; }
warn() { printf 'test.sh: WARNING: %s\n' "$*" >&2; }
die() {
    printf 'test.sh: FAILED: %s\n' "$*" >&2
    exit 1
}

in_ci() {
    case "${CI:-}" in
    [Tt][Rr][Uu][Ee] | 1 | [Yy][Ee][Ss]) return 0 ;;
    *) return 1 ;;
    esac
}

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# ---------------------------------------------------------------------------------------------
# Steps run as child process groups, so that a signal to this script can end them as a whole.

FAILED=()
CHILD=""

run() {
    setsid "$@" &
    CHILD=$!
    wait "$CHILD"
    local rc=$?
    CHILD=""
    return "$rc"
}

step() {
    local name=$1
    shift
    log "$name"
    local start=$SECONDS rc=0
    run "$@" || rc=$?
    if [[ $rc -eq 0 ]]; then
        printf '    ok: %s (%ds)\n' "$name" "$((SECONDS - start))" >&2
        return 0
    fi
    printf '    FAILED: %s (exit %d, %ds)\n' "$name" "$rc" "$((SECONDS - start))" >&2
    FAILED+=("$name (exit $rc)")
    return "$rc"
}

# ---------------------------------------------------------------------------------------------
# Private Docker daemon state; all of it is undone by teardown().

TMPD=""
NETNS=""
CONTAINERD_PID=""
DOCKERD_PID=""
DOCKER_SOCK=""
DOCKER_CLI=""

pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# SIGTERM, wait up to $2 seconds, then SIGKILL.
stop_pid() {
    local pid=$1 secs=$2 i
    pid_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < secs * 10; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.1
    done
    warn "pid $pid did not stop within ${secs}s; killing it"
    kill -KILL "$pid" 2>/dev/null
    for ((i = 0; i < 50; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.1
    done
}

# Every process that belongs to the test daemon: inside the namespace (containerd, dockerd,
# the test binaries and gantry), mentioning the temp dir (shims), or rooted below it
# (container processes).
leftover_pids() {
    local p pid root
    if [[ -n "$NETNS" ]]; then
        ip netns pids "$NETNS" 2>/dev/null
    fi
    [[ -n "$TMPD" ]] || return 0
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        [[ "$pid" == "$$" ]] && continue
        root=$(readlink "$p/root" 2>/dev/null) || continue
        if [[ "$root" == "$TMPD"/* ]]; then
            echo "$pid"
            continue
        fi
        if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$TMPD/"; then
            echo "$pid"
        fi
    done
}

teardown() {
    local pid m i
    if [[ -z "$DOCKERD_PID" && -n "$TMPD" && -f "$TMPD/docker.pid" ]]; then
        DOCKERD_PID=$(cat "$TMPD/docker.pid" 2>/dev/null)
    fi
    if [[ -n "$DOCKER_SOCK" && -S "$DOCKER_SOCK" ]] && pid_alive "$DOCKERD_PID"; then
        local ids
        ids=$(timeout 20 "$DOCKER_CLI" -H "unix://$DOCKER_SOCK" ps -aq 2>/dev/null)
        if [[ -n "$ids" ]]; then
            # shellcheck disable=SC2086
            timeout 60 "$DOCKER_CLI" -H "unix://$DOCKER_SOCK" rm -f $ids >/dev/null 2>&1
        fi
    fi
    stop_pid "$DOCKERD_PID" 20
    DOCKERD_PID=""
    stop_pid "$CONTAINERD_PID" 10
    CONTAINERD_PID=""
    # Two rounds: a killed shim can leave a container process behind for a moment.
    for i in 1 2; do
        for pid in $(leftover_pids | sort -u); do
            [[ "$pid" == "$$" ]] && continue
            kill -KILL "$pid" 2>/dev/null
        done
        sleep 0.5
    done
    if [[ -n "$TMPD" && -d "$TMPD" ]]; then
        # Deepest first; lazily if a mount is still busy.
        awk -v d="$TMPD/" 'index($5, d) == 1 { print length($5) " " $5 }' /proc/self/mountinfo |
            sort -rn | cut -d' ' -f2- | while read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || warn "cannot unmount $m"
        done
        rm -rf --one-file-system "$TMPD" 2>/dev/null || warn "could not remove all of $TMPD"
    fi
    TMPD=""
    DOCKER_SOCK=""
    if [[ -n "$NETNS" ]]; then
        # The App Pool tests' fleet: a namespace per server, named after ours.
        local ns
        for ns in $(ip netns list 2>/dev/null | awk '{ print $1 }' | grep -F "$NETNS-"); do
            for pid in $(ip netns pids "$ns" 2>/dev/null); do
                kill -KILL "$pid" 2>/dev/null
            done
            ip netns del "$ns" 2>/dev/null || warn "cannot delete network namespace $ns"
        done
        ip netns del "$NETNS" 2>/dev/null || warn "cannot delete network namespace $NETNS"
        NETNS=""
    fi
}

# A run killed with SIGKILL (or a machine stopped mid-run) cannot clean up after itself: its
# namespace, daemon and temp dir are removed by the next run, once their owner is gone.
owner_alive() {
    [[ -r "/proc/$1/cmdline" ]] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q 'test\.sh'
}

sweep_stale() {
    local ns d pid
    local -A stale=()
    for ns in $(ip netns list 2>/dev/null | awk '{ print $1 }'); do
        [[ "$ns" =~ ^gantry-test-([0-9]+)$ ]] && stale[${BASH_REMATCH[1]}]=1
    done
    for d in /tmp/gantry-test-*.*; do
        [[ -d "$d" && "$d" =~ ^/tmp/gantry-test-([0-9]+)\.[A-Za-z0-9]+$ ]] && stale[${BASH_REMATCH[1]}]=1
    done
    for pid in "${!stale[@]}"; do
        [[ "$pid" == "$$" ]] && continue
        owner_alive "$pid" && continue
        warn "removing what an interrupted run (pid $pid) left behind"
        NETNS=""
        TMPD=""
        ip netns list 2>/dev/null | awk '{ print $1 }' | grep -qx "gantry-test-$pid" && NETNS="gantry-test-$pid"
        for d in /tmp/gantry-test-"$pid".*; do
            [[ -d "$d" ]] && TMPD="$d"
        done
        DOCKER_SOCK="${TMPD:+$TMPD/docker.sock}"
        teardown
    done
}

# shellcheck disable=SC2317 # invoked by the trap
on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ $rc -ne 0 && ( -n "$CHILD" || -n "$TMPD" || -n "$NETNS" ) ]]; then
        printf '\ntest.sh: exiting with %d; cleaning up\n' "$rc" >&2
    fi
    if [[ -n "$CHILD" ]]; then
        kill -TERM -- "-$CHILD" 2>/dev/null
        for ((i = 0; i < 100; i++)); do
            pid_alive "$CHILD" || break
            sleep 0.1
        done
        kill -KILL -- "-$CHILD" 2>/dev/null
    fi
    teardown
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# 0. Preconditions

if in_ci && ! is_root; then
    die "CI=true but not running as root: the Docker-backed tests need root (network namespace, dockerd)"
fi

# 1. System packages

pkg_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == "installed" ]]
}

missing_packages() {
    local -a missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    # The test image needs the static busybox (the image has no libc).
    pkg_installed busybox-static || missing+=(busybox-static)
    command -v nft >/dev/null 2>&1 || missing+=(nftables)
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    # The App Pool tests' store: Debian's distribution 2.8 registry, started by the tests.
    command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
    # A private store's test: its htpasswd file (bcrypt, `htpasswd -B`) and its certificates.
    command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    # promtool checks the /metrics exposition format (tests/metrics.rs).
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    # schemathesis goes into a virtualenv (Debian's python3 is externally managed).
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
    if want_browser; then
        command -v chromium >/dev/null 2>&1 || missing+=(chromium)
        command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
    fi
    if want_deb; then
        command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    fi
    echo "${missing[@]}"
}

install_packages() {
    local -a pkgs=("$@")
    local policy=/usr/sbin/policy-rc.d created_policy=0 rc=0
    # Installing docker.io must not start the host's dockerd/containerd: they would create
    # docker0 and firewall rules in the host's network.
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    run apt-get update -q || rc=$?
    if [[ $rc -eq 0 ]]; then
        run apt-get install -y -q --no-install-recommends "${pkgs[@]}" || rc=$?
    fi
    [[ $created_policy -eq 1 ]] && rm -f "$policy"
    return "$rc"
}

if command -v dpkg-query >/dev/null 2>&1; then
    read -r -a MISSING <<<"$(missing_packages)"
    if [[ ${#MISSING[@]} -gt 0 ]]; then
        if is_root; then
            log "installing ${MISSING[*]}"
            install_packages "${MISSING[@]}" || die "apt-get install ${MISSING[*]} failed"
        elif in_ci; then
            die "missing packages ${MISSING[*]} and not root"
        else
            warn "missing packages: ${MISSING[*]} (not root, not installing)"
        fi
    fi
else
    warn "not a Debian system: not installing packages"
fi

command -v cargo >/dev/null 2>&1 || die "cargo is not on PATH: install the Rust toolchain (rustup) first"
if command -v rustup >/dev/null 2>&1; then
    cargo fmt --version >/dev/null 2>&1 || run rustup component add rustfmt || true
    cargo clippy --version >/dev/null 2>&1 || run rustup component add clippy || true
fi

# schemathesis, pinned, in its own virtualenv (host network namespace: pip needs PyPI).
want_schemathesis() { wanted "${GANTRY_TEST_SCHEMATHESIS:-}"; }

# A new virtualenv at $1 with the pip requirements $2...
fresh_venv() {
    local venv=$1
    shift
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")" &&
        python3 -m venv "$venv" &&
        "$venv/bin/pip" install -q --disable-pip-version-check "$@"
}

install_schemathesis() {
    if [[ "$("$ST_VENV/bin/st" --version 2>/dev/null)" == *" $SCHEMATHESIS_VERSION" ]]; then
        return 0
    fi
    fresh_venv "$ST_VENV" "schemathesis==$SCHEMATHESIS_VERSION" &&
        "$ST_VENV/bin/st" --version >/dev/null
}

# selenium, pinned, in its own virtualenv; it drives Debian's chromium through chromedriver.
install_selenium() {
    if "$SE_VENV/bin/python" -c "import selenium, sys; sys.exit(selenium.__version__ != '$SELENIUM_VERSION')" 2>/dev/null; then
        return 0
    fi
    fresh_venv "$SE_VENV" "selenium==$SELENIUM_VERSION"
}

SE_OK=0
if want_browser; then
    log "selenium $SELENIUM_VERSION (virtualenv $SE_VENV)"
    if install_selenium; then
        SE_OK=1
    else
        FAILED+=("install selenium $SELENIUM_VERSION (pip)")
    fi
fi

ST_OK=0
if want_schemathesis; then
    log "schemathesis $SCHEMATHESIS_VERSION (virtualenv $ST_VENV)"
    if install_schemathesis; then
        ST_OK=1
    else
        FAILED+=("install schemathesis $SCHEMATHESIS_VERSION (pip)")
    fi
fi

# python-socketio (with its polling and websocket client transports), pinned, in its own
# virtualenv; the tests get its python as GANTRY_TEST_PYTHON.
install_socketio() {
    local check=(-c "import socketio, websocket, requests")
    if [[ "$("$SIO_VENV/bin/pip" show python-socketio 2>/dev/null)" == *"Version: $SOCKETIO_VERSION"* ]] &&
        "$SIO_VENV/bin/python" "${check[@]}" 2>/dev/null; then
        return 0
    fi
    fresh_venv "$SIO_VENV" "python-socketio[client]==$SOCKETIO_VERSION" &&
        "$SIO_VENV/bin/python" "${check[@]}"
}

SIO_PYTHON=""
log "python-socketio $SOCKETIO_VERSION (virtualenv $SIO_VENV)"
if install_socketio; then
    SIO_PYTHON="$SIO_VENV/bin/python"
else
    FAILED+=("install python-socketio $SOCKETIO_VERSION (pip)")
fi

# 2. Build, format, lint (host network namespace: cargo may need the registry)

BUILD_OK=1
step "cargo build --all-targets" cargo build --locked --all-targets || BUILD_OK=0
if [[ $BUILD_OK -eq 1 ]]; then
    step "cargo test --no-run" cargo test --locked --no-run || BUILD_OK=0
fi
if ! quick; then
    step "cargo fmt --check" cargo fmt --all --check || true
    step "cargo clippy" cargo clippy --locked --all-targets -- -D warnings || true
fi

# 3.-5. Private dockerd and the test run

docker_cli() { "$DOCKER_CLI" -H "unix://$DOCKER_SOCK" "$@"; }

start_private_docker() {
    local i
    NETNS="gantry-test-$$"
    TMPD=$(mktemp -d "/tmp/gantry-test-$$.XXXXXX") || return 1
    chmod 711 "$TMPD"
    DOCKER_SOCK="$TMPD/docker.sock"

    ip netns add "$NETNS" || {
        NETNS=""
        return 1
    }
    ip -n "$NETNS" link set lo up || return 1

    # Our own containerd, so that dockerd never attaches to a system containerd that may be
    # running on the host.
    mkdir -p "$TMPD/containerd" "$TMPD/data" "$TMPD/exec"
    cat >"$TMPD/containerd/config.toml" <<EOF
version = 2
root = "$TMPD/containerd/root"
state = "$TMPD/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "$TMPD/containerd/containerd.sock"

[debug]
  address = "$TMPD/containerd/debug.sock"
  level = "warn"

[plugins."io.containerd.internal.v1.opt"]
  path = "$TMPD/containerd/opt"
EOF
    echo '{}' >"$TMPD/daemon.json"

    # nsenter, not `ip netns exec`: the latter remounts /sys and dockerd then fails with
    # "Devices cgroup isn't mounted".
    setsid nsenter --net="/run/netns/$NETNS" \
        containerd --config "$TMPD/containerd/config.toml" \
        >"$TMPD/containerd.log" 2>&1 </dev/null &
    CONTAINERD_PID=$!
    for ((i = 0; i < 100; i++)); do
        [[ -S "$TMPD/containerd/containerd.sock" ]] && break
        pid_alive "$CONTAINERD_PID" || break
        sleep 0.1
    done
    if [[ ! -S "$TMPD/containerd/containerd.sock" ]]; then
        warn "containerd did not come up; its log:"
        tail -n 40 "$TMPD/containerd.log" >&2
        return 1
    fi

    # GANTRY_TEST_DOCKERD: another dockerd binary to test against (e.g. a newer release
    # unpacked from its package); its directory comes first on PATH, for its docker-proxy.
    local dockerd_bin=dockerd dockerd_path=$PATH
    if [[ -n "${GANTRY_TEST_DOCKERD:-}" ]]; then
        dockerd_bin=$GANTRY_TEST_DOCKERD
        dockerd_path="$(dirname "$dockerd_bin"):$PATH"
    fi
    PATH=$dockerd_path setsid nsenter --net="/run/netns/$NETNS" \
        "$dockerd_bin" \
        --host "unix://$DOCKER_SOCK" \
        --containerd "$TMPD/containerd/containerd.sock" \
        --data-root "$TMPD/data" \
        --exec-root "$TMPD/exec" \
        --pidfile "$TMPD/docker.pid" \
        --config-file "$TMPD/daemon.json" \
        --bip 198.18.0.1/24 \
        --default-address-pool base=198.18.64.0/18,size=24 \
        >"$TMPD/dockerd.log" 2>&1 </dev/null &
    DOCKERD_PID=$!

    local deadline=$((SECONDS + DOCKERD_WAIT_SECS))
    while ((SECONDS < deadline)); do
        if ! pid_alive "$DOCKERD_PID"; then
            warn "dockerd exited during start-up; its log:"
            tail -n 40 "$TMPD/dockerd.log" >&2
            return 1
        fi
        if [[ -S "$DOCKER_SOCK" ]] && timeout 5 "$DOCKER_CLI" -H "unix://$DOCKER_SOCK" version >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    warn "dockerd did not answer within ${DOCKERD_WAIT_SECS}s; its log:"
    tail -n 40 "$TMPD/dockerd.log" >&2
    return 1
}

build_test_image() {
    local root="$TMPD/rootfs" a
    local busybox=/bin/busybox
    [[ -x "$busybox" ]] || busybox=$(command -v busybox) || return 1
    mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/root" "$root/proc" "$root/sys" "$root/dev"
    chmod 1777 "$root/tmp"
    cp "$busybox" "$root/bin/busybox"
    for a in sh ls cat echo sleep nc httpd wget ping ip env true false id mkdir rm touch head \
        tail grep sed printf; do
        ln -s busybox "$root/bin/$a"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
    tar --numeric-owner -C "$root" -cf - . |
        docker_cli import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' - "$IMAGE" >/dev/null || return 1
    # Prove the image runs before the tests rely on it.
    [[ "$(docker_cli run --rm --network none "$IMAGE" echo image-ok)" == "image-ok" ]]
}

# CARGO_TEST_ARGS with the ignored tests included: `--include-ignored` right after the first
# `--` (the test binaries' arguments), or after an added `--`; unchanged when the caller
# already chose `--ignored` or `--include-ignored` there.
with_ignored_tests() {
    local a after=0 added=0
    for a in "${CARGO_TEST_ARGS[@]}"; do
        if [[ $after -eq 1 && ("$a" == --ignored || "$a" == --include-ignored) ]]; then
            TEST_ARGS=("${CARGO_TEST_ARGS[@]}")
            return
        fi
        [[ "$a" == -- ]] && after=1
    done
    TEST_ARGS=()
    for a in "${CARGO_TEST_ARGS[@]}"; do
        TEST_ARGS+=("$a")
        if [[ "$a" == -- && $added -eq 0 ]]; then
            TEST_ARGS+=(--include-ignored)
            added=1
        fi
    done
    [[ $added -eq 1 ]] || TEST_ARGS+=(-- --include-ignored)
}

test_command_in_netns() {
    with_ignored_tests
    TEST_CMD=(
        env
        GANTRY_TEST_DOCKER_HOST="unix://$DOCKER_SOCK"
        GANTRY_TEST_IMAGE="$IMAGE"
        GANTRY_TEST_DOCKER_CLI="$DOCKER_CLI"
        GANTRY_TEST_PYTHON="$SIO_PYTHON"
        DOCKER_CONFIG="$TMPD/docker-cli-config"
        CARGO_NET_OFFLINE=true
        RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
        timeout --kill-after=30 "$TEST_TIMEOUT_SECS"
        nsenter --net="/run/netns/$NETNS"
        cargo test --locked --no-fail-fast "${TEST_ARGS[@]}"
    )
}

# `env` with what the scripts run in the namespace are given: gantry, the test dockerd and
# its image, and a work directory `$TMPD/$1` of their own.
netns_env() {
    mkdir -p "$TMPD/$1"
    NETNS_ENV=(
        env
        GANTRY_BIN="${CARGO_TARGET_DIR:-$REPO/target}/debug/gantry"
        DOCKER_HOST_URI="unix://$DOCKER_SOCK"
        DOCKER_CLI="$DOCKER_CLI"
        DOCKER_CONFIG="$TMPD/docker-cli-config"
        IMAGE="$IMAGE"
        WORKDIR="$TMPD/$1"
    )
}

# Bounded: schemathesis.sh limits schemathesis itself to 150 s; this is the outer bound.
schemathesis_command_in_netns() {
    netns_env schemathesis
    ST_CMD=(
        "${NETNS_ENV[@]}" ST="$ST_VENV/bin/st"
        timeout --kill-after=10 200 nsenter --net="/run/netns/$NETNS"
        bash "$REPO/scripts/schemathesis.sh"
    )
}

# Bounded: the browser test waits at most 60 s per step.
browser_command_in_netns() {
    netns_env browser
    BROWSER_CMD=(
        "${NETNS_ENV[@]}" HOME="$TMPD/browser"
        timeout --kill-after=10 300 nsenter --net="/run/netns/$NETNS"
        "$SE_VENV/bin/python" "$REPO/scripts/browser-test.py"
    )
}

if [[ $BUILD_OK -eq 0 ]]; then
    warn "the build failed: not running the tests"
    FAILED+=("cargo test (not run: build failed)")
elif is_root && command -v dockerd >/dev/null 2>&1; then
    if [[ -x /usr/local/bin/docker ]]; then
        DOCKER_CLI=/usr/local/bin/docker
    else
        DOCKER_CLI=$(command -v docker) || DOCKER_CLI=docker
    fi
    sweep_stale
    log "starting a private dockerd in network namespace gantry-test-$$"
    if start_private_docker && { log "building $IMAGE"; build_test_image; }; then
        test_command_in_netns
        if ! step "cargo test (in network namespace $NETNS, dockerd at $DOCKER_SOCK)" "${TEST_CMD[@]}"; then
            printf '\n--- last lines of the test dockerd log:\n' >&2
            tail -n 30 "$TMPD/dockerd.log" >&2
        fi
        if [[ $ST_OK -eq 1 ]]; then
            schemathesis_command_in_netns
            step "schemathesis against the served OpenAPI document (in $NETNS)" "${ST_CMD[@]}"
        elif want_schemathesis; then
            warn "schemathesis is not installed: the OpenAPI conformance run did not happen"
        else
            warn "schemathesis run skipped (cargo test arguments given; GANTRY_TEST_SCHEMATHESIS=1 runs it)"
        fi
        if [[ $SE_OK -eq 1 ]]; then
            browser_command_in_netns
            if ! step "the dashboard in headless Chromium (in $NETNS)" "${BROWSER_CMD[@]}"; then
                tail -n 20 "$TMPD/browser/gantry.log" >&2
            fi
        elif ! want_browser; then
            warn "browser test skipped (cargo test arguments given; GANTRY_TEST_BROWSER=1 runs it)"
        fi
    else
        FAILED+=("private dockerd / test image")
    fi
    log "stopping the private dockerd"
    teardown
else
    if in_ci; then
        die "CI=true but dockerd is not available: the Docker-backed tests cannot run"
    fi
    printf '\n' >&2
    printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n' >&2
    printf '!!! Not root or no dockerd: the Docker-backed tests are listed as ignored below.   !!!\n' >&2
    printf '!!! Run as root on Debian 12 for the full suite.                                    !!!\n' >&2
    printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n' >&2
    step "cargo test (without Docker)" env -u GANTRY_TEST_DOCKER_HOST cargo test --locked --no-fail-fast "${CARGO_TEST_ARGS[@]}" || true
fi

# 6. The Debian package, installed into a fresh Debian root (host network: debootstrap and
#    cargo install may download, the first time)

if [[ $BUILD_OK -eq 1 ]] && want_deb; then
    if is_root; then
        step "Debian package: build, install into a fresh Debian root" bash "$REPO/scripts/test-deb.sh" || true
    elif in_ci; then
        FAILED+=("Debian package test (needs root)")
    else
        warn "not root: the Debian package test (chroot) skipped"
    fi
fi

# 7. Yocto and cross checks (the other scripts own them)

for s in check-yocto.sh cross-aarch64.sh; do
    if quick; then
        warn "GANTRY_TEST_QUICK=1: scripts/$s skipped"
    elif [[ -f "$REPO/scripts/$s" ]]; then
        step "scripts/$s" bash "$REPO/scripts/$s" || true
    else
        warn "scripts/$s not present; skipped"
    fi
done

if [[ ${#FAILED[@]} -gt 0 ]]; then
    printf '\ntest.sh: %d step(s) FAILED:\n' "${#FAILED[@]}" >&2
    printf '  - %s\n' "${FAILED[@]}" >&2
    exit 1
fi
printf '\ntest.sh: all steps passed\n' >&2
exit 0
