"""DEADiffModel: the encoders (image -> style / content tokens) and the per-site projections.

Modules are built on the meta device and the file's tensors are assigned into them, so no memory is
spent on random initial weights: loading costs about what we keep.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from .checkpoint import COMPACT_FORMAT, first_non_finite, read_deadiff_tensors
from .config import DEADiffConfig
from .errors import DEADiffCheckpointError
from .load_report import COMPACT_BYTES_PER_VALUE, LoadReport
from .operations import use_operations
from .preprocess import DEFAULT_PAD_COLOR, SQUASH, normalize
from .projection import ProjLayer, SiteProjections
from .qformer import TEXT_IDS, QFormer
from .reference import Reference, prepare_reference
from .sites import BRANCHES
from .vision_tower import VisionTower


class DualEncoder(nn.Module):
    """Dual decoupling representation: one image, two Q-Formers, 16 style and 16 content tokens."""

    def __init__(self, c: DEADiffConfig, source: str = "DEADiff model"):
        super().__init__()
        self.config = c
        self.source = source  # the file, named in errors
        towers = ["shared"] if c.shared_vision else list(BRANCHES)
        self.vision = nn.ModuleDict({name: VisionTower(c) for name in towers})
        self.qformers = nn.ModuleDict({b: QFormer(c, b) for b in BRANCHES})
        self.projs = nn.ModuleDict({b: ProjLayer(c.qformer_hidden, c.proj_intermediate) for b in BRANCHES})

    def tower(self, branch: str) -> VisionTower:
        return self.vision["shared"] if "shared" in self.vision else self.vision[branch]

    def prepare(
        self,
        images: torch.Tensor,
        resize_mode: str = SQUASH,
        pad_color=DEFAULT_PAD_COLOR,
        reference_mask: torch.Tensor | None = None,
        device: torch.device | None = None,
    ) -> Reference:
        """The Reference these encoders read: pixels by resize_mode, token weights from the mask."""
        device = next(self.parameters()).device if device is None else device
        return prepare_reference(
            images.to(device), self.config.image_size, self.config.patch_size, resize_mode, pad_color, reference_mask
        )

    @torch.no_grad()
    def preview(
        self,
        images: torch.Tensor,
        resize_mode: str = SQUASH,
        pad_color=DEFAULT_PAD_COLOR,
        reference_mask: torch.Tensor | None = None,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """(B, S, S, 3) in 0..1: the picture the vision tower reads (before CLIP's normalization), the
        patches the Q-Former does not read dimmed (see deadiff_core.reference)."""
        return self.prepare(images, resize_mode, pad_color, reference_mask, device=device).preview()

    @torch.no_grad()
    def encode(
        self,
        images: torch.Tensor,
        branch: str,
        resize_mode: str = SQUASH,
        pad_color=DEFAULT_PAD_COLOR,
        reference_mask: torch.Tensor | None = None,
        progress=None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """(B, H, W, C) images in 0..1 -> (B, num_query_tokens, hidden) tokens of `branch`.

        resize_mode: squash (official), center crop or pad (with pad_color); reference_mask: (H, W) or
        (1 or B, H, W) in 0..1, which part of each image the Q-Former reads (deadiff_core.reference).
        progress(done, total) is called after each image; with it the images are encoded one at a time
        (each exactly as if it were encoded alone), without it all at once (as before; a batch's float
        rounding can differ from one-at-a-time by about 1e-6 relative).
        Computed on `device` in `dtype` (default: where the weights are, in their dtype). A host that
        keeps the weights elsewhere and brings them in layer by layer passes where to compute."""
        if branch not in BRANCHES:
            raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")
        param = next(self.parameters())
        device = param.device if device is None else device
        dtype = param.dtype if dtype is None else dtype
        reference = self.prepare(images, resize_mode, pad_color, reference_mask, device=device)
        if progress is None:
            return self._encode(reference, branch, dtype)
        parts = []
        for i in range(len(reference)):
            parts.append(self._encode(reference[i : i + 1], branch, dtype))
            progress(i + 1, len(reference))
        return torch.cat(parts)

    def _encode(self, reference: Reference, branch: str, dtype: torch.dtype) -> torch.Tensor:
        pixels = normalize(reference.pixels).to(dtype)
        image_tokens = self.tower(branch)(pixels)
        tokens = self.projs[branch](self.qformers[branch](image_tokens, reference.token_weights))
        if not torch.isfinite(tokens).all():
            bad = first_non_finite(self.named_parameters())
            if bad:
                raise DEADiffCheckpointError(
                    self.source,
                    f"weight {bad} (of the {branch} encoder) contains NaN or Inf values; the file is "
                    "corrupt: download deadiff_v1.ckpt again (Hugging Face qth/DEADiff)",
                )
            raise FloatingPointError(
                f"the {branch} tokens overflowed in {dtype}; try running the encoder "
                "in float32 (ComfyUI's --fp32-text-enc)"
            )
        return tokens

    def load_official(self, tensors: dict) -> None:
        for name, tower in self.vision.items():
            tower.load_official(tensors, "style_blip." if name in ("shared", "style") else "content_blip.")
        for branch in BRANCHES:
            self.qformers[branch].load_official(tensors, f"{branch}_blip.")
            p = f"{branch}_proj_layer."
            self.projs[branch].load_state_dict(
                {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}, strict=True, assign=True
            )


class DEADiffModel(nn.Module):
    def __init__(self, config: DEADiffConfig, source: str = "DEADiff model"):
        super().__init__()
        self.config = config
        self.fingerprint = ""  # identifies the weights (set by load_deadiff; saved tokens record it)
        self.load_report: LoadReport | None = None  # set by load_deadiff
        self.encoder = DualEncoder(config, source)
        self.site_projections = SiteProjections(config)


def _materialize_buffers(model: nn.Module) -> None:
    """Non-persistent buffers are not in the file; rebuild the ones left on the meta device."""
    for module_name, module in model.named_modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if not buf.is_meta:
                continue
            if name == "position_ids":
                value = torch.arange(buf.shape[-1]).expand(buf.shape).clone()
            elif name == "text_ids":
                branch = module_name.rsplit(".", 1)[-1]
                value = torch.tensor([TEXT_IDS[branch]])
            else:
                raise RuntimeError(f"cannot rebuild buffer {module_name}.{name} (new transformers version?)")
            module.register_buffer(name, value, persistent=False)


def build_model(
    tensors: dict,
    config: DEADiffConfig,
    dtype: torch.dtype = torch.float32,
    source: str = "DEADiff model",
    operations=None,
) -> DEADiffModel:
    """The model with `tensors` assigned into it; its layers are `operations`' (see operations.py)."""
    tensors = {k: v.to(dtype) for k, v in tensors.items()}
    with torch.device("meta"):
        model = use_operations(DEADiffModel(config, source), operations)
    model.encoder.load_official(tensors)
    model.site_projections.load_official(tensors)
    _materialize_buffers(model)
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise RuntimeError(f"parameters not loaded: {leftover[:5]}")
    return model.eval().requires_grad_(False)


def load_deadiff(path, dtype: torch.dtype = torch.float32, progress=None, operations=None) -> DEADiffModel:
    """Load the official .ckpt, its .safetensors, or our compact file; everything in `dtype`, on the CPU,
    in layers of `operations` (None: torch.nn).

    progress(done, total) is called after each tensor record read (done rises to total). The model's
    `load_report` (a LoadReport) says how long it took and, for a file that is not compact, how much
    faster the compact file would load."""
    start = time.perf_counter()
    bytes_read = 0

    def on_read(done, total, nbytes):
        nonlocal bytes_read
        bytes_read += nbytes
        if progress is not None:
            progress(done, total)

    tensors, config, metadata = read_deadiff_tensors(str(path), dtype, on_read=on_read)
    compact_bytes = COMPACT_BYTES_PER_VALUE * sum(t.numel() for t in tensors.values())
    try:
        model = build_model(tensors, config, dtype, source=str(path), operations=operations)
    except RuntimeError as e:
        raise DEADiffCheckpointError(path, f"the tensors do not fit the DEADiff modules: {e}") from e
    model.fingerprint = metadata["weights_fingerprint"]
    model.load_report = LoadReport(
        name=os.path.basename(str(path)),
        seconds=time.perf_counter() - start,
        file_bytes=os.path.getsize(path),
        bytes_read=bytes_read,
        compact_bytes=compact_bytes,
        is_compact=metadata.get("format") == COMPACT_FORMAT,
    )
    return model
