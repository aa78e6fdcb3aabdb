"""Benchmark (a script, not a test): what combining DEADiff with another pack's attn2 patch costs.

Where another pack's cross-attention patch sits on a DEADiff site (IPAdapter_plus and the like),
DEADiff runs its own joint attention, the other patch, and ONE plain attention over the site's q, k,
v (to take the other patch's own plain attention out of the sum). This prints that extra cost, as a
ratio to DEADiff alone, every figure measured in the same run:

- attn2 replay: the 16 cross-attention calls of one step (cond + uncond, batch 2) with SD1.5's real
  shapes, through each variant's own patch objects: plain attention, DEADiff alone, the other patch
  alone (the test pack's IPAdapter_plus stand-in: 15 sites, its ("middle", 1) key never runs) and
  both combined. extra = combined - DEADiff alone - other alone: the one plain attention per site that
  combining adds to running both patches (expected: plain attention x 15/16). A fused implementation
  would also skip the other patch's own plain attention, which combining computes and cancels.
- step: the wall time of one model call in a real KSampler run (full-size SD1.5 UNet, random weights)
  for DEADiff alone and DEADiff + the other pack; noisy on a shared machine (+-5%), which is why the
  replay isolates the extra cost.

    python bench/bench_composition.py                 # CPU: 32x32 latent (256 px), about 3 min on 2 cores
    python bench/bench_composition.py --size 64       # 64x64 latent (512 px)
    python bench/bench_composition.py --no-steps      # the replay only (seconds)

On a CUDA machine it runs fp16 at 64x64 (512 px).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("DEADIFF_RUNNER_TEST_PACK", str(REPO / "tests" / "comfy_test_pack"))  # the stand-in's node
CACHE = Path(os.environ.get("DEADIFF_CACHE", Path.home() / ".cache" / "comfyui-deadiff"))
DIMS = dict(
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


def log(*parts) -> None:
    print(*parts, flush=True)


def comfyui_dir() -> Path:
    if os.environ.get("COMFYUI_DIR"):
        return Path(os.environ["COMFYUI_DIR"]).resolve()
    import importlib.util

    spec = importlib.util.spec_from_file_location("fetch_comfyui", REPO / "scripts" / "fetch_comfyui.py")
    fetch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch)
    return Path(fetch.fetch(str(CACHE / f"ComfyUI-{fetch.COMFYUI_VERSION}")))


def full_size_sd15(tiny_models, dtype):
    """SD1.5's UNet (ComfyUI's SD15 config: 768 context, 320 channels, 8 heads), random weights."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD15(tiny_models.sd15_unet_config(context_dim=768, model_channels=320))
    config.set_inference_dtype(
        dtype, mm.unet_manual_cast(dtype, mm.get_torch_device(), config.supported_inference_dtypes)
    )
    model = config.get_model({}, "", device=mm.unet_offload_device())
    tiny_models.init_parameters_(model, 0)
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def call(nodes, node_id, **inputs):
    cls = nodes[node_id]
    return getattr(cls(), cls.FUNCTION)(**inputs)


def site_inputs(size: int, device, dtype, batch: int = 2):
    """q, k, v of each SD1.5 site at a size x size latent, and the options ComfyUI hands the patch."""
    grids = {
        "input": {1: 1, 2: 1, 4: 2, 5: 2, 7: 4, 8: 4},
        "output": {3: 4, 4: 4, 5: 4, 6: 2, 7: 2, 8: 2, 9: 1, 10: 1, 11: 1},
        "middle": {0: 8},
    }
    widths = {1: 320, 2: 640, 4: 1280, 8: 1280}
    gen = torch.Generator().manual_seed(0)
    inputs = {}
    for kind, ids in grids.items():
        for number, down in ids.items():
            h = w = max(size // down, 1)
            c = widths[down]
            q, k, v = (torch.randn(batch, n, c, generator=gen).to(device, dtype) for n in (h * w, 77, 77))
            options = {
                "n_heads": 8,
                "dim_head": c // 8,
                "attn_precision": None,
                "cond_or_uncond": [0, 1],
                "sigmas": torch.full((batch,), 5.0, device=device),
                "block": (kind, number),
                "block_index": 0,
                "transformer_index": 0,
                "activations_shape": [batch, c, h, w],
                "original_shape": [batch, 4, size, size],
            }
            inputs[(kind, number)] = (q, k, v, options)
    return inputs


def replay(patches: dict, inputs: dict, sync) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for block, (q, k, v, options) in inputs.items():
            patches[block](q, k, v, options)
    sync()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=None, help="latent size (default 32 on CPU, 64 on CUDA)")
    parser.add_argument("--rounds", type=int, default=30, help="replay rounds (median)")
    parser.add_argument("--step-rounds", type=int, default=3, help="KSampler runs per variant (interleaved)")
    parser.add_argument("--steps", type=int, default=3, help="steps per KSampler run")
    parser.add_argument("--no-steps", action="store_true", help="skip the KSampler timing")
    args = parser.parse_args()

    from deadiff_runner.comfy_session import Session

    session = Session(comfyui_dir(), log_level=logging.ERROR)
    import comfy.model_management as mm
    import comfy.patcher_extension
    import comfy.sample
    from comfy.ldm.modules.attention import optimized_attention

    nodes = session.nodes.NODE_CLASS_MAPPINGS
    device = mm.get_torch_device()
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    size = args.size or (64 if cuda else 32)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    import importlib

    tiny_models = importlib.import_module(nodes["DEADiffTest_TinySD15"].__module__.rsplit(".", 1)[0] + ".tiny_models")
    log(
        f"device {device}, {dtype}, latent {size}x{size} ({size * 8} px), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )

    import deadiff_fakes

    folder = Path(tempfile.mkdtemp(prefix="deadiff-bench-composition-"))
    path = folder / "bench_composition.safetensors"
    deadiff_fakes.write_official_safetensors(path, deadiff_fakes.make_official_state_dict(seed=0, **DIMS))
    managed = sys.modules[nodes["DEADiffApply"].__module__.rsplit(".", 1)[0] + ".managed"]
    deadiff = managed.ManagedDEADiff.from_file(str(path))
    tokens = sys.modules[nodes["DEADiffApply"].__module__.rsplit(".", 2)[0] + ".deadiff_core.tokens"]
    style = tokens.DEADiffTokens("style", torch.randn(1, 16, 768), deadiff.fingerprint, source_name=deadiff.name)

    base = full_size_sd15(tiny_models, dtype)
    dd = call(
        nodes,
        "DEADiffApply",
        model=base,
        deadiff=deadiff,
        style_weight=1.0,
        content_weight=1.0,
        start_at=0.0,
        end_at=1.0,
        style=style,
    )[0]
    other = call(nodes, "DEADiffTest_IPAdapterStandIn", model=base, seed=1, weight=1.0, start_at=0.0, end_at=1.0)[0]
    both = call(nodes, "DEADiffTest_IPAdapterStandIn", model=dd, seed=1, weight=1.0, start_at=0.0, end_at=1.0)[0]

    # ---- attn2 replay through each variant's own patches (the composed ones as sampling resolves them)
    composition = sys.modules[nodes["DEADiffApply"].__module__.rsplit(".", 1)[0] + ".composition"]
    for patch_holder in (dd, other, both):
        mm.load_models_gpu([patch_holder])
        patch_holder.model_patches_to(device)
    inputs = site_inputs(size, device, dtype)

    def plain(q, k, v, options):
        return optimized_attention(q, k, v, options["n_heads"])

    def attn2(model):
        return model.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})

    def lookup(replace):  # what ComfyUI's transformer block runs at each site
        return {block: replace.get(block + (0,)) or replace.get(block) or plain for block in inputs}

    composer = both.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, composition.WRAPPER_KEY)[-1]
    variants = {
        "plain attention": {block: plain for block in inputs},
        "DEADiff alone": lookup(attn2(dd)),
        "other pack alone": lookup(attn2(other)),
        "DEADiff + other pack": lookup(
            composer.resolve(both.model_options["transformer_options"])["patches_replace"]["attn2"]
        ),
    }
    composed_sites = sum(type(p).__name__ == "ComposedSitePatch" for p in variants["DEADiff + other pack"].values())
    for patches in variants.values():
        replay(patches, inputs, sync)  # warm-up: K/V caches, kernels
    times = {label: [] for label in variants}
    for _ in range(args.rounds):
        for label, patches in variants.items():
            times[label].append(replay(patches, inputs, sync))
    med = {label: statistics.median(t) for label, t in times.items()}
    extra = med["DEADiff + other pack"] - med["DEADiff alone"] - med["other pack alone"]
    log(
        f"\nattn2 replay, 16 sites, batch 2 (median of {args.rounds}); "
        f"the other pack combined at {composed_sites} sites"
    )
    for label, t in med.items():
        log(f"  {label:<24} {t * 1e3:9.2f} ms   {t / med['DEADiff alone']:6.3f} x DEADiff alone")
    log(
        f"  extra cost of combining  {extra * 1e3:9.2f} ms   {extra / med['DEADiff alone']:6.3f} x DEADiff alone's "
        f"attn2 time (one plain attention at each of {composed_sites} sites: "
        f"{(med['plain attention'] * composed_sites / 16) * 1e3:.2f} ms expected)"
    )
    log(
        f"  (combined - DEADiff - the other pack's added term = "
        f"{(extra + med['plain attention'] * composed_sites / 16) * 1e3:.2f} ms: "
        "the extra plain attention and the other patch's own, which it cancels)"
    )

    if args.no_steps:
        return
    # ---- whole steps in a real KSampler run
    gen = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 77, 768, generator=gen), {}]]
    negative = [[torch.randn(1, 77, 768, generator=gen), {}]]
    latent = torch.zeros(1, 4, size, size)
    noise = torch.randn(latent.shape, generator=gen)
    step_times = {"DEADiff alone": [], "DEADiff + other pack": []}
    models = {"DEADiff alone": dd, "DEADiff + other pack": both}
    for model in models.values():  # warm-up
        comfy.sample.sample(
            model, noise, 1, CFG, "euler", "normal", positive, negative, latent, disable_pbar=True, seed=0
        )
    for _ in range(args.step_rounds):
        for label, model in models.items():
            start = time.perf_counter()
            comfy.sample.sample(
                model, noise, args.steps, CFG, "euler", "normal", positive, negative, latent, disable_pbar=True, seed=0
            )
            sync()
            step_times[label].append((time.perf_counter() - start) / args.steps)
    step = {label: statistics.median(t) for label, t in step_times.items()}
    log(f"\nKSampler step (cond + uncond), median of {args.step_rounds} runs x {args.steps} steps")
    for label, t in step.items():
        log(f"  {label:<24} {t * 1e3:9.1f} ms   {t / step['DEADiff alone']:6.3f} x DEADiff alone")
    log(
        f"  extra cost of combining (from the replay) = {extra / step['DEADiff alone'] * 100:.2f} % of a DEADiff step "
        "(the other pack's patch itself: "
        f"{(med['other pack alone'] - med['plain attention']) / step['DEADiff alone'] * 100:.2f} % "
        "over plain attention)"
    )


if __name__ == "__main__":
    main()
