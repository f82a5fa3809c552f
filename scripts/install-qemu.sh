#!/usr/bin/env bash
# Installs QEMU (Debian's qemu-system-x86) for `vgpu-migrate bench --what pipeline --peer qemu`,
# which migrates a QEMU guest beside our own stream. Nothing else needs it: tests and CI run
# without it. Idempotent: does nothing when qemu-system-x86_64 is already on PATH.
set -euo pipefail
if command -v qemu-system-x86_64 >/dev/null 2>&1; then
    echo "qemu-system-x86_64 is installed: $(qemu-system-x86_64 --version | head -n1)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: no apt-get here; install qemu-system-x86_64 with this system's package manager" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends qemu-system-x86
qemu-system-x86_64 --version | head -n1
