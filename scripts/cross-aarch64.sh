#!/usr/bin/env bash
# Cross-builds gantry for aarch64 (64-bit ARM gateways), runs it under
# qemu-user and prints its stripped size.
#
# Exit codes: 0 built and ran, or the cross toolchain could not be installed
# (a loud warning says so: a missing toolchain is an environment problem, not
# a gantry bug); 1 the build failed or the binary did not run correctly.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu

toolchain_missing() {
    cat >&2 <<MSG

##########################################################################
##  WARNING: aarch64 cross build SKIPPED
##  $1
##  Needed: rustup target $TARGET, and the Debian packages
##  gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static.
##  Nothing was built or tested for aarch64.
##########################################################################

MSG
    exit 0
}

# --- toolchain -----------------------------------------------------------
command -v rustup >/dev/null 2>&1 || toolchain_missing "rustup not found: cannot add the $TARGET standard library."
if ! rustup target list --installed | grep -qx "$TARGET"; then
    echo "cross-aarch64: rustup target add $TARGET"
    rustup target add "$TARGET" || toolchain_missing "rustup target add $TARGET failed."
fi

missing=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu)
[ -e "$SYSROOT/lib/crt1.o" ] || missing+=(libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null 2>&1 || missing+=(qemu-user-static)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "cross-aarch64: installing ${missing[*]}"
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        toolchain_missing "Missing ${missing[*]} and cannot apt-get install here (not root or no apt)."
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
        || toolchain_missing "apt-get install ${missing[*]} failed."
fi

# --- build ---------------------------------------------------------------
# The linker driver and `-z pack-relative-relocs` come from .cargo/config.toml
# ([target.aarch64-unknown-linux-gnu]). GNU ld before 2.41 (Debian 12 has 2.40) ignores that
# flag on aarch64, so the final link uses rustc's own LLD through the gcc driver; only the
# binary's link changes (`cargo rustc` passes these to it alone), not the dependencies.
gcc_ld="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/gcc-ld"
link_args=()
if [ -x "$gcc_ld/ld.lld" ]; then
    link_args=(-C link-arg=-fuse-ld=lld -C "link-arg=-B$gcc_ld" -C link-arg=-Wl,-z,pack-relative-relocs)
else
    echo "cross-aarch64: WARNING: no rust-lld in $gcc_ld: linking with GNU ld (DT_RELR only with binutils >= 2.41)" >&2
fi
echo "cross-aarch64: cargo rustc --release --locked --target $TARGET --bin gantry -- ${link_args[*]}"
if ! cargo rustc --release --locked --target "$TARGET" --bin gantry -- "${link_args[@]}"; then
    echo "cross-aarch64: FAILED: the aarch64 build did not succeed" >&2
    exit 1
fi

target_dir=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/$TARGET/release/gantry"
version=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["package"]["version"])')

# --- run under qemu ------------------------------------------------------
echo "cross-aarch64: qemu-aarch64-static -L $SYSROOT $bin --version"
if ! out=$(qemu-aarch64-static -L "$SYSROOT" "$bin" --version 2>&1); then
    printf '%s\n' "$out" >&2
    echo "cross-aarch64: FAILED: the aarch64 binary did not run under qemu" >&2
    exit 1
fi
printf '%s\n' "$out"
if [ "$out" != "gantry $version" ]; then
    echo "cross-aarch64: FAILED: expected 'gantry $version', got '$out'" >&2
    exit 1
fi
file "$bin" 2>/dev/null | sed 's/^/cross-aarch64: /' || true
if readelf -d "$bin" | grep -q '(RELR)'; then
    echo "cross-aarch64: packed relative relocations (DT_RELR): yes"
else
    echo "cross-aarch64: WARNING: no DT_RELR in the binary (the linker ignored -z pack-relative-relocs)" >&2
fi

# --- size ----------------------------------------------------------------
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$bin" "$tmp/gantry"
aarch64-linux-gnu-strip "$tmp/gantry"
unstripped=$(stat -c %s "$bin")
stripped=$(stat -c %s "$tmp/gantry")
awk -v u="$unstripped" -v s="$stripped" 'BEGIN {
    printf "cross-aarch64: aarch64 release binary: %d bytes (%.2f MiB) unstripped\n", u, u / 1048576
    printf "cross-aarch64: aarch64 stripped size:  %d bytes (%.2f MiB)\n", s, s / 1048576
}'
echo "cross-aarch64: OK"
