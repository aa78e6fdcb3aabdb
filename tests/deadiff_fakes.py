"""Synthetic DEADiff checkpoints in the exact official key layout, at any (tiny) dimensions.

Written from docs/design.md §9 and the official key list (tests/data/deadiff_checkpoint_keys.tsv, the
layout the official code saves): the DEADiff parts are generated from their dimensions, the
frozen SD1.5 parts (UNet, VAE, text encoder, schedule buffers) keep their official names with tiny
placeholder tensors, since a loader must drop them anyway. `official_shapes(FULL_SIZE)` reproduces
the official key list and shapes exactly (a test checks it).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file

KEYS_TSV = Path(__file__).parent / "data" / "deadiff_checkpoint_keys.tsv"
SITES = [
    "input_blocks.1",
    "input_blocks.2",
    "input_blocks.4",
    "input_blocks.5",
    "input_blocks.7",
    "input_blocks.8",
    "middle_block",
    *[f"output_blocks.{i}" for i in range(3, 12)],
]
SITE_LEVEL = {
    "input_blocks.1": 0,
    "input_blocks.2": 0,
    "input_blocks.4": 1,
    "input_blocks.5": 1,
    "input_blocks.7": 2,
    "input_blocks.8": 2,
    "middle_block": 2,
    "output_blocks.3": 2,
    "output_blocks.4": 2,
    "output_blocks.5": 2,
    "output_blocks.6": 1,
    "output_blocks.7": 1,
    "output_blocks.8": 1,
    "output_blocks.9": 0,
    "output_blocks.10": 0,
    "output_blocks.11": 0,
}

SITE_NAME = {b: "middle_0" if b == "middle_block" else b.replace("_blocks.", "_") for b in SITES}

FULL_SIZE = dict(
    vision_width=1024,
    vision_layers=23,
    patch_size=14,
    image_size=224,
    qformer_hidden=768,
    qformer_layers=12,
    qformer_intermediate=3072,
    num_query_tokens=16,
    vocab_size=30523,
    max_positions=512,
    site_widths=None,
    model_channels=320,
    proj_intermediate=3072,
)


def site_prefix(block: str) -> str:
    inner = "middle_block.1" if block == "middle_block" else f"{block}.1"
    return f"model.diffusion_model.{inner}.transformer_blocks.0.attn2."


def official_table() -> list[tuple[str, tuple, str]]:
    rows = []
    for line in KEYS_TSV.read_text().splitlines()[1:]:
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(x) for x in shape.strip("[]").split(",") if x.strip()), dtype))
    return rows


def _fp16_in_official(key: str) -> bool:
    return ".visual_encoder." in key and (key.endswith("conv1.weight") or ".attn.out_proj." in key or ".mlp." in key)


def official_shapes(
    vision_width=64,
    vision_layers=2,
    patch_size=32,
    image_size=224,
    qformer_hidden=64,
    qformer_layers=2,
    qformer_intermediate=128,
    num_query_tokens=16,
    vocab_size=30523,
    max_positions=512,
    site_widths=None,
    model_channels=32,
    proj_intermediate=None,
):
    """key -> (shape, dtype) for a DEADiff checkpoint of these dimensions, in the official layout."""
    w, h, f = vision_width, qformer_hidden, qformer_intermediate
    proj_intermediate = proj_intermediate or 4 * h
    if site_widths is None:
        site_widths = {b: model_channels * (1, 2, 4)[SITE_LEVEL[b]] for b in SITES}
    else:  # keyed by LDM block ("input_blocks.1") or by site name ("input_1", "middle_0")
        site_widths = {b: site_widths.get(b, site_widths.get(SITE_NAME[b])) for b in SITES}
    grid = image_size // patch_size
    shapes = {}
    for branch in ("style", "content"):
        b = f"{branch}_blip."
        v = b + "visual_encoder."
        shapes.update(
            {
                v + "class_embedding": (w,),
                v + "conv1.weight": (w, 3, patch_size, patch_size),
                v + "ln_pre.bias": (w,),
                v + "ln_pre.weight": (w,),
                v + "positional_embedding": (grid * grid + 1, w),
            }
        )
        for i in range(vision_layers):
            r = f"{v}transformer.resblocks.{i}."
            shapes.update(
                {
                    r + "attn.in_proj_bias": (3 * w,),
                    r + "attn.in_proj_weight": (3 * w, w),
                    r + "attn.out_proj.bias": (w,),
                    r + "attn.out_proj.weight": (w, w),
                    r + "ln_1.bias": (w,),
                    r + "ln_1.weight": (w,),
                    r + "ln_2.bias": (w,),
                    r + "ln_2.weight": (w,),
                    r + "mlp.c_fc.bias": (4 * w,),
                    r + "mlp.c_fc.weight": (4 * w, w),
                    r + "mlp.c_proj.bias": (w,),
                    r + "mlp.c_proj.weight": (w, 4 * w),
                }
            )
        shapes.update(
            {
                b + "ln_vision.bias": (w,),
                b + "ln_vision.weight": (w,),
                b + "query_tokens": (1, num_query_tokens, h),
                b + "temp": (),
                b + "itm_head.bias": (2,),
                b + "itm_head.weight": (2, h),
                b + "text_proj.bias": (256,),
                b + "text_proj.weight": (256, h),
                b + "vision_proj.bias": (256,),
                b + "vision_proj.weight": (256, h),
            }
        )
        q = b + "Qformer."
        shapes.update(
            {
                q + "bert.embeddings.LayerNorm.bias": (h,),
                q + "bert.embeddings.LayerNorm.weight": (h,),
                q + "bert.embeddings.position_embeddings.weight": (max_positions, h),
                q + "bert.embeddings.position_ids": (1, max_positions),
                q + "bert.embeddings.word_embeddings.weight": (vocab_size, h),
                q + "cls.predictions.bias": (vocab_size,),
                q + "cls.predictions.decoder.bias": (vocab_size,),
                q + "cls.predictions.decoder.weight": (vocab_size, h),
                q + "cls.predictions.transform.LayerNorm.bias": (h,),
                q + "cls.predictions.transform.LayerNorm.weight": (h,),
                q + "cls.predictions.transform.dense.bias": (h,),
                q + "cls.predictions.transform.dense.weight": (h, h),
            }
        )
        for i in range(qformer_layers):
            layer = f"{q}bert.encoder.layer.{i}."
            for att, kv in (("attention", h), ("crossattention", w)):
                a = layer + att + "."
                shapes.update(
                    {
                        a + "output.LayerNorm.bias": (h,),
                        a + "output.LayerNorm.weight": (h,),
                        a + "output.dense.bias": (h,),
                        a + "output.dense.weight": (h, h),
                        a + "self.key.bias": (h,),
                        a + "self.key.weight": (h, kv),
                        a + "self.query.bias": (h,),
                        a + "self.query.weight": (h, h),
                        a + "self.value.bias": (h,),
                        a + "self.value.weight": (h, kv),
                    }
                )
            for s in ("", "_query"):
                shapes.update(
                    {
                        layer + f"intermediate{s}.dense.bias": (f,),
                        layer + f"intermediate{s}.dense.weight": (f, h),
                        layer + f"output{s}.LayerNorm.bias": (h,),
                        layer + f"output{s}.LayerNorm.weight": (h,),
                        layer + f"output{s}.dense.bias": (h,),
                        layer + f"output{s}.dense.weight": (h, f),
                    }
                )
        p = f"{branch}_proj_layer."
        shapes.update(
            {
                p + "LayerNorm.bias": (h,),
                p + "LayerNorm.weight": (h,),
                p + "dense1.bias": (proj_intermediate,),
                p + "dense1.weight": (proj_intermediate, h),
                p + "dense2.bias": (h,),
                p + "dense2.weight": (h, proj_intermediate),
            }
        )
    for block in SITES:
        for name in ("i_to_k", "i_to_v"):
            shapes[site_prefix(block) + f"{name}.weight"] = (site_widths[block], h)
    shapes["ctx_embeddings_cache"] = (1, num_query_tokens, h)
    result = {}
    for key, shape in shapes.items():
        dtype = "int64" if key.endswith("position_ids") else ("float16" if _fp16_in_official(key) else "float32")
        result[key] = (shape, dtype)
    return result


def make_official_state_dict(seed=0, identical_vision=True, frozen_parts=True, **dims) -> dict:
    """A complete checkpoint state_dict: DEADiff parts random (well scaled), frozen SD parts tiny."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, (shape, dtype) in official_shapes(**dims).items():
        if dtype == "int64":
            sd[key] = torch.arange(shape[-1]).reshape(shape)
            continue
        leaf = key.rsplit(".", 1)[-1]
        if "LayerNorm" in key or "ln_" in key or "layer_norm" in key:
            base = torch.ones(shape) if leaf == "weight" else torch.zeros(shape)
            t = base + 0.05 * torch.randn(shape, generator=gen)
        elif key.endswith(("query_tokens", "class_embedding", "positional_embedding", "embeddings.weight")):
            t = 0.5 * torch.randn(shape, generator=gen)
        elif leaf == "bias":
            t = 0.02 * torch.randn(shape, generator=gen)
        else:
            fan_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1) if len(shape) > 1 else 1
            t = torch.randn(shape, generator=gen) / fan_in**0.5
        sd[key] = t.to(getattr(torch, dtype))
    if not identical_vision:
        for key in list(sd):
            if key.startswith("content_blip.visual_encoder.") and sd[key].is_floating_point():
                sd[key] = (sd[key].float() + 0.05 * torch.randn(sd[key].shape, generator=gen)).to(sd[key].dtype)
    else:
        for key in list(sd):
            if key.startswith("content_blip.") and (".visual_encoder." in key or ".ln_vision." in key):
                sd[key] = sd[key.replace("content_blip.", "style_blip.", 1)].clone()
    if frozen_parts:
        sd.update(frozen_sd_placeholders())
    return sd


def frozen_sd_placeholders() -> dict:
    """The frozen SD1.5 UNet / VAE / text encoder / schedule entries of the official file, under their
    official names (the 32 i_to_* excluded), as one-element tensors."""
    return {
        key: torch.zeros(1, dtype=getattr(torch, dtype))
        for key, _, dtype in official_table()
        if not key.startswith(("style_", "content_", "ctx_")) and ".i_to_" not in key
    }


def as_module_state_dict(state_dict: dict) -> OrderedDict:
    """What `module.state_dict()` returns, as Lightning saves it: an OrderedDict with `_metadata`."""
    ordered = OrderedDict(state_dict)
    ordered._metadata = OrderedDict({"": {"version": 1}, "model": {"version": 1}})
    return ordered


def write_official_ckpt(path, state_dict: dict, extras: bool = True) -> Path:
    """A Lightning .ckpt: {"state_dict": OrderedDict with _metadata, "epoch", "global_step",
    "hyper_parameters" (a dict, as pytorch_lightning 2.x writes it), "optimizer_states" (tensors we must not
    read), ...}. tests/test_lightning_checkpoint.py writes one with pytorch_lightning itself."""
    path = Path(path)
    checkpoint = {"state_dict": as_module_state_dict(state_dict)}
    if extras:
        checkpoint.update(
            {
                "epoch": 3,
                "global_step": 12000,
                "pytorch-lightning_version": "1.9.0",
                "hyper_parameters": {"learning_rate": 1e-5, "config": {"target": "deadiff.DEADiff"}},
                "hparams_name": "kwargs",
                "optimizer_states": [
                    {
                        "state": {0: {"step": torch.tensor(12000.0), "exp_avg": torch.zeros(8)}},
                        "param_groups": [{"lr": 1e-5, "params": [0]}],
                    }
                ],
                "lr_schedulers": [],
                "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None}},
            }
        )
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)
    return path


def write_official_safetensors(path, state_dict: dict) -> Path:
    path = Path(path)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return path


def place(folder, name: str, seed: int = 0, **dims) -> str:
    """Write a synthetic DEADiff file named `name` (.ckpt or .safetensors) into `folder` once; return
    the name, as a loader combo expects it."""
    path = Path(folder) / name
    if not path.exists():
        sd = make_official_state_dict(seed=seed, **dims)
        (write_official_safetensors if name.endswith(".safetensors") else write_official_ckpt)(path, sd)
    return name
