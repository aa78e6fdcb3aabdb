"""DEADiff's disentangled conditioning as ComfyUI attn2 replace patches, one per site.

ComfyUI calls a replace patch with q, k, v already projected by the site's own to_q/to_k/to_v and
applies to_out afterwards; the patch only has to attend. Ours appends the image keys/values of every
Apply node in the chain (text first, then each contribution's tokens) and runs ONE softmax through
ComfyUI's optimized attention.

Patches are immutable once registered: newer ComfyUI versions share patch objects between model
clones, and `deepcopy` returns the same object. What they cache (image K/V per device and dtype,
assembled batches, resized masks) is derived data that any clone may reuse.

Another pack's attn2 patch at the same site is combined with ours when sampling starts
(nodes/composition.py); one that sat under the very key DEADiff takes is kept here as `displaced`,
so that it still loads and moves with the model and can be combined.

Per-latent inputs follow the latents of the call when sampling runs on context windows
(nodes/latent_window.py).
"""

from __future__ import annotations

from typing import Optional

import torch

from comfy.ldm.modules.attention import optimized_attention, optimized_attention_masked

from ..deadiff_core.masks import resize_to_grid
from ..deadiff_core.attention import disentangled_attention, image_key_bias, image_keys_values
from ..deadiff_core.sites import Site
from ..deadiff_core.routing import Routing
from .latent_window import latent_window, per_latent

_CACHE_LIMIT = 32
_NO_WINDOW_START = 999999999.0


class Contribution:
    """One Apply node's contribution at every site: tokens per branch (for the conditional and the
    unconditional pass), weights, routing, window, mask."""

    def __init__(
        self,
        deadiff,
        tokens: dict,
        negative: dict,
        weights: dict,
        routing: Routing,
        sigma_start: float,
        sigma_end: float,
        mask: Optional[torch.Tensor],
    ):
        self.deadiff = deadiff
        self.tokens = tokens  # branch -> (items, N, width) tensor, or None: zero tokens
        self.negative = negative  # the same for the unconditional pass (None: zero tokens, official)
        self.weights = weights  # branch -> float
        self.routing = routing
        self.sigma_start = sigma_start  # active while sigma_end <= sigma <= sigma_start
        self.sigma_end = sigma_end
        self.mask = mask  # (masks, H, W) in 0..1, or None
        self.windowed = sigma_start < _NO_WINDOW_START or sigma_end > 0.0
        self._kv = {}  # (site name, unconditional, device, dtype) -> (keys, values)
        self._masks = {}  # (height, width, device, dtype) -> resized mask
        self._sigmas_seen = None
        self._active_now = True

    def token_count(self, site: Site) -> int:
        """How many keys this contribution adds at `site` (0 where routing turns it off)."""
        route = self.routing.route(site)
        if route is None:
            return 0
        tokens = self.tokens.get(route.branch)
        return self.deadiff.config.num_query_tokens if tokens is None else tokens.shape[1]

    def active(self, sigmas: torch.Tensor) -> bool:
        """Inside the start/end window? One host read per sampling step (the same `sigmas` tensor
        reaches all 16 sites), and none at all without a window."""
        if not self.windowed:
            return True
        if sigmas is not self._sigmas_seen:
            self._sigmas_seen = sigmas
            sigma = float(sigmas.max())
            self._active_now = self.sigma_end <= sigma <= self.sigma_start
        return self._active_now

    def kv(self, site: Site, unconditional: bool, device: torch.device, dtype: torch.dtype):
        """(items, N, width) keys and values of this contribution's tokens at `site`, computed once."""
        key = (site.name, unconditional, device, dtype)
        if key not in self._kv:
            route = self.routing.route(site)
            tokens = (self.negative if unconditional else self.tokens).get(route.branch)
            i_to_k, i_to_v = self.deadiff.model.site_projections.layers(site.name)
            if tokens is None:  # zero tokens, and bias-free projections of zeros are zeros
                shape = (1, self.token_count(site), i_to_k.out_features)
                k = v = torch.zeros(shape, device=device, dtype=dtype)
            else:
                k, v = image_keys_values(
                    tokens.to(device=device, dtype=dtype), i_to_k, i_to_v, self.weights[route.branch] * route.scale
                )
            self._kv[key] = (k, v)
        return self._kv[key]

    def drop_cache_except(self, device: torch.device) -> None:
        self._kv = {k: v for k, v in self._kv.items() if k[2] == device}
        self._masks = {k: v for k, v in self._masks.items() if k[2] == device}

    def query_mask(self, height: int, width: int, device: torch.device, dtype: torch.dtype):
        """The mask resized to one site's grid, (masks, height * width)."""
        key = (height, width, device, dtype)
        if key not in self._masks:
            self._masks[key] = resize_to_grid(self.mask.to(device), height, width).to(dtype)
        return self._masks[key]


class DEADiffSitePatch:
    """The attn2 replace patch of one site; holds every contribution of the model chain, in order, and the
    other pack's patch that sat under DEADiff's key at this site before DEADiff replaced it, if any."""

    def __init__(self, site: Site, contributions: tuple, displaced=None):
        self.site = site
        self.contributions = tuple(contributions)
        self.displaced = displaced
        self._present = tuple(i for i, inj in enumerate(self.contributions) if inj.token_count(site))
        self._assembled = {}

    def with_contribution(self, contribution: Contribution) -> "DEADiffSitePatch":
        return DEADiffSitePatch(self.site, self.contributions + (contribution,), self.displaced)

    def displacing(self, patch) -> "DEADiffSitePatch":
        """The same contributions, registered again over `patch` (another pack's, now under our key)."""
        return DEADiffSitePatch(self.site, self.contributions, patch)

    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        """ComfyUI moves patches with the model; cached tensors on other devices are released."""
        if isinstance(device_or_dtype, torch.device):
            for contribution in self.contributions:
                contribution.drop_cache_except(device_or_dtype)
            self._assembled = {k: v for k, v in self._assembled.items() if k[-2] == device_or_dtype}
        if hasattr(self.displaced, "to"):  # ComfyUI no longer sees it in the model's patches: move it for it
            self.displaced = self.displaced.to(device_or_dtype)
        return self

    def models(self) -> list:
        """The per-site projections load and offload with the UNet (and a displaced patch's models too)."""
        patchers = []
        for contribution in self.contributions:
            if contribution.deadiff.site_projections_patcher not in patchers:
                patchers.append(contribution.deadiff.site_projections_patcher)
        if hasattr(self.displaced, "models"):
            patchers += [m for m in self.displaced.models() if m not in patchers]
        return patchers

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        kwargs = {"attn_precision": extra_options.get("attn_precision"), "transformer_options": extra_options}
        sigmas = extra_options.get("sigmas")
        active = tuple(i for i in self._present if sigmas is None or self.contributions[i].active(sigmas))
        if not active:
            return optimized_attention(q, k, v, heads, **kwargs)
        cond_or_uncond = tuple(extra_options.get("cond_or_uncond") or (0,))
        window = latent_window(extra_options, q.shape[0] // len(cond_or_uncond))
        k_image, v_image = self._image_kv(active, cond_or_uncond, window, q)
        mask = self._mask_bias(active, cond_or_uncond, window, extra_options, k.shape[1], q)
        attention = optimized_attention if mask is None else optimized_attention_masked
        return disentangled_attention(q, k, v, k_image, v_image, heads, mask=mask, attention=attention, **kwargs)

    def _remember(self, key, value):
        if len(self._assembled) >= _CACHE_LIMIT:
            self._assembled.clear()
        self._assembled[key] = value
        return value

    def _image_kv(self, active, cond_or_uncond, window, q):
        """Image K/V for the whole batch: each chunk gets its contributions' tokens when it is a cond
        chunk (0) and their negative tokens (zero tokens unless a negative reference is set) when it
        is the unconditional one (1). Contributions routed off at this site add nothing."""
        key = ("kv", active, cond_or_uncond, window, q.shape[0], q.device, q.dtype)
        if key in self._assembled:
            return self._assembled[key]
        chunk = q.shape[0] // len(cond_or_uncond)
        keys, values = [], []
        for index in active:
            per_chunk = [self.contributions[index].kv(self.site, c == 1, q.device, q.dtype) for c in cond_or_uncond]
            keys.append(torch.cat([per_latent(k, chunk, "tokens", window) for k, _ in per_chunk]))
            values.append(torch.cat([per_latent(v, chunk, "tokens", window) for _, v in per_chunk]))
        return self._remember(key, (torch.cat(keys, dim=1), torch.cat(values, dim=1)))

    def _mask_bias(self, active, cond_or_uncond, window, extra_options, text_tokens, q):
        """Additive bias keeping each masked contribution's tokens (cond and negative alike) inside its mask."""
        if all(self.contributions[i].mask is None for i in active):
            return None
        _, _, height, width = extra_options["activations_shape"]
        key = ("mask", active, cond_or_uncond, window, q.shape[0], height, width, text_tokens, q.device, q.dtype)
        if key in self._assembled:
            return self._assembled[key]
        chunk = q.shape[0] // len(cond_or_uncond)
        columns = []
        for index in active:
            contribution = self.contributions[index]
            count = contribution.token_count(self.site)
            if contribution.mask is None:
                columns.append(torch.ones(q.shape[0], height * width, count, device=q.device, dtype=q.dtype))
                continue
            mask = per_latent(contribution.query_mask(height, width, q.device, q.dtype), chunk, "attn_mask", window)
            mask = mask.repeat(len(cond_or_uncond), 1)
            columns.append(mask.unsqueeze(-1).expand(-1, -1, count))
        return self._remember(key, image_key_bias(torch.cat(columns, dim=-1), text_tokens))
