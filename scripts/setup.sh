#!/usr/bin/env bash
# Installs what the project needs on a fresh machine: the rustfmt and clippy components
# (present on the machines here; added through rustup where missing).
set -euo pipefail
for comp in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^${comp}"; then
        rustup component add "$comp" || echo "warning: could not add $comp" >&2
    fi
done

# cargo-fuzz (scripts/fuzz.sh, CI's short fuzz runs), pinned, from crates.io.
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# iproute2 (`ip netns`, `ip link`, `tc netem`) for the two-hosts test and script.
if ! command -v ip >/dev/null 2>&1 || ! command -v tc >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null \
            || echo "warning: could not install iproute2" >&2
    else
        echo "warning: iproute2 is missing; the two-hosts test will skip" >&2
    fi
fi
