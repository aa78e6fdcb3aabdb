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
# a temporary folder of this run's own: pytest's default one is shared by every pytest run of the user
# and pruned to the newest three, which deletes the folders of a run still going when others start
basetemp="$(mktemp -d "${TMPDIR:-/tmp}/deadiff-pytest-XXXXXX")"
set +e
"$venv/bin/python" -m pytest --basetemp="$basetemp" "$@"
status=$?
set -e
if [ "$status" -eq 0 ]; then
    rm -rf "$basetemp"
else
    echo "pytest's temporary files are kept in $basetemp" >&2
fi
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: treating this as a failure" >&2
    exit 1
fi
exit "$status"
