#!/usr/bin/env bash
# Builds the Debian package target/debian/gantry_<version>-1_<arch>.deb with cargo-deb
# (metadata in Cargo.toml, [package.metadata.deb]): the release binary, the unit, the config
# as a conffile, example configs, and the man pages and shell completions that the built
# binary generates from its clap definitions (no network, no separate tool).
# Installs the pinned cargo-deb when it is missing. Prints the package's path last.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_DEB_VERSION=3.8.0
if [[ "$(cargo deb --version 2>/dev/null)" != *"$CARGO_DEB_VERSION"* ]]; then
    echo "build-deb: cargo install cargo-deb $CARGO_DEB_VERSION" >&2
    cargo install --locked --quiet cargo-deb --version "$CARGO_DEB_VERSION"
fi

cargo build --release --locked

# cargo-deb maps the asset path target/release/ onto the real target directory; the
# generated assets are under target/deb-assets in the source tree either way.
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/release/gantry"
assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$bin" manpage --dir "$assets/man"
gzip -9n "$assets"/man/*.1
"$bin" completions bash >"$assets/completions/gantry"
"$bin" completions zsh >"$assets/completions/_gantry"
"$bin" completions fish >"$assets/completions/gantry.fish"

cargo deb --no-build --locked --quiet >/dev/null
deb=$(ls -t "$target_dir"/debian/gantry_*.deb | head -n 1)
dpkg-deb --info "$deb" | sed 's/^/build-deb: /' >&2
echo "$deb"
