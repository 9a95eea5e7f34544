#!/usr/bin/env bash
# Move the pinned versions forward: install the newest releases the ranges in pyproject.toml
# admit into a new virtualenv, run the whole suite there, and only if it passes rewrite
# constraints.txt with what was installed. Review the diff of constraints.txt, then commit it.
#
#   scripts/update_constraints.sh            # torch stays at the version below
#   TORCH=2.14.1 scripts/update_constraints.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=${TORCH:-2.13.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
# shellcheck disable=SC1091
source "$work/venv/bin/activate"
pip install -q -U pip
pip install -q "torch==$TORCH"
pip install -q -U -e ".[data,test]"
python -P -m pytest -q
{
  echo "# Exact versions the whole test suite passed with (python $(python -c 'import platform; print(platform.python_version())'), torch $TORCH)."
  echo "# Used by the README's install command and .ci/run: pip install -c constraints.txt ..."
  echo "# torch is left out (install your own CUDA or CPU build first). Regenerate with"
  echo "# scripts/update_constraints.sh, never by hand."
  pip freeze --all --exclude-editable | grep -v -i -E '^(pip|torch|nvidia-[a-z0-9-]+|dsm-engine)==' | LC_ALL=C sort -f
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt updated; review: git diff constraints.txt"
