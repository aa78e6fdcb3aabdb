#!/usr/bin/env bash
# Build (or reuse) the development environment and print two lines: VENV=... and COMFYUI_DIR=...
#   - a virtualenv with the pinned torch/torchvision pair, this pack (editable, with its test extra)
#     and ComfyUI's own requirements;
#   - the pinned ComfyUI 0.3.75 source, unless COMFYUI_DIR already points at a ComfyUI checkout.
# Both live in a cache outside the clone ($DEADIFF_CACHE, default ~/.cache/comfyui-deadiff) and are
# reused while the files that define them are unchanged.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${DEADIFF_CACHE:-$HOME/.cache/comfyui-deadiff}"
venv="${DEADIFF_VENV:-$cache/venv}"
python="${PYTHON:-python3}"
mkdir -p "$cache"

if [ ! -x "$venv/bin/python" ]; then
    echo "creating virtualenv $venv" >&2
    "$python" -m venv "$venv"
fi
py="$venv/bin/python"

if [ -z "${COMFYUI_DIR:-}" ]; then
    COMFYUI_DIR="$("$py" "$repo/scripts/fetch_comfyui.py" "$cache/ComfyUI-0.3.75")"
fi
[ -f "$COMFYUI_DIR/comfyui_version.py" ] || { echo "COMFYUI_DIR=$COMFYUI_DIR is not a ComfyUI checkout" >&2; exit 2; }

# ComfyUI's requirements minus the torch family (pinned as a pair in requirements-dev.txt; torchaudio unused)
comfy_reqs="$cache/comfyui-requirements.txt"
grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFYUI_DIR/requirements.txt" > "$comfy_reqs"

stamp="$venv/.deadiff-stamp"
want="$(cat "$repo/pyproject.toml" "$repo/requirements.txt" "$repo/scripts/requirements-dev.txt" "$comfy_reqs" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing the development environment into $venv" >&2
    "$py" -m pip install --quiet --disable-pip-version-check \
        -r "$repo/scripts/requirements-dev.txt" -r "$comfy_reqs" -e "$repo[test]" >&2
    echo "$want" > "$stamp"
fi
echo "VENV=$venv"
echo "COMFYUI_DIR=$COMFYUI_DIR"
