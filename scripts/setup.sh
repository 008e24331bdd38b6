#!/usr/bin/env bash
# Installs everything spacefs needs on a fresh Debian machine (run as root):
# the FUSE packages pyfuse3 builds against, a .venv, pyfuse3 built with the project's patch
# (patches/README.md), and spacefs in editable mode with all extras.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null; then
  need=()
  for p in fuse3 libfuse3-dev pkg-config rsync patch; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}"
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
bash scripts/pyfuse3.sh .venv/bin/python
.venv/bin/python -m pip install -q -e ".[dev,hf,torch,tfds,examples]"
echo "spacefs installed in $(pwd)/.venv"
