#!/usr/bin/env bash
# Quick start: a virtualenv, wdr-pipe installed from this folder, and the demo end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh .venv
. .venv/bin/activate
wdr-pipe demo --out demo-out "$@"
wdr-pipe store info demo-out/store
