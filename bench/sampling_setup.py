"""bench_sampling's setup: ComfyUI booted in-process, the full-size SD1.5 UNet with random weights, a DEADiff
file with random weights, the pack's nodes, the floor patch and the patched variants that are measured.

Imported first by bench/bench_sampling.py: it puts the repository and tests/ on sys.path.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("TQDM_DISABLE", "1")

CACHE = Path(os.environ.get("DEADIFF_CACHE", Path.home() / ".cache" / "comfyui-deadiff"))
# Small encoder, full-width projections: the sampling path only sees the 32 i_to_* (768 -> site width).
SAMPLING_DIMS = dict(
    vision_width=64,
    vision_layers=1,
    patch_size=32,
    image_size=224,
    qformer_hidden=768,
    qformer_layers=1,
    qformer_intermediate=256,
    num_query_tokens=16,
    model_channels=320,
    proj_intermediate=256,
)
CFG = 7.5
WINDOWS = {"window 0.0-0.5": (0.0, 0.5), "window 0.3-0.8": (0.3, 0.8)}


def log(*parts) -> None:
    print(*parts, flush=True)


def pct(x: float) -> str:
    """A ratio minus 1 as a signed percentage: 0.023 -> +2.3%."""
    return f"{100 * x:+.1f}%"


def comfyui_dir() -> Path:
    if os.environ.get("COMFYUI_DIR"):
        return Path(os.environ["COMFYUI_DIR"]).resolve()
    spec = importlib.util.spec_from_file_location("fetch_comfyui", REPO / "scripts" / "fetch_comfyui.py")
    fetch_comfyui = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch_comfyui)
    return Path(fetch_comfyui.fetch(str(CACHE / f"ComfyUI-{fetch_comfyui.COMFYUI_VERSION}")))


def boot(cpu: bool):
    """ComfyUI in this process with the pack loaded by ComfyUI's own loader (deadiff_runner's Session)."""
    from deadiff_runner.comfy_session import Session

    return Session(comfyui_dir(), cpu=cpu, only_deadiff_nodes=True, log_level=logging.ERROR)


def tiny_models():
    """tests/comfy_test_pack/tiny_models.py: SD1.5 built from ComfyUI's classes, seeded init (reused, not copied)."""
    spec = importlib.util.spec_from_file_location(
        "deadiff_bench_tiny_models", REPO / "tests" / "comfy_test_pack" / "tiny_models.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def full_size_sd15(dtype, seed: int = 0):
    """The real SD1.5 UNet (ComfyUI's SD15 config: 768 context, 320 channels, 8 heads) with random weights,
    in `dtype`, as comfy.sd.load_state_dict_guess_config would build it for a real checkpoint."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    tm = tiny_models()
    model_config = comfy.supported_models.SD15(tm.sd15_unet_config(context_dim=768, model_channels=320))
    model_config.set_inference_dtype(
        dtype, mm.unet_manual_cast(dtype, mm.get_torch_device(), model_config.supported_inference_dtypes)
    )
    model = model_config.get_model({}, "", device=mm.unet_offload_device())
    tm.init_parameters_(model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def fake_deadiff(folder: Path, dims: dict, name: str):
    """A DEADiff file with random weights in the official layout, loaded through the pack's ManagedDEADiff."""
    import deadiff_fakes

    path = folder / name
    deadiff_fakes.write_official_safetensors(path, deadiff_fakes.make_official_state_dict(seed=0, **dims))
    return path


class Pack:
    """The pack's nodes and modules as ComfyUI loaded them (never a second import)."""

    def __init__(self, session):
        self.nodes = session.nodes.NODE_CLASS_MAPPINGS
        self.apply_module = sys.modules[self.nodes["DEADiffApply"].__module__]
        self.root = self.apply_module.__name__.rsplit(".", 2)[0]  # the pack's package name
        self.managed = sys.modules[f"{self.root}.nodes.managed"]
        self.patch_module = sys.modules[f"{self.root}.nodes.attention_patch"]
        self.tokens = sys.modules[f"{self.root}.deadiff_core.tokens"]

    def load(self, path):
        return self.managed.ManagedDEADiff.from_file(str(path))

    def style(self, deadiff, image):
        """Style tokens from the encoder node; random tokens if random full-size weights overflow in fp16
        (sampling only needs tokens of the right shape)."""
        try:
            return self.nodes["DEADiffStyleEncoder"].execute(deadiff, image)[0]
        except FloatingPointError as e:
            log(f"(encoder: {e}; random style tokens used for sampling)")
            tokens = torch.randn(image.shape[0], deadiff.config.num_query_tokens, deadiff.config.context_dim)
            return self.tokens.DEADiffTokens("style", tokens, deadiff.fingerprint, source_name=deadiff.name)

    def apply(self, model, deadiff, start_at=0.0, end_at=1.0, **optional):
        return self.nodes["DEADiffApply"].execute(model, deadiff, 1.0, 1.0, start_at, end_at, **optional)[0]


# ------------------------------------------------------------------------------- the floor patch
class FloorPatch:
    """The unavoidable cost: append `extra` precomputed zero keys/values (one cat each) and call ComfyUI's
    optimized_attention. Records the first (q, k, v, extra_options) it sees per site and batch, for replay."""

    def __init__(self, extra: int, record: dict | None = None):
        self.extra = extra
        self.record = record
        self._zeros = {}

    def __deepcopy__(self, memo):
        return self

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        if self.record is not None:
            key = (tuple(extra_options["block"]), tuple(q.shape))
            self.record.setdefault(key, (q, k, v, dict(extra_options)))
        zkey = (k.shape[0], k.shape[2], k.device, k.dtype)
        zeros = self._zeros.get(zkey)
        if zeros is None:
            zeros = self._zeros[zkey] = torch.zeros(k.shape[0], self.extra, k.shape[2], device=k.device, dtype=k.dtype)
        return optimized_attention(
            q,
            torch.cat([k, zeros], dim=1),
            torch.cat([v, zeros], dim=1),
            extra_options["n_heads"],
            attn_precision=extra_options.get("attn_precision"),
            transformer_options=extra_options,
        )


def with_floor(model, extra: int, record: dict | None = None):
    from deadiff_core.sites import SITES

    patched = model.clone()
    patch = FloorPatch(extra, record)
    for site in SITES:
        patched.set_model_attn2_replace(patch, site.comfy_block[0], site.comfy_block[1], 0)
    return patched


def attn2_patches(model) -> dict:
    """(block name, number) -> the attn2 replace patch ComfyUI will call there (empty: unpatched)."""
    replace = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    return {key[:2]: patch for key, patch in replace.items()}


def sample(model, size: int, steps: int, conds, seed: int = 0, batch: int = 1):
    import comfy.sample

    positive, negative = conds
    latent = torch.zeros(batch, 4, size, size)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(
        model, noise, steps, CFG, "euler", "normal", positive, negative, latent, disable_pbar=True, seed=seed
    )


def make_conds(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return ([[torch.randn(1, 77, 768, generator=gen), {}]], [[torch.randn(1, 77, 768, generator=gen), {}]])


def half_mask(size: int):
    mask = torch.zeros(1, size * 8, size * 8)
    mask[..., : size * 4] = 1.0
    return mask


def build_variants(pack: Pack, base, deadiff, style_a, style_b, size: int, record: dict | None = None):
    """label -> patched MODEL, in the order measured. The 16-key floor records the attn2 inputs it sees."""
    mask = half_mask(size)
    variants = {
        "unpatched": base,
        "floor (16 zero keys)": with_floor(base, 16, record),
        "floor (32 zero keys)": with_floor(base, 32),
        "DEADiff style (official)": pack.apply(base, deadiff, style=style_a),
        "DEADiff style + attn_mask": pack.apply(base, deadiff, style=style_a, attn_mask=mask),
        "two Apply nodes": pack.apply(pack.apply(base, deadiff, style=style_a), deadiff, style=style_b),
        "two Apply + two masks": pack.apply(
            pack.apply(base, deadiff, style=style_a, attn_mask=mask), deadiff, style=style_b, attn_mask=1.0 - mask
        ),
    }
    for label, (start, end) in WINDOWS.items():
        variants[label] = pack.apply(base, deadiff, start_at=start, end_at=end, style=style_a)
    return variants


def window_sigmas(model, start: float, end: float) -> dict:
    """A sigma inside and one outside the start/end window."""
    sampling = model.get_model_object("model_sampling")
    inside = (start + end) / 2
    outside = end + (1 - end) / 2 if end < 1 else start / 2
    return {
        "in window": float(sampling.percent_to_sigma(inside)),
        "out of window": float(sampling.percent_to_sigma(outside)),
    }


def encoder_bytes_full_size() -> tuple[int, int]:
    """fp16 bytes of the DEADiff encoders (one shared vision tower, two Q-Formers, two ProjLayers) and of the
    32 projections, for the official dimensions (built on the meta device: no memory used)."""
    import deadiff_fakes
    from deadiff_core.config import infer_config
    from deadiff_core.model import DEADiffModel

    shapes = {k: shape for k, (shape, _) in deadiff_fakes.official_shapes(**deadiff_fakes.FULL_SIZE).items()}
    config = infer_config(shapes, shared_vision=True)
    with torch.device("meta"):
        model = DEADiffModel(config)
    encoder = sum(p.numel() for p in model.encoder.parameters()) * 2
    projections = sum(p.numel() for p in model.site_projections.parameters()) * 2
    towers = len(model.encoder.vision)
    return encoder, projections, towers
