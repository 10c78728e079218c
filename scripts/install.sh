#!/usr/bin/env bash
# The one install recipe: a virtualenv at VENV (made if missing) with wdr-pipe installed from this folder.
# usage: bash scripts/install.sh VENV [EXTRAS]     e.g. bash scripts/install.sh .ci-venv test
# torch and torchvision are pinned here, not in the package metadata: pip on this project's machines is capped
# at torch<=2.14.1 / torchvision<=0.29.1, whose wheels lie on local disk (elsewhere pip downloads them).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:?usage: bash scripts/install.sh VENV [EXTRAS]}
extras=${2:-}
[ -d "$venv" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
"$venv/bin/python" -m pip install -q -e ".${extras:+[$extras]}"
