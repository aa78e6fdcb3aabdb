#!/usr/bin/env bash
# Lint and format check of the whole tree with ruff (configuration: [tool.ruff] in pyproject.toml).
# ruff comes from the development environment (scripts/dev_env.sh, pinned in scripts/requirements-dev.txt).
#   bash scripts/lint.sh          # check only: exits non-zero on a finding or a file that needs formatting
#   bash scripts/lint.sh --fix    # apply ruff's safe fixes and format the tree in place
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$repo/scripts/dev_env.sh" | sed -n 's/^VENV=//p')"
ruff="$venv/bin/ruff"
cd "$repo"
if [ "${1:-}" = "--fix" ]; then
    "$ruff" check --fix .
    "$ruff" format .
    exit 0
fi
status=0
echo "== ruff check"
"$ruff" check . || status=1
echo "== ruff format --check"
"$ruff" format --check --output-format concise . || status=1  # ruff format --diff . shows the changes
exit "$status"
