#!/usr/bin/env bash
# Runs the whole test suite (FUSE, Ray, DuckDB, HF, TFDS and torch tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
