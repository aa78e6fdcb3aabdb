"""Tiny random models built from ComfyUI's own classes (test-only; never shipped in the real pack).

Everything here is what ComfyUI itself would build from a real checkpoint, only smaller and with
seeded random weights instead of loaded ones:

- SD1.5: `comfy.supported_models.SD15` config + `comfy.model_base.BaseModel` (eps, SD1.5 latent
  format) with the full SD1.5 UNet topology at `model_channels` 32 (16 attn2 sites, widths 32/64/128),
  a CLIP-L shaped text encoder through `comfy.sd1_clip` (ComfyUI's real SD1 tokenizer) wrapped in
  `comfy.sd.CLIP`, and a TAESD `comfy.sd.VAE`.
- SDXL: `comfy.supported_models.SDXL` + `comfy.model_base.SDXL` (adm), scaled down.
- ControlNet: `comfy.cldm.cldm.ControlNet` for the tiny SD1.5 UNet, in `comfy.controlnet.ControlNet`.
- LoRA: a kohya-format `.safetensors` for the tiny SD1.5 UNet.

ComfyUI's layers (`comfy.ops.disable_weight_init`, `manual_cast`) skip weight init and are created
with `torch.empty`, so every parameter is filled explicitly from a `torch.Generator` seeded with the
caller's seed: the same seed gives bit-identical weights on any device.
"""

from __future__ import annotations

import math
import threading

import torch

import comfy.cldm.cldm
import comfy.controlnet
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.taesd.taesd
import comfy.utils

WEIGHT_DTYPE = torch.float32  # tiny models: always fp32, so outputs are reproducible bit for bit

# Parameters set by ComfyUI's constructors to fixed values (not torch.empty); left as they are.
_CONSTRUCTED_PARAMS = {"logit_scale"}

_CACHE: dict = {}
_CACHE_LOCK = threading.RLock()


# --------------------------------------------------------------------------------------------------
# deterministic init
# --------------------------------------------------------------------------------------------------


def _is_norm(module: torch.nn.Module) -> bool:
    return isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) or "norm" in type(module).__name__.lower()


def init_parameters_(
    module: torch.nn.Module, seed: int, gain: float = 1.0, bias_std: float = 0.02, embedding_std: float = 1.0, skip=()
) -> torch.nn.Module:
    """Fill every parameter of `module` deterministically from `seed` (in place; returns `module`).

    Norm layers: weight 1, bias 0. Embeddings: N(0, embedding_std). Other weights (Linear, Conv):
    N(0, gain / sqrt(fan_in)), which keeps activations O(1). Biases: N(0, bias_std). The values are
    drawn on the CPU in float32 and copied, so they do not depend on the module's device or dtype.
    Parameters named in `skip` (full dotted names) are left for the caller to set. Raises if a
    parameter is of a kind this function does not know (so nothing stays uninitialized).
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    with torch.no_grad():
        for mname, m in module.named_modules():
            for pname, p in m.named_parameters(recurse=False):
                full = f"{mname}.{pname}" if mname else pname
                shape = tuple(p.shape)
                if pname in _CONSTRUCTED_PARAMS or full in skip:
                    continue
                if _is_norm(m):
                    if pname == "weight":
                        value = torch.ones(shape)
                    elif pname == "bias":
                        value = torch.zeros(shape)
                    else:
                        raise ValueError(f"unknown norm parameter {full}")
                elif isinstance(m, torch.nn.Embedding):
                    value = torch.randn(shape, generator=gen) * embedding_std
                elif pname == "bias":
                    value = torch.randn(shape, generator=gen) * bias_std
                elif p.ndim >= 2:
                    fan_in = math.prod(shape[1:])
                    value = torch.randn(shape, generator=gen) * (gain / math.sqrt(fan_in))
                else:
                    raise ValueError(f"don't know how to initialize parameter {full} {shape} of {type(m).__name__}")
                p.copy_(value.to(dtype=p.dtype))
    return module


def _cached(key, build):
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = build()
        return _CACHE[key]


def clear_cache():
    """Forget every cached tiny model (the next request builds fresh ones)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _check_dims(context_dim: int, model_channels: int):
    if model_channels < 32 or model_channels % 32:
        raise ValueError(f"model_channels must be a multiple of 32 (GroupNorm(32, ...)); got {model_channels}")
    if context_dim < 8 or context_dim % 8:
        raise ValueError(
            f"context_dim must be a multiple of 8 (split over the text encoder's heads); got {context_dim}"
        )


def _operations():
    return comfy.ops.pick_operations(WEIGHT_DTYPE, None)


# --------------------------------------------------------------------------------------------------
# SD1.5
# --------------------------------------------------------------------------------------------------


def sd15_unet_config(context_dim: int = 64, model_channels: int = 32) -> dict:
    """The unet_config ComfyUI's model detection produces for SD1.5, with small widths."""
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "in_channels": 4,
        "model_channels": model_channels,
        "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "channel_mult": [1, 2, 4, 4],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": False,
        "context_dim": context_dim,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }


def _model_patcher(model_config, seed: int) -> comfy.model_patcher.ModelPatcher:
    """What comfy.sd.load_state_dict_guess_config does after detection, minus loading weights."""
    model_config.set_inference_dtype(
        WEIGHT_DTYPE, mm.unet_manual_cast(WEIGHT_DTYPE, mm.get_torch_device(), model_config.supported_inference_dtypes)
    )
    model = model_config.get_model({}, "", device=mm.unet_offload_device())
    init_parameters_(model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def build_sd15_model(
    seed: int = 0, context_dim: int = 64, model_channels: int = 32
) -> comfy.model_patcher.ModelPatcher:
    """A fresh (uncached) tiny SD1.5 MODEL."""
    _check_dims(context_dim, model_channels)
    model_config = comfy.supported_models.SD15(sd15_unet_config(context_dim, model_channels))
    return _model_patcher(model_config, seed)


def clip_text_config(context_dim: int = 64) -> dict:
    """CLIP-L text config (ComfyUI's sd1_clip_config.json) scaled down to hidden size `context_dim`."""
    return {
        "hidden_size": context_dim,
        "intermediate_size": 2 * context_dim,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "projection_dim": context_dim,
    }


def build_sd15_clip(seed: int = 0, context_dim: int = 64) -> comfy.sd.CLIP:
    """A fresh tiny CLIP-L (ComfyUI's SD1 tokenizer + sd1_clip model) wrapped in comfy.sd.CLIP."""
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    # SD1ClipModel names its model "clip_l"; SDClipModel merges model_options["clip_l_model_config"]
    # over the JSON config it reads, which is how the width is shrunk without a config file.
    model_options = {"dtype": WEIGHT_DTYPE, "clip_l_model_config": clip_text_config(context_dim)}
    clip = comfy.sd.CLIP(target, model_options=model_options)
    init_parameters_(clip.cond_stage_model, seed + 1, embedding_std=1.0)
    return clip


def taesd_state_dict(seed: int = 0, latent_channels: int = 4) -> dict:
    """A random TAESD state dict in the layout nodes.VAELoader.load_taesd builds for "taesd"."""
    taesd = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
    init_parameters_(taesd, seed, skip=("vae_scale", "vae_shift"))
    # Random convs through a dozen ReLU blocks give outputs of arbitrary scale (a decoded image would
    # be all 0 or 1). Calibrate the last conv of each half on a fixed probe, data-dependent-init style:
    # encoder output ~ N(0, 1) per channel (raw latents ~ N(0, 1/0.18215) like SD's VAE) and decoder
    # output (the image) ~ 0.5 +- 0.2 per channel. The decoder probe spans small latents (VAE-encoded)
    # to huge ones: a random UNet does not denoise, so sampled latents stay about sigma_max-sized
    # and reach the decoder through its tanh clamp at about +-3.
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + 7)
    with torch.no_grad():
        probe_image = image_from_seed(int(seed) + 7, 64, 64, 2, 3).movedim(-1, 1)
        _calibrate_last_conv(taesd.taesd_encoder, probe_image, mean=0.0, std=1.0)
        scales = torch.tensor([0.5, 1.0, 4.0, 16.0]).view(-1, 1, 1, 1)
        probe_latent = torch.randn((4, latent_channels, 8, 8), generator=gen) * scales
        _calibrate_last_conv(taesd.taesd_decoder, probe_latent, mean=0.5, std=0.2)
    sd = {k: v.detach().clone() for k, v in taesd.state_dict().items()}
    sd["vae_scale"] = torch.tensor(0.18215)
    sd["vae_shift"] = torch.tensor(0.0)
    return sd


def _calibrate_last_conv(seq: torch.nn.Sequential, probe: torch.Tensor, mean: float, std: float):
    last = seq[-1]
    out = seq(probe.to(last.weight.dtype))
    cur_mean = out.mean(dim=(0, 2, 3))
    cur_std = out.std(dim=(0, 2, 3)).clamp_min(1e-6)
    factor = std / cur_std
    last.weight.mul_(factor.view(-1, 1, 1, 1))
    last.bias.copy_((last.bias - cur_mean) * factor + mean)


def build_sd15_vae(seed: int = 0) -> comfy.sd.VAE:
    """A fresh tiny VAE: comfy.sd.VAE detecting a (random) TAESD state dict."""
    return comfy.sd.VAE(sd=taesd_state_dict(seed + 2), dtype=WEIGHT_DTYPE)


def tiny_sd15(seed: int = 0, context_dim: int = 64, model_channels: int = 32):
    """(MODEL, CLIP, VAE) for the tiny SD1.5, built once per (seed, dims) and shared.

    Callers that hand them to a graph should clone MODEL and CLIP (the node does)."""
    key = ("sd15", int(seed), int(context_dim), int(model_channels))
    return _cached(
        key,
        lambda: (
            build_sd15_model(seed, context_dim, model_channels),
            build_sd15_clip(seed, context_dim),
            build_sd15_vae(seed),
        ),
    )


# --------------------------------------------------------------------------------------------------
# SDXL
# --------------------------------------------------------------------------------------------------


def sdxl_unet_config(context_dim: int = 64, model_channels: int = 32) -> dict:
    """SDXL's unet_config (model_detection's SDXL dict) scaled down: 3 levels, transformer depth
    [0, 0, 1, 1, 2, 2] / middle 2, linear projections, adm = pooled (context_dim) + 6 * 256."""
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "num_classes": "sequential",
        "adm_in_channels": context_dim + 6 * 256,
        "in_channels": 4,
        "model_channels": model_channels,
        "num_res_blocks": [2, 2, 2],
        "transformer_depth": [0, 0, 1, 1, 2, 2],
        "channel_mult": [1, 2, 4],
        "transformer_depth_middle": 2,
        "use_linear_in_transformer": True,
        "context_dim": context_dim,
        "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2],
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }


def build_sdxl_model(
    seed: int = 0, context_dim: int = 64, model_channels: int = 32
) -> comfy.model_patcher.ModelPatcher:
    """A fresh tiny SDXL MODEL (model_config is comfy.supported_models.SDXL, model is model_base.SDXL)."""
    _check_dims(context_dim, model_channels)
    model_config = comfy.supported_models.SDXL(sdxl_unet_config(context_dim, model_channels))
    # SDXL's own num_head_channels (64) is wider than the tiny levels; keep 4 heads at the first
    # attention level instead.
    model_config.unet_config["num_head_channels"] = model_channels // 2
    return _model_patcher(model_config, seed)


def tiny_sdxl(seed: int = 0, context_dim: int = 64, model_channels: int = 32) -> comfy.model_patcher.ModelPatcher:
    key = ("sdxl", int(seed), int(context_dim), int(model_channels))
    return _cached(key, lambda: build_sdxl_model(seed, context_dim, model_channels))


# --------------------------------------------------------------------------------------------------
# ControlNet
# --------------------------------------------------------------------------------------------------


def build_controlnet(seed: int = 0, context_dim: int = 64, model_channels: int = 32) -> comfy.controlnet.ControlNet:
    """A fresh tiny ControlNet for the tiny SD1.5 UNet, set up the way
    comfy.controlnet.load_controlnet_state_dict sets up an LDM-format one. The zero convs are random
    (not zero), so the control visibly changes the UNet output."""
    _check_dims(context_dim, model_channels)
    config = comfy.supported_models.SD15(sd15_unet_config(context_dim, model_channels)).unet_config
    config.pop("out_channels")
    config.update(hint_channels=3, operations=_operations(), dtype=WEIGHT_DTYPE, device=mm.unet_offload_device())
    control_model = comfy.cldm.cldm.ControlNet(**config)
    init_parameters_(control_model, seed + 3)
    control_model.eval()
    return comfy.controlnet.ControlNet(
        control_model,
        load_device=mm.get_torch_device(),
        manual_cast_dtype=mm.unet_manual_cast(WEIGHT_DTYPE, mm.get_torch_device()),
    )


def tiny_controlnet(seed: int = 0, context_dim: int = 64, model_channels: int = 32) -> comfy.controlnet.ControlNet:
    key = ("controlnet", int(seed), int(context_dim), int(model_channels))
    return _cached(key, lambda: build_controlnet(seed, context_dim, model_channels))


# --------------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------------

ATTN2_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_CONV = "down_blocks.0.resnets.0.conv1"  # = input_blocks.1.0.in_layers.2, a 3x3 conv


def tiny_lora_state_dict(
    seed: int = 0, context_dim: int = 64, model_channels: int = 32, rank: int = 4, strength_scale: float = 0.5
) -> dict:
    """Kohya-format LoRA tensors for the tiny SD1.5 UNet.

    Targets every attn2 to_q/to_k/to_v/to_out.0 (16 sites) and one 3x3 conv (`LORA_CONV`), keyed
    `lora_unet_<diffusers name with _>.lora_down.weight` / `.lora_up.weight` / `.alpha`. alpha = rank,
    lora_down ~ N(0, 1/fan_in), lora_up ~ N(0, strength_scale^2/rank): at strength 1 each patched
    layer's output moves by about `strength_scale` times the size of its original output."""
    _check_dims(context_dim, model_channels)
    config = comfy.supported_models.SD15(sd15_unet_config(context_dim, model_channels)).unet_config
    diffusers_map = comfy.utils.unet_to_diffusers(config)  # diffusers name -> LDM name
    shapes = {k: tuple(v.shape) for k, v in _unet_weight_shapes(context_dim, model_channels).items()}
    targets = sorted(
        k[: -len(".weight")]
        for k in diffusers_map
        if k.endswith(".weight")
        and ".attn2." in k
        and k[: -len(".weight")].rsplit(".attn2.", 1)[1] in ATTN2_PROJECTIONS
    )
    targets.append(LORA_CONV)
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + 1000)
    out = {}
    for name in targets:
        ldm = diffusers_map[name + ".weight"]
        shape = shapes[ldm]
        out_features, in_shape = shape[0], shape[1:]
        fan_in = math.prod(in_shape)
        down = torch.randn((rank, *in_shape), generator=gen) / math.sqrt(fan_in)
        up = torch.randn((out_features, rank) + (1,) * (len(shape) - 2), generator=gen) * (
            strength_scale / math.sqrt(rank)
        )
        key = "lora_unet_" + name.replace(".", "_")
        out[f"{key}.lora_down.weight"] = down.contiguous()
        out[f"{key}.lora_up.weight"] = up.contiguous()
        out[f"{key}.alpha"] = torch.tensor(float(rank))
    return out


def _unet_weight_shapes(context_dim: int, model_channels: int) -> dict:
    """LDM key -> parameter (shape only; built on the meta device, no memory, no init)."""
    config = comfy.supported_models.SD15(sd15_unet_config(context_dim, model_channels)).unet_config
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        unet = UNetModel(**config, operations=comfy.ops.disable_weight_init)
    return dict(unet.state_dict())


def write_tiny_lora(
    path, seed: int = 0, context_dim: int = 64, model_channels: int = 32, rank: int = 4, strength_scale: float = 0.5
) -> str:
    """Write `tiny_lora_state_dict(...)` to `path` (.safetensors) and return the path as a string.

    Put it in ComfyUI's `models/loras` to load it with the core LoraLoader/LoraLoaderModelOnly."""
    comfy.utils.save_torch_file(
        tiny_lora_state_dict(seed, context_dim, model_channels, rank, strength_scale),
        str(path),
        metadata={"ss_network_module": "networks.lora", "deadiff_test": "tiny random lora"},
    )
    return str(path)


# --------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------


def image_from_seed(
    seed: int = 0, width: int = 64, height: int = 64, batch_size: int = 1, channels: int = 3
) -> torch.Tensor:
    """A smooth random image batch in [0, 1], ComfyUI layout (B, H, W, C), float32 on the CPU."""
    if channels not in (1, 3, 4):
        raise ValueError(f"channels must be 1, 3 or 4; got {channels}")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    grid = torch.rand((batch_size, channels, max(2, height // 16), max(2, width // 16)), generator=gen)
    image = torch.nn.functional.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
    return image.clamp(0.0, 1.0).movedim(1, -1).contiguous()
