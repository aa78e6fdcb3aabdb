#!/usr/bin/env bash
# The core tests (deadiff_core: checkpoint reading, encoders, tokens) against the OLDEST releases that
# requirements.txt allows, so its lower bounds stay true. torch is the pinned development one (the
# core's torch use is plain); transformers, safetensors and einops are at their lower bounds.
# A separate virtualenv in the cache, rebuilt when this file changes. Extra arguments go to pytest.
#   bash scripts/test_oldest_deps.sh
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${DEADIFF_CACHE:-$HOME/.cache/comfyui-deadiff}"
venv="${DEADIFF_OLDEST_VENV:-$cache/venv-oldest-deps}"
python="${PYTHON:-python3}"
# keep in step with requirements.txt / pyproject.toml (lower bounds) and requirements-dev.txt (torch)
oldest=(
    "transformers==4.50.0"
    "safetensors==0.4.3"
    "einops==0.7.0"
    "$(grep -E '^torch==' "$repo/scripts/requirements-dev.txt")"
    pytest hypothesis numpy pillow
)
mkdir -p "$cache"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.deadiff-oldest-stamp"
want="$(printf '%s\n' "${oldest[@]}" | cat - "$repo/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing the oldest allowed dependencies into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${oldest[@]}" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$repo" >&2
    echo "$want" > "$stamp"
fi
"$venv/bin/python" -c "import transformers, safetensors, einops, torch; print('oldest deps: transformers',
transformers.__version__, 'safetensors', safetensors.__version__, 'einops', einops.__version__, 'torch', torch.__version__)"
cd "$repo"
exec "$venv/bin/python" -m pytest tests/test_core_checkpoint.py tests/test_core_tokens.py \
    tests/test_core_encoders.py tests/test_core_preprocess_options.py tests/test_core_load_progress.py "$@"
