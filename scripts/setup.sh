#!/usr/bin/env bash
# Installs what the project needs on a fresh machine: the rustfmt and clippy components
# (present on the machines here; added through rustup where missing).
set -euo pipefail
for comp in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^${comp}"; then
        rustup component add "$comp" || echo "warning: could not add $comp" >&2
    fi
done
