#!/usr/bin/env bash
# Quick start: a virtualenv, wdr-pipe installed from this folder, and the demo end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e .
wdr-pipe demo --out demo-out "$@"
wdr-pipe store info demo-out/store
