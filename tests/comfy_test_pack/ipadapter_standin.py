"""A stand-in for IPAdapter_plus's attn2 patch, written from how that pack behaves (test only).

What it does, as IPAdapter_plus does it for SD1.5 (read from its public behaviour, not copied):

- One patch object per site, registered in the MODEL's transformer_options["patches_replace"]["attn2"]
  under TWO-part keys: ("input", id) for the 6 input sites, ("output", id) for the 9 output sites and
  ("middle", 1) for the middle block (a key ComfyUI never looks up: it names that block ("middle", 0)).
- Registering copies the transformer_options / patches_replace / attn2 dicts; when a key already
  holds a patch, the node does not replace it but calls `.add(callback, **kwargs)` on that very
  object (so a second IPAdapter on the same chain changes the object the first one made).
- The patch computes plain attention over the site's q, k, v and adds, for every entry whose sigma
  window holds the current sigma (sigmas[0]), the entry's callback: weight * attention(q, to_k_ip(E),
  to_v_ip(E)) with its own per-site projections and its cond tokens E for cond chunks, uncond tokens
  for uncond chunks (cond_or_uncond).
- It has `.to(device)` (returns itself) and no `models()`.

Options beyond that, for tests: `key_form` "three-part" registers under (block, id, 0) the same way
(another pack using ComfyUI's set_model_attn2_replace, or IPAdapter_plus's SDXL keys); `sites`
limits it to some sites; `manage_weights` gives the patch a `models()` returning a ModelPatcher of
its projections, as packs whose weights load with the UNet do.
"""

from __future__ import annotations

import torch

import comfy.model_management as mm
import comfy.model_patcher
from comfy.ldm.modules.attention import optimized_attention

CATEGORY = "DEADiff/testing"
INPUT_IDS = (1, 2, 4, 5, 7, 8)
OUTPUT_IDS = (3, 4, 5, 6, 7, 8, 9, 10, 11)
TOKENS = 4
_NO_SIGMA = 999999999.9


def site_order():
    """(ComfyUI block, name, LDM block) of the 16 SD1.5 sites in IPAdapter's numbering order."""
    sites = [(("input", i), f"input_{i}", f"input_blocks.{i}") for i in INPUT_IDS]
    sites += [(("output", i), f"output_{i}", f"output_blocks.{i}") for i in OUTPUT_IDS]
    return sites + [(("middle", 1), "middle_0", "middle_block")]


def site_widths(model) -> dict:
    """LDM block -> (attn2 inner width, context width) of a ComfyUI SD1.5 MODEL."""
    unet = model.model.diffusion_model
    widths = {}
    for _, _, ldm in site_order():
        attn2 = unet.get_submodule(f"{ldm}.1.transformer_blocks.0.attn2")
        widths[ldm] = (attn2.to_k.out_features, attn2.to_k.in_features)
    return widths


def standin_weights(seed: int, widths: dict) -> dict:
    """The stand-in's random weights: per LDM block (to_k_ip, to_v_ip) and the cond / uncond tokens,
    (1, TOKENS, context width). Deterministic in `seed` (drawn on the CPU in float32)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    context = next(iter(widths.values()))[1]
    weights = {
        "cond": torch.randn(1, TOKENS, context, generator=gen),
        "uncond": torch.randn(1, TOKENS, context, generator=gen),
    }
    for _, _, ldm in site_order():
        inner, ctx = widths[ldm]
        weights[ldm] = tuple(torch.randn(inner, ctx, generator=gen) / ctx**0.5 for _ in range(2))
    return weights


class StandInProjections(torch.nn.Module):
    """Per-site to_k_ip / to_v_ip, keyed like IPAdapter's "1_to_k_ip", "3_to_k_ip", ... in site order."""

    def __init__(self, weights: dict):
        super().__init__()
        self.to_kvs = torch.nn.ModuleDict()
        for number, (_, _, ldm) in enumerate(site_order()):
            for name, w in zip(("k", "v"), weights[ldm]):
                layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
                layer.weight.data.copy_(w)
                self.to_kvs[f"{number * 2 + 1}_to_{name}_ip"] = layer


def standin_attention(
    out, q, k, v, extra_options, module_key="", projections=None, weight=1.0, cond=None, uncond=None, **_
):
    """One entry's added term: weight * attention(q, to_k_ip(E), to_v_ip(E)), E per chunk."""
    cond_or_uncond = extra_options["cond_or_uncond"]
    per_chunk = q.shape[0] // len(cond_or_uncond)
    to_k, to_v = projections.to_kvs[module_key + "_to_k_ip"], projections.to_kvs[module_key + "_to_v_ip"]
    tokens = [(cond, uncond)[c].to(device=q.device, dtype=q.dtype) for c in cond_or_uncond]
    dtype = to_k.weight.dtype
    ip_k = torch.cat([to_k(t.to(dtype)).repeat(per_chunk, 1, 1) for t in tokens]).to(q.dtype)
    ip_v = torch.cat([to_v(t.to(dtype)).repeat(per_chunk, 1, 1) for t in tokens]).to(q.dtype)
    return optimized_attention(q, ip_k, ip_v, extra_options["n_heads"]) * weight


class StandInAttn2Replace:
    """The per-site patch: plain attention plus every entry active at this sigma."""

    def __init__(self, callback=None, **kwargs):
        self.callbacks = [callback]
        self.kwargs = [kwargs]

    def add(self, callback, **kwargs):
        self.callbacks.append(callback)
        self.kwargs.append(kwargs)

    def __call__(self, q, k, v, extra_options):
        dtype = q.dtype
        out = optimized_attention(q, k, v, extra_options["n_heads"])
        sigma = float(extra_options["sigmas"].detach().cpu()[0]) if "sigmas" in extra_options else _NO_SIGMA
        for callback, kwargs in zip(self.callbacks, self.kwargs):
            if kwargs["sigma_end"] <= sigma <= kwargs["sigma_start"]:
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out.to(dtype=dtype)

    def to(self, device, *args, **kwargs):
        return self


class StandInWithModels(StandInAttn2Replace):
    """The same patch, with a `models()` that hands ComfyUI the projections' ModelPatcher."""

    def models(self):
        return [kwargs["patcher"] for kwargs in self.kwargs]


def register(model, patch_kwargs: dict, key: tuple, patch_class) -> None:
    """Put the patch under `key`, or `.add` to the one already there, as IPAdapter_plus does."""
    options = model.model_options["transformer_options"].copy()
    options["patches_replace"] = dict(options.get("patches_replace", {}))
    options["patches_replace"]["attn2"] = dict(options["patches_replace"].get("attn2", {}))
    attn2 = options["patches_replace"]["attn2"]
    if key not in attn2:
        attn2[key] = patch_class(standin_attention, **patch_kwargs)
        model.model_options["transformer_options"] = options
    else:
        attn2[key].add(standin_attention, **patch_kwargs)


class DEADiffTest_IPAdapterStandIn:
    DESCRIPTION = (
        "Test only. Applies a stand-in of IPAdapter_plus's SD1.5 attn2 patch (random per-site to_k_ip / "
        "to_v_ip and image tokens from the seed), registered the way that pack registers it."
    )
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The MODEL with the stand-in's patches.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A tiny SD1.5 MODEL."}),
                "seed": (
                    "INT",
                    {"default": 0, "min": 0, "max": 0xFFFFFFFF, "tooltip": "Seed of its weights and tokens."},
                ),
                "weight": ("FLOAT", {"default": 1.0, "min": -5.0, "max": 5.0, "step": 0.05, "tooltip": "Its weight."}),
                "start_at": (
                    "FLOAT",
                    {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Start, 0..1."},
                ),
                "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "End, 0..1."}),
            },
            "optional": {
                "key_form": (
                    ["two-part", "three-part"],
                    {
                        "tooltip": "two-part: IPAdapter_plus's SD1.5 keys; three-part: "
                        "(block, id, 0), the key DEADiff uses."
                    },
                ),
                "sites": (
                    "STRING",
                    {
                        "default": "all",
                        "tooltip": "all, or site names (input_1, middle_0, output_9) "
                        "separated by commas: patch only those.",
                    },
                ),
                "manage_weights": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Give the patch a models() that hands ComfyUI a ModelPatcher of its projections.",
                    },
                ),
            },
        }

    def apply(self, model, seed, weight, start_at, end_at, key_form="two-part", sites="all", manage_weights=False):
        wanted = None if sites.strip() == "all" else {s.strip() for s in sites.split(",") if s.strip()}
        model = model.clone()
        weights = standin_weights(seed, site_widths(model))
        projections = StandInProjections(weights)
        sampling = model.get_model_object("model_sampling")
        kwargs = {
            "projections": projections,
            "weight": float(weight),
            "cond": weights["cond"],
            "uncond": weights["uncond"],
            "sigma_start": float(sampling.percent_to_sigma(start_at)),
            "sigma_end": float(sampling.percent_to_sigma(end_at)),
        }
        patch_class = StandInAttn2Replace
        if manage_weights:
            kwargs["patcher"] = comfy.model_patcher.ModelPatcher(
                projections, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
            )
            patch_class = StandInWithModels
        for number, (block, name, _) in enumerate(site_order()):
            if wanted is not None and name not in wanted:
                continue
            key = block + (0,) if key_form == "three-part" else block
            register(model, dict(kwargs, module_key=str(number * 2 + 1)), key, patch_class)
        return (model,)


NODE_CLASS_MAPPINGS = {"DEADiffTest_IPAdapterStandIn": DEADiffTest_IPAdapterStandIn}
NODE_DISPLAY_NAME_MAPPINGS = {"DEADiffTest_IPAdapterStandIn": "IPAdapter Stand-In (DEADiff test)"}
