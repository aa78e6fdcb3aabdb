"""The tokens one branch extracted from reference images, as they travel between nodes and files.

Tokens are post-projection (what the site projections i_to_k / i_to_v consume), so mixing them is
the multi-reference blend of BLIP-Diffusion: a weighted sum with ratios that add up to 1.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .sites import BRANCHES

TOKENS_FORMAT = "deadiff-tokens"
TOKENS_VERSION = "1"
WEIGHTED_SUM = "weighted sum"
CONCATENATE = "concatenate"
MIX_MODES = (WEIGHTED_SUM, CONCATENATE)
BATCH_CONCATENATE = "concatenate"
BATCH_AVERAGE = "average"
BATCH_PER_LATENT = "one per latent"
BATCH_MODES = (BATCH_CONCATENATE, BATCH_AVERAGE, BATCH_PER_LATENT)


class TokensError(ValueError):
    pass


@dataclass(frozen=True)
class DEADiffTokens:
    branch: str  # "style" or "content": which Q-Former made them, which sites they feed
    tokens: torch.Tensor  # (references, tokens, width), on ComfyUI's intermediate device
    source: str  # fingerprint of the DEADiff weights that made them (see checkpoint.py)
    per_latent: bool = False  # True: reference i conditions latent i; False: all references act together
    references: tuple[str, ...] = ()  # sha256 of each reference image, for provenance in saved files
    source_name: str = ""  # the DEADiff file's name, for error messages

    def __post_init__(self) -> None:
        if self.branch not in BRANCHES:
            raise TokensError(f"branch must be one of {BRANCHES}, got {self.branch!r}")
        if self.tokens.ndim != 3 or 0 in self.tokens.shape:
            raise TokensError(f"tokens must be (references, tokens, width), got shape {tuple(self.tokens.shape)}")

    @property
    def width(self) -> int:
        return self.tokens.shape[-1]

    def for_attention(self) -> torch.Tensor:
        """(items, tokens, width) as the attention uses them: one item per latent when `per_latent`,
        else a single item with every reference's tokens side by side (one reference gives exactly
        the official (1, 16, width))."""
        return self.tokens if self.per_latent else self.tokens.reshape(1, -1, self.width)

    def batched(self, mode: str) -> "DEADiffTokens":
        """How a batch of reference images acts: all at once, averaged into one, or one per latent."""
        if mode == BATCH_CONCATENATE:
            return replace(self, per_latent=False)
        if mode == BATCH_AVERAGE:
            return replace(self, tokens=self.tokens.mean(dim=0, keepdim=True), per_latent=False)
        if mode == BATCH_PER_LATENT:
            return replace(self, per_latent=True)
        raise TokensError(f"batch mode must be one of {BATCH_MODES}, got {mode!r}")


def image_sha256(images: torch.Tensor) -> tuple[str, ...]:
    """One hash per image of a ComfyUI IMAGE batch (its float pixels, as the encoder saw them)."""
    return tuple(
        hashlib.sha256(img.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest() for img in images
    )


def mix(inputs: list[DEADiffTokens], weights: list[float], mode: str) -> DEADiffTokens:
    """Combine token sets of one branch. Weighted sum: the BLIP-Diffusion blend, weights normalised
    to add up to 1 (all sets need the same token count). Concatenate: every set's tokens side by
    side, each scaled by its weight (a weight acts like Apply's strength for that set)."""
    if mode not in MIX_MODES:
        raise TokensError(f"mode must be one of {MIX_MODES}, got {mode!r}")
    if not inputs:
        raise TokensError("nothing to mix: connect at least one input")
    first = inputs[0]
    for other in inputs[1:]:
        if other.branch != first.branch:
            raise TokensError(f"cannot mix {first.branch} and {other.branch} tokens")
        if other.source != first.source:
            raise TokensError(
                f"cannot mix tokens made by different DEADiff files ({first.source_name or first.source} "
                f"and {other.source_name or other.source}): encode every reference with one file"
            )
    per_latent = any(t.per_latent for t in inputs)
    views = [t.for_attention() for t in inputs]
    items = {v.shape[0] for v in views} - {1}
    if len(items) > 1:
        raise TokensError(
            f"the inputs are one per latent with different batch sizes {sorted(items)}: "
            "give each the same number of reference images"
        )
    batch = items.pop() if items else 1
    views = [v.expand(batch, -1, -1) for v in views]
    if mode == WEIGHTED_SUM:
        counts = {v.shape[1] for v in views}
        if len(counts) > 1:
            raise TokensError(
                f"a weighted sum needs the same number of tokens in every input, got {sorted(counts)}; "
                "use concatenate, or average each reference batch in its encoder"
            )
        total = float(sum(weights))
        if abs(total) < 1e-8:
            raise TokensError("the weights add up to 0: give at least one input a weight above 0")
        mixed = sum(v * (w / total) for v, w in zip(views, weights))
    else:
        mixed = torch.cat([v * w for v, w in zip(views, weights)], dim=1)
    references = tuple(r for t in inputs for r in t.references)
    return DEADiffTokens(
        first.branch, mixed, first.source, per_latent=per_latent, references=references, source_name=first.source_name
    )


def save_tokens(path: str, tokens: DEADiffTokens) -> None:
    dims = {"references": tokens.tokens.shape[0], "tokens": tokens.tokens.shape[1], "width": tokens.width}
    metadata = {
        "format": TOKENS_FORMAT,
        "format_version": TOKENS_VERSION,
        "branch": tokens.branch,
        "per_latent": json.dumps(tokens.per_latent),
        "references": json.dumps(list(tokens.references)),
        "deadiff_weights": tokens.source,
        "deadiff_file": tokens.source_name,
        "dims": json.dumps(dims, sort_keys=True),
    }
    save_file({"tokens": tokens.tokens.detach().float().cpu().contiguous()}, path, metadata=metadata)


def load_tokens(path: str) -> tuple[DEADiffTokens, dict[str, str]]:
    """Tokens saved by `save_tokens`, and the file's metadata; a clear error for anything else."""
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            keys = list(f.keys())
            if metadata.get("format") != TOKENS_FORMAT:
                what = (
                    "a DEADiff model file (put it in models/deadiff and use Load DEADiff Model)"
                    if metadata.get("format") == "deadiff-compact"
                    else "not a saved DEADiff style/content"
                )
                raise TokensError(f"{path} is {what}: save tokens with the DEADiff Save Tokens node")
            if metadata.get("format_version") != TOKENS_VERSION:
                raise TokensError(
                    f"{path} has tokens format version {metadata.get('format_version')!r}; this "
                    f"version of the pack reads {TOKENS_VERSION}: update the pack"
                )
            if keys != ["tokens"]:
                raise TokensError(f"{path} should hold exactly one tensor 'tokens', it holds {keys[:5]}")
            tensor = f.get_tensor("tokens")
    except TokensError:
        raise
    except Exception as e:
        raise TokensError(
            f"{path} cannot be read as a .safetensors file ({e}); it is truncated or not a tokens file"
        ) from e
    if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
        raise TokensError(f"{path}: its tokens are not finite floating-point numbers; the file is corrupt")
    try:
        tokens = DEADiffTokens(
            metadata.get("branch", ""),
            tensor.float(),
            metadata.get("deadiff_weights", ""),
            per_latent=json.loads(metadata.get("per_latent", "false")) is True,
            references=tuple(json.loads(metadata.get("references", "[]"))),
            source_name=metadata.get("deadiff_file", ""),
        )
    except (ValueError, TypeError) as e:
        raise TokensError(f"{path}: {e}; the file is corrupt") from e
    return tokens, metadata
