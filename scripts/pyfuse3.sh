#!/usr/bin/env bash
# Installs pyfuse3 built from its sdist with patches/pyfuse3-<version>-kernel-caps.patch
# (why: patches/README.md) into the Python given as $1 (default .venv/bin/python).
# Does nothing when that pyfuse3 is already installed. If the patch does not apply, says
# so and installs the stock release: the mount works, paths through symlinks are slow,
# and tests/test_mount_kernelcache.py fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
VERSION=3.5.0
PATCH=$(pwd)/patches/pyfuse3-$VERSION-kernel-caps.patch

if "$PY" -c "import sys, pyfuse3
sys.exit(pyfuse3.__version__ != '$VERSION' or not hasattr(pyfuse3, 'READ_GATHER_MAX'))" 2>/dev/null; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download -q --no-deps --no-binary :all: "pyfuse3==$VERSION" -d "$work"
tar xzf "$work/pyfuse3-$VERSION.tar.gz" -C "$work"
src="$work/pyfuse3-$VERSION"
if patch -d "$src" -p1 --forward --batch --quiet < "$PATCH"; then
  rm -f "$src/src/pyfuse3/__init__.c"  # generated from the unpatched .pyx: Cython makes it again
  echo "building pyfuse3 $VERSION with $(basename "$PATCH") (about a minute)"
  "$PY" -m pip install -q --no-deps --force-reinstall "$src"
else
  echo "scripts/pyfuse3.sh: $(basename "$PATCH") does not apply to pyfuse3 $VERSION;" \
       "installing it unpatched (the kernel will not cache symlink targets)" >&2
  "$PY" -m pip install -q --no-deps "pyfuse3==$VERSION"
fi
