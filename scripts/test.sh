#!/usr/bin/env bash
# The test command: build/reuse the environment (scripts/dev_env.sh), then run pytest inside a real
# ComfyUI. Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow" -k apply`.
# Which ComfyUI: the pinned 0.3.75 by default, COMFYUI_DIR=/path/to/ComfyUI (a checkout) or
# COMFYUI_ARCHIVE=/path/to/ComfyUI-x.y.z.tar.gz (unpacked into the cache); COMFYUI_FRONTEND=REQUIREMENT
# serves another comfyui-frontend-package to the front-end tests (see scripts/dev_env.sh).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
env_lines="$(bash "$repo/scripts/dev_env.sh")"
export COMFYUI_DIR="$(echo "$env_lines" | sed -n 's/^COMFYUI_DIR=//p')"
venv="$(echo "$env_lines" | sed -n 's/^VENV=//p')"
front_end_root="$(echo "$env_lines" | sed -n 's/^FRONT_END_ROOT=//p')"
if [ -n "$front_end_root" ]; then
    export DEADIFF_FRONT_END_ROOT="$front_end_root"
fi
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
