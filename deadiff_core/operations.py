"""Build DEADiff's layers from a host application's layer classes instead of torch.nn's.

A host that manages weights itself (ComfyUI streams them to the GPU layer by layer, or casts them at
call time) provides its own Linear / Conv2d / LayerNorm / Embedding classes, subclasses of torch.nn's
with the same constructor arguments, and reads weights only through their forward(). The image tower
and Q-Formers are transformers models that create torch.nn layers themselves, so their layers are
swapped after construction (on the meta device, before any weight is loaded): the same shapes, the
host's classes. `operations` is any object with those four attributes; None keeps torch.nn.
"""

from __future__ import annotations

from torch import nn


def _rebuild(layer: nn.Module, operations) -> nn.Module | None:
    """The same layer built from `operations`, or None for a module that is not one of the four."""
    kind = type(layer)
    if kind is nn.Linear:
        return operations.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    if kind is nn.Conv2d:
        return operations.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
        )
    if kind is nn.LayerNorm:
        return operations.LayerNorm(
            layer.normalized_shape,
            eps=layer.eps,
            elementwise_affine=layer.elementwise_affine,
            bias=layer.bias is not None,
        )
    if kind is nn.Embedding:
        return operations.Embedding(layer.num_embeddings, layer.embedding_dim, padding_idx=layer.padding_idx)
    return None


def use_operations(module: nn.Module, operations) -> nn.Module:
    """Replace every torch.nn Linear / Conv2d / LayerNorm / Embedding inside `module` (in place) by
    `operations`' class of the same shape. Call it on a module built on the meta device, before its
    weights are loaded: the new layers hold no weights of their own."""
    if operations is None:
        return module
    for name, child in list(module.named_children()):
        replacement = _rebuild(child, operations)
        if replacement is None:
            use_operations(child, operations)
        else:
            setattr(module, name, replacement)
    return module
