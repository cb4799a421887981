#!/usr/bin/env bash
# Prepare what a bare GPU machine needs to run scripts/gpu_check.sh from a copy of this
# checkout: the pure-Python packages its image may lack (hydra-core, omegaconf, antlr4,
# copied from this venv) and the data, compressed. Everything goes into .devcarry/, which
# is kept out of git (.git/info/exclude) and travels as one carried folder.
#   bash scripts/gpu_carry.sh        # then, on the GPU machine: bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p "$(dirname "$exclude")"
grep -qx '/.devcarry/' "$exclude" 2>/dev/null || echo '/.devcarry/' >> "$exclude"
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf .devcarry && mkdir -p .devcarry/pylib
for entry in hydra hydra_core-*.dist-info omegaconf omegaconf-*.dist-info antlr4 antlr4_python3_runtime-*.dist-info; do
  cp -r "$site"/$entry .devcarry/pylib/
done
find .devcarry -name __pycache__ -prune -exec rm -rf {} +
[ -d data/mnist ] && [ -d data/ptb ] || { echo "no data/: run 'source scripts/setup.sh' first" >&2; exit 1; }
tar czhf .devcarry/data.tgz data  # -h: data/ may be a link
# The copy there has no .git: record the commit (and whether tracked files differ from it)
# for the run summaries (ARDROP_GIT_COMMIT, read by callbacks/run_summary.py).
echo "$(git rev-parse HEAD)$([ -n "$(git status --porcelain --untracked-files=no)" ] && echo +dirty)" > .devcarry/git_commit
du -sh .devcarry/* | sed 's/^/  /'
echo "carry .devcarry; run: bash scripts/gpu_check.sh"
