#!/usr/bin/env bash
# The test command: build/reuse the environment (scripts/dev_env.sh), then run pytest inside a real
# ComfyUI. Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow" -k apply`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
env_lines="$(bash "$repo/scripts/dev_env.sh")"
export $(echo "$env_lines" | grep '^COMFYUI_DIR=')
venv="$(echo "$env_lines" | sed -n 's/^VENV=//p')"
cd "$repo"
set +e
"$venv/bin/python" -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: treating this as a failure" >&2
    exit 1
fi
exit "$status"
