"""DEADiff next to another node pack's attn2 replace patch at the same site, in either order.

IPAdapter_plus (FaceID included), InstantID, PuLID and similar packs add their image tokens by
replacing the cross-attention (attn2) of the UNet's transformer blocks, as DEADiff does. ComfyUI
runs ONE replace patch per block: it looks up the key (block, id, index) first and falls back to
(block, id). DEADiff's patches sit under the three-part key, IPAdapter_plus puts its SD1.5 patches
under the two-part one, so on its own ComfyUI would run DEADiff's patch and never the other.

So DEADiff decides when sampling starts, once every node has patched the MODEL, whatever their order:
a wrapper around the UNet's forward looks at each site DEADiff patched, finds the patch ComfyUI would
have run there without DEADiff (the other pack's patch under the three-part key, else under the
two-part key), and runs both:

    DEADiff's joint attention + (other patch's output - plain attention over the same q, k, v)

For a decoupled cross-attention such as IPAdapter's, whose output is the plain attention plus its
own weighted attention over its image keys, the difference is exactly that added term. The other
patch is called as it is at that moment, so changes it makes to itself later (IPAdapter_plus adds
each further IPAdapter to the patch object already there) take effect; nothing of either pack's
MODEL is changed. The cost is one plain attention per site where another patch sits.

The patch ComfyUI would not run without DEADiff is not run with it either: IPAdapter_plus also
registers an SD1.5 middle-block patch under ("middle", 1), but ComfyUI names the SD1.5 middle block
("middle", 0), so that patch never runs, with or without DEADiff.
"""

from __future__ import annotations

import torch

import comfy.model_management
import comfy.patcher_extension
from comfy.ldm.modules.attention import optimized_attention

from ..deadiff_core.sites import SITES, Site
from .attention_patch import DEADiffSitePatch

WRAPPER_KEY = "deadiff_attn2_composition"
_DIFFUSION_MODEL = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
_PASS_THROUGH = (comfy.model_management.InterruptProcessingException, torch.cuda.OutOfMemoryError)


class CompositionError(RuntimeError):
    pass


def describe(patch) -> str:
    """The module and name of a patch's class (of the function itself, for a plain function)."""
    named = patch if hasattr(patch, "__code__") else type(patch)
    return f"{named.__module__}.{named.__qualname__}"


def _attn2(model_options: dict) -> dict:
    return model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})


def _composer(model):
    """The composition wrapper an earlier Apply registered on this MODEL, if any."""
    wrappers = model.get_wrappers(_DIFFUSION_MODEL, WRAPPER_KEY)
    return wrappers[-1] if wrappers else None


def existing_patch(model, site: Site):
    """What DEADiff Apply builds on at `site`: DEADiff's own chain when this MODEL has one (even if a
    later node put another patch under DEADiff's key: that one is displaced, and combined), else the
    other pack's patch under DEADiff's key (also displaced), else None."""
    current = _attn2(model.model_options).get(site.comfy_block + (0,))
    if isinstance(current, DEADiffSitePatch):
        return current
    composer = _composer(model)
    ours = composer.patches.get(site.comfy_block) if composer is not None else None
    if ours is not None:
        return ours.displacing(current)
    return current


def register(model) -> None:
    """(Re)register the wrapper that combines DEADiff's site patches of `model` with other packs'
    patches when sampling starts. Call after every DEADiff patch of `model` is set."""
    attn2 = _attn2(model.model_options)
    patches = {}
    for site in SITES:
        patch = attn2.get(site.comfy_block + (0,))
        if isinstance(patch, DEADiffSitePatch):
            patches[site.comfy_block] = patch
    model.remove_wrappers_with_key(_DIFFUSION_MODEL, WRAPPER_KEY)  # this clone's own wrapper dict
    model.add_wrapper_with_key(_DIFFUSION_MODEL, WRAPPER_KEY, SiteComposer(patches))


class SiteComposer:
    """Wrapper of the UNet's forward: hands the blocks, for this call only, a patch that runs DEADiff
    and the other pack's patch at every site where both act. Immutable; shared by model clones."""

    def __init__(self, patches: dict):
        self.patches = dict(patches)  # ComfyUI block ("input", 1) -> DEADiffSitePatch

    def __call__(self, executor, *args, **kwargs):
        if len(args) > 5:  # the UNet's forward(x, timesteps, context, y, control, transformer_options, ...)
            args = args[:5] + (self.resolve(args[5]),) + args[6:]
        elif "transformer_options" in kwargs:
            kwargs["transformer_options"] = self.resolve(kwargs["transformer_options"])
        return executor(*args, **kwargs)

    def resolve(self, transformer_options: dict) -> dict:
        """`transformer_options` with every DEADiff site combined with the other patch there (a new dict;
        the one given and the MODELs' own dicts are left as they are)."""
        replace = transformer_options.get("patches_replace", {})
        attn2 = replace.get("attn2", {})
        resolved = None
        for block, ours in self.patches.items():
            key = block + (0,)
            current = attn2.get(key)
            if isinstance(current, DEADiffSitePatch):
                ours, other = current, current.displaced
            else:  # a later node put its patch under DEADiff's key: ComfyUI would run that one without DEADiff
                other = current if current is not None else ours.displaced
            if other is None:
                other = attn2.get(block)
            if isinstance(other, DEADiffSitePatch):
                other = None
            if other is None and current is ours:
                continue
            if resolved is None:
                resolved = dict(attn2)
            resolved[key] = ours if other is None else ComposedSitePatch(ours.site, ours, other)
        if resolved is None:
            return transformer_options
        return {**transformer_options, "patches_replace": {**replace, "attn2": resolved}}


class ComposedSitePatch:
    """DEADiff's patch plus another pack's contribution at one site, for one UNet call."""

    def __init__(self, site: Site, deadiff: DEADiffSitePatch, other):
        self.site, self.deadiff, self.other = site, deadiff, other

    def __call__(self, q, k, v, extra_options):
        out = self.deadiff(q, k, v, extra_options)
        # plain attention as these packs compute it themselves, so that it cancels their own
        plain = optimized_attention(q, k, v, extra_options["n_heads"])
        theirs = self._theirs(q, k, v, extra_options, plain)
        return out + (theirs.to(out.dtype) - plain.to(out.dtype))

    def _theirs(self, q, k, v, extra_options, plain):
        where = f"at {self.site.comfy_block} ({self.site.ldm_block})"
        try:
            theirs = self.other(q, k, v, extra_options)
        except _PASS_THROUGH:
            raise
        except Exception as error:
            raise CompositionError(
                f"DEADiff cannot combine with the cross-attention patch {describe(self.other)} {where}: it raised "
                f"{type(error).__name__}: {error}. Remove that node or DEADiff Apply from the MODEL chain, or "
                "report it to the pack that made the patch."
            ) from error
        if not hasattr(theirs, "shape") or tuple(theirs.shape) != tuple(plain.shape):
            got = tuple(theirs.shape) if hasattr(theirs, "shape") else type(theirs).__name__
            raise CompositionError(
                f"DEADiff cannot combine with the cross-attention patch {describe(self.other)} {where}: it returned "
                f"{got} where the attention output is {tuple(plain.shape)}, so its effect cannot be added to "
                "DEADiff's. Use only one of the two nodes on this MODEL."
            )
        return theirs
