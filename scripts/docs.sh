#!/usr/bin/env bash
# Renders the API reference (the docstrings of the spacefs package) as HTML, into OUTDIR
# (default docs/api/, git-ignored): `bash scripts/docs.sh [OUTDIR]`, then open
# OUTDIR/index.html; `bash scripts/docs.sh --serve` serves it with live reload instead.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
modules=(spacefs spacefs.io spacefs.mount.client spacefs.engine.errors spacefs.engine.views spacefs.engine.runners
         spacefs.engine.types spacefs.torch_data spacefs.random_access)
if [ "${1:-}" = "--serve" ]; then
  exec .venv/bin/python -m pdoc --docformat google "${modules[@]}"
fi
out=${1:-docs/api}
rm -rf "$out"
.venv/bin/python -m pdoc --docformat google -o "$out" "${modules[@]}"
echo "API reference written to $(cd "$out" && pwd)/index.html"
