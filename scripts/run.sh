#!/usr/bin/env bash
# Run a DEADiff example workflow headless (no browser, no server) and save the picture:
#   bash scripts/run.sh --style ref.png --prompt "a lighthouse at dusk" --output out.png
#   bash scripts/run.sh --download --convert --style ref.png --prompt "..."   # fetch the weights first
#   bash scripts/run.sh --check                      # what is installed, what is missing, which models folder
#   bash scripts/run.sh --help                       # every option (batches, --jobs, --server)
# Builds or reuses the development environment (scripts/dev_env.sh), then runs deadiff_runner.cli in
# it. When this pack sits in a ComfyUI's custom_nodes, that ComfyUI (and its models/) is used unless
# COMFYUI_DIR says otherwise; elsewhere the pinned ComfyUI 0.3.75 from the cache runs, and the weights
# live in a folder no cache clean touches: $DEADIFF_MODELS_DIR, else ~/.local/share/comfyui-deadiff/models
# ($XDG_DATA_HOME), unless --models-dir or --base-directory says otherwise (deadiff_runner/models_home.py).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ -z "${COMFYUI_DIR:-}" ] && [ "$(basename "$(dirname "$repo")")" = "custom_nodes" ] \
        && [ -f "$repo/../../comfyui_version.py" ]; then
    COMFYUI_DIR="$(cd "$repo/../.." && pwd)"
    export COMFYUI_DIR
fi

env_lines="$(bash "$repo/scripts/dev_env.sh")"
COMFYUI_DIR="$(echo "$env_lines" | sed -n 's/^COMFYUI_DIR=//p')"
venv="$(echo "$env_lines" | sed -n 's/^VENV=//p')"
export COMFYUI_DIR
# the repository root, for deadiff_runner (the working directory stays the caller's, so relative
# --style / --output paths mean what they say)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$venv/bin/python" -m deadiff_runner.cli "$@"
