#!/usr/bin/env bash
# Checks the Yocto layer without a Yocto build: the crate list is current and
# the recipe passes oelint-adv. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LAYER=yocto/meta-gantry
# The oldest release LAYERSERIES_COMPAT names: rules are judged against it.
RELEASE=wrynose

if ! command -v oelint-adv >/dev/null 2>&1; then
    echo "check-yocto: installing oelint-adv"
    python3 -m pip install --quiet --disable-pip-version-check oelint-adv
fi

status=0

echo "check-yocto: crate list (scripts/gen-crates-inc --check)"
if ! python3 scripts/gen-crates-inc --check; then
    status=1
fi

echo "check-yocto: oelint-adv $(oelint-adv --version 2>/dev/null | awk '{print $NF}') --release $RELEASE"
mapfile -t recipes < <(find "$LAYER" -name '*.bb' -o -name '*.bbappend' | sort)
# The layer's .oelint.cfg holds the few suppressions, each with its reason.
if ! OELINT_CONFIG="$LAYER/.oelint.cfg" oelint-adv --quiet --relpaths \
        --release "$RELEASE" "${recipes[@]}" "$LAYER/conf/layer.conf"; then
    status=1
fi

if [ "$status" -eq 0 ]; then
    echo "check-yocto: OK (${#recipes[@]} recipe(s), crate list current)"
else
    echo "check-yocto: FAILED" >&2
fi
exit "$status"
