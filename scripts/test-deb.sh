#!/usr/bin/env bash
# Installs gantry's Debian package into a fresh Debian 12 root (debootstrap minbase, cached as
# a tarball under ~/.cache/gantry-test) and checks it there, in a chroot: `dpkg -i`, the unit
# enabled but not started, `gantry --version`, `gantry check-config` on the shipped config,
# the man pages and completions in place, then `dpkg --purge`. Run as root.
#   scripts/test-deb.sh [PATH.deb]   (default: scripts/build-deb.sh builds it)
# Exit status: 0 when every check passed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[[ "$(id -u)" -eq 0 ]] || { echo "test-deb: needs root (chroot)" >&2; exit 1; }
deb=${1:-$(bash scripts/build-deb.sh)}
cache="${GANTRY_TEST_VENV_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gantry-test}/debian-bookworm-minbase.tar"

tmp=$(mktemp -d /tmp/gantry-deb.XXXXXX)
cleanup() {
    # Nothing may stay mounted or running in the root before it is removed.
    for m in proc dev; do umount -l "$tmp/root/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT

fail() {
    echo "test-deb: FAILED: $*" >&2
    exit 1
}

if [[ ! -s "$cache" ]]; then
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
    echo "test-deb: debootstrap --variant=minbase bookworm (cached in $cache)" >&2
    debootstrap --variant=minbase bookworm "$tmp/root" http://deb.debian.org/debian >"$tmp/debootstrap.log" 2>&1 ||
        { tail -n 20 "$tmp/debootstrap.log" >&2; fail "debootstrap"; }
    mkdir -p "$(dirname "$cache")"
    tar -C "$tmp/root" -cf "$cache.part" . && mv "$cache.part" "$cache"
    rm -rf --one-file-system "$tmp/root"
fi
mkdir -p "$tmp/root"
tar -C "$tmp/root" -xf "$cache"
mount -t proc proc "$tmp/root/proc"
cp "$deb" "$tmp/root/tmp/gantry.deb"

in_root() { chroot "$tmp/root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

echo "test-deb: dpkg -i $(basename "$deb")" >&2
in_root dpkg -i /tmp/gantry.deb || fail "dpkg -i"
version=$(in_root gantry --version) || fail "gantry --version"
[[ "$version" == "gantry $(dpkg-deb -f "$deb" Version | cut -d- -f1)" ]] || fail "gantry --version said '$version'"
in_root gantry check-config >"$tmp/check-config.out" || { cat "$tmp/check-config.out" >&2; fail "gantry check-config"; }
grep -q "configuration OK" "$tmp/check-config.out" || fail "check-config: $(cat "$tmp/check-config.out")"
grep -q "/etc/gantry/gantry.toml" "$tmp/root/var/lib/dpkg/info/gantry.conffiles" || fail "the config is not a conffile"
[[ -L "$tmp/root/etc/systemd/system/multi-user.target.wants/gantry.service" ]] || fail "the unit is not enabled"
[[ -f "$tmp/root/lib/systemd/system/gantry.service" || -f "$tmp/root/usr/lib/systemd/system/gantry.service" ]] || fail "no unit file"
for f in usr/share/man/man1/gantry.1.gz usr/share/man/man1/gantry-app-import.1.gz \
    usr/share/bash-completion/completions/gantry usr/share/zsh/vendor-completions/_gantry \
    usr/share/fish/vendor_completions.d/gantry.fish usr/share/doc/gantry/examples/gantry-guest.toml.example; do
    [[ -s "$tmp/root/$f" ]] || fail "/$f is missing"
done
# Not started: no process runs from the root.
for p in /proc/[0-9]*; do
    if [[ "$(readlink "$p/root" 2>/dev/null)" == "$tmp/root" ]]; then
        fail "a process runs in the root after install: $(tr '\0' ' ' <"$p/cmdline")"
    fi
done
in_root gantry completions bash | grep -q _gantry || fail "gantry completions"
in_root dpkg --purge gantry >/dev/null || fail "dpkg --purge"
[[ ! -e "$tmp/root/usr/bin/gantry" && ! -e "$tmp/root/etc/systemd/system/multi-user.target.wants/gantry.service" ]] ||
    fail "purge left gantry behind"
echo "test-deb: OK ($version; $(du -h "$deb" | cut -f1) package)" >&2
