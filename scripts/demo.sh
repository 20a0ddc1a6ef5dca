#!/usr/bin/env bash
# Installs everything, then runs the demo: a vCenter simulator with populated disks, a local Ray,
# a full and an incremental backup, and restores proved byte-identical. Extra arguments go to
# `vmpump demo` (see `vmpump demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/vmpump demo "$@"
