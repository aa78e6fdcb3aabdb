"""deadiff-convert without installing the pack: run it by its path, from anywhere (e.g. ComfyUI's root).

    python custom_nodes/ComfyUI-DEADiff/scripts/convert.py models/deadiff/deadiff_v1.ckpt

ComfyUI does not put a custom node pack's folder on Python's import path, so `python -m
deadiff_core.convert` works only from the pack's own folder (or after `pip install -e .`); this file
adds the pack's folder itself and runs the same command (see deadiff_core/convert.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deadiff_core.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
