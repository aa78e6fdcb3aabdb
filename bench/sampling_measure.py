"""bench_sampling's measuring tools: step timer, attn2 replay (interleaved, fastest per site), K/V
recomputation counter, aten op counter, tensor accounting of the patches' caches."""

from __future__ import annotations

import collections
import contextlib
import sys
import time

import torch

from sampling_setup import Pack


class KVCounter:
    """Counts calls of deadiff_core.attention.image_keys_values (the image K/V projection), wherever the
    pack imported it, per variant."""

    def __init__(self, pack: Pack):
        self.counts = collections.Counter()
        self.steps = collections.Counter()
        self.current = None
        self.original = None
        for name, module in list(sys.modules.items()):
            if (name == pack.root or name.startswith(pack.root + ".")) and hasattr(module, "image_keys_values"):
                self.original = self.original or module.image_keys_values
                if module.image_keys_values is self.original:
                    module.image_keys_values = self._counted

    def _counted(self, *args, **kwargs):
        self.counts[self.current] += 1
        return self.original(*args, **kwargs)


# ----------------------------------------------------------------------------- tensor accounting
def tensor_bytes(obj, skip_types=(), seen=None, storages=None) -> int:
    """Bytes of the distinct tensor storages reachable from `obj` (dicts, sequences, object attributes),
    not descending into `skip_types`."""

    seen = set() if seen is None else seen
    storages = {} if storages is None else storages
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, skip_types):
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            storages[(storage.data_ptr(), item.device)] = storage.nbytes()
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif hasattr(item, "__dict__") and not isinstance(item, type):
            stack.extend(vars(item).values())
    return sum(storages.values())


# ---------------------------------------------------------------------------------------- ops
@contextlib.contextmanager
def count_ops():
    """Every aten op run inside (including host reads: aten._local_scalar_dense = a device->host sync)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counter = collections.Counter()

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counter[str(func.overloadpacket.__name__)] += 1
            return func(*args, **(kwargs or {}))

    with Mode():
        yield counter


class StepTimer:
    """Wall time of every UNet forward (one model call = cond + uncond batch), per variant label."""

    def __init__(self, unet):
        self.times = collections.defaultdict(list)  # wall seconds
        self.cpu = collections.defaultdict(list)  # this process's CPU seconds (all threads)
        self.label = None
        self._t = self._c = None
        unet.register_forward_pre_hook(self._pre)
        unet.register_forward_hook(self._post)

    def _pre(self, module, args):
        self._t, self._c = time.perf_counter(), time.process_time()

    def _post(self, module, args, output):
        if self.label is not None:
            self.times[self.label].append(time.perf_counter() - self._t)
            self.cpu[self.label].append(time.process_time() - self._c)


def replay_inputs(record: dict):
    """The captured per-site (q, k, v, extra_options) of one model call (cond + uncond), in UNet order."""
    from deadiff_core.sites import SITES

    by_block = {}
    for (block, q_shape), value in record.items():
        if q_shape[0] == 2:
            by_block.setdefault(block, value)
    missing = [s.comfy_block for s in SITES if s.comfy_block not in by_block]
    if missing:
        raise RuntimeError(f"no captured attn2 inputs (cond + uncond batch) for {missing}")
    return [(site.comfy_block, by_block[site.comfy_block]) for site in SITES]


def _call_site(patch, q, k, v, options):
    from comfy.ldm.modules.attention import optimized_attention

    if patch is None:  # what CrossAttention.forward does without a replace patch
        return optimized_attention(
            q, k, v, options["n_heads"], attn_precision=options.get("attn_precision"), transformer_options=options
        )
    return patch(q, k, v, options)


def replay_step(patches: dict, inputs, sigma_value: float, sync=None):
    """One step's 16 attn2 calls through `patches` (ComfyUI's optimized_attention where none); seconds."""
    sigmas = torch.full_like(inputs[0][1][3]["sigmas"], sigma_value)  # a fresh tensor per model call, as ComfyUI's
    t = time.perf_counter()
    for block, (q, k, v, extra_options) in inputs:
        _call_site(patches.get(tuple(block)), q, k, v, dict(extra_options, sigmas=sigmas))
    if sync:
        sync()
    return time.perf_counter() - t


def replay_interleaved(states, patches: dict, inputs, rounds: int, sync=None, kv=None, tag=None) -> dict:
    """Per step, the sum over the 16 sites of the fastest of `rounds` calls, the variants' calls interleaved
    site by site (so a burst of other work on the machine hits every variant alike). Round 0 warms up.

    states: (name, label, sigma); patches: label -> {block: patch}. Each round gives every state a fresh
    sigmas tensor shared by its 16 calls, as one model call does."""
    best = {}
    for r in range(rounds + 1):
        sigmas = {name: torch.full_like(inputs[0][1][3]["sigmas"], sigma) for name, _, sigma in states}
        for i, (block, (q, k, v, extra_options)) in enumerate(inputs):
            shift = (r + i) % len(states)
            for name, label, _ in states[shift:] + states[:shift]:
                if kv is not None:
                    kv.current = (label, tag)
                options = dict(extra_options, sigmas=sigmas[name])
                patch = patches[label].get(tuple(block))
                t = time.perf_counter()
                _call_site(patch, q, k, v, options)
                if sync:
                    sync()
                seconds = time.perf_counter() - t
                if r:
                    best[(name, i)] = min(best.get((name, i), seconds), seconds)
        if kv is not None:
            for _, label, _ in states:
                kv.steps[(label, tag)] += 1
    return {name: sum(best[(name, i)] for i in range(len(inputs))) for name, _, _ in states}


def tiny_inputs(inputs):
    """The same 16 calls with one query and one text token (cond + uncond kept): the attention math and the
    copies shrink to almost nothing, what is left is each patch's host cost (Python, op dispatch) per step;
    against the floor patch, that is what DEADiff's bookkeeping costs the CPU that feeds a GPU."""
    tiny = []
    for block, (q, k, v, extra_options) in inputs:
        options = dict(extra_options, activations_shape=(q.shape[0], q.shape[2], 1, 1))
        tiny.append((block, (q[:, :1].contiguous(), k[:, :1].contiguous(), v[:, :1].contiguous(), options)))
    return tiny
