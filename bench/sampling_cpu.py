"""bench_sampling's CPU part: whole steps and attn2 replays of every variant at each latent size, and the
report (per-step overhead vs unpatched and vs the floor, host cost, ops, K/V computations, memory)."""

from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path

import torch

from sampling_backends import attention_backends
from sampling_measure import (
    StepTimer,
    count_ops,
    replay_inputs,
    replay_interleaved,
    replay_step,
    tensor_bytes,
    tiny_inputs,
)
from sampling_setup import (
    SAMPLING_DIMS,
    WINDOWS,
    attn2_patches,
    build_variants,
    fake_deadiff,
    full_size_sd15,
    log,
    make_conds,
    pct,
    sample,
    window_sigmas,
)


def cpu_bench(args, pack, kv, folder: Path):
    log("\n== building the full-size SD1.5 UNet (random weights, fp32) ==")
    t = time.perf_counter()
    base = full_size_sd15(torch.float32)
    log(
        f"built in {time.perf_counter() - t:.0f} s: "
        f"{sum(p.numel() for p in base.model.diffusion_model.parameters()) / 1e6:.0f} M parameters"
    )
    deadiff = pack.load(fake_deadiff(folder, SAMPLING_DIMS, "deadiff_sampling.safetensors"))
    gen = torch.Generator().manual_seed(3)
    style_a = pack.style(deadiff, torch.rand(1, 256, 256, 3, generator=gen))
    style_b = pack.style(deadiff, torch.rand(1, 256, 256, 3, generator=gen))
    conds = make_conds()
    timer = StepTimer(base.model.diffusion_model)
    sampling = base.get_model_object("model_sampling")
    mid_sigma = float(sampling.percent_to_sigma(0.25))
    results = {}
    cache_bytes = {}
    op_counts = {}
    host = {}
    for size in args.sizes:
        log(f"\n== {size}x{size} latent ({size * 8}x{size * 8} px), batch cond+uncond ==")
        record = {}
        variants = build_variants(pack, base, deadiff, style_a, style_b, size, record)
        if size == args.sizes[0]:
            kv.current, timer.label = ("warm-up", size), None
            sample(variants["unpatched"], size, 1, conds)  # allocator, thread pools, first-call costs
        step_variants = [v for v in variants if v in (args.step_variants if size <= 32 else args.step_variants_large)]
        labels = list(variants)
        # whole steps, interleaved in rounds; the order rotates between rounds
        t_size = time.perf_counter()
        for r in range(args.rounds):
            order = step_variants[r % len(step_variants) :] + step_variants[: r % len(step_variants)]
            for label in order:
                kv.current = (label, size)
                kv.steps[(label, size)] += args.steps
                timer.label = (label, size)
                sample(variants[label], size, args.steps, conds, seed=r)
                timer.label = None
            log(
                f"  round {r + 1}/{args.rounds}: "
                + ", ".join(f"{label.split(' (')[0]} {timer.times[(label, size)][-1]:.2f}s" for label in step_variants)
            )
        log(f"  whole steps: {time.perf_counter() - t_size:.0f} s")
        inputs = replay_inputs(record)
        # replay of the 16 attn2 calls, interleaved
        t_replay = time.perf_counter()
        patches = {label: attn2_patches(model) for label, model in variants.items()}
        states = []
        for label in labels:
            if label in WINDOWS:
                for state, sigma in window_sigmas(base, *WINDOWS[label]).items():
                    states.append((f"{label}, {state}", label, sigma))
            else:
                states.append((label, label, mid_sigma))
        if size != args.sizes[0]:  # both windows cost the same per state; one is enough above the first size
            states = [st for st in states if not st[1].startswith("window 0.3")]
        threads = torch.get_num_threads()
        torch.set_num_threads(args.replay_threads)
        replay = replay_interleaved(states, patches, inputs, args.replay_rounds, kv=kv, tag=size)
        torch.set_num_threads(threads)
        log(f"  attn2 replay: {time.perf_counter() - t_replay:.0f} s")
        if size == args.sizes[-1]:
            tiny = tiny_inputs(inputs)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # 1-token tensors do not use a second thread; spares the barrier waits
            host.update(replay_interleaved(states, patches, tiny, args.host_rounds))
            torch.set_num_threads(threads)
            for name, label, sigma in states:
                with count_ops() as ops:
                    replay_step(patches[label], inputs, sigma)
                op_counts[(name, size)] = ops
            if args.backends:
                log(
                    f"\n== ComfyUI's attention functions on the {size}x{size} attn2 shapes (+16 keys), "
                    f"{args.replay_threads} thread(s) =="
                )
                torch.set_num_threads(args.replay_threads)
                attention_backends(inputs, args.backend_rounds)
                torch.set_num_threads(threads)
        replayed = {label for _, label, _ in states}
        for label, model in variants.items():
            if label == "unpatched" or label.startswith("floor") or label not in replayed:
                continue
            cache_bytes[(label, size)] = tensor_bytes(attn2_patches(model), skip_types=(type(deadiff), torch.nn.Module))
        results[size] = (
            states,
            replay,
            {label: timer.times[(label, size)] for label in step_variants},
            {label: timer.cpu[(label, size)] for label in step_variants},
        )
        del variants, patches, inputs, record
        gc.collect()
    report_cpu(args, results, op_counts, cache_bytes, kv, deadiff, host)


def report_cpu(args, results, op_counts, cache_bytes, kv, deadiff, host):
    log("\n== per-step time, CPU fp32 ==")
    log(
        "variant | latent | step s, fastest (median, n) | vs unpatched | step CPU s | vs unpatched | "
        "attn2 ms/step | overhead vs unpatched (attn2) | above floor (attn2)"
    )
    log("---|---|---|---|---|---|---|---|---")
    for size, (states, replay, walls, cpus) in results.items():
        base_step = min(walls["unpatched"])
        base_cpu = min(cpus["unpatched"])
        for name, label, _ in states:
            floor = "floor (32 zero keys)" if label.startswith("two") else "floor (16 zero keys)"
            whole = label in walls and (name == label or name.endswith(", in window"))
            cells = ["-"] * 4
            if whole:
                wall, cpu = walls[label], cpus[label]
                cells = [
                    f"{min(wall):.2f} ({statistics.median(wall):.2f}, {len(wall)})",
                    pct(min(wall) / base_step - 1),
                    f"{min(cpu):.2f}",
                    pct(min(cpu) / base_cpu - 1),
                ]
            over = (replay[name] - replay["unpatched"]) / base_step
            above = (replay[name] - replay[floor]) / base_step if not label.startswith(("unpatched", "floor")) else None
            log(
                f"{name} | {size}x{size} | " + " | ".join(cells) + f" | {1000 * replay[name]:.1f} | {pct(over)} | "
                f"{'-' if above is None else pct(above)}"
            )
    log(
        "step: one model call (cond + uncond) in a KSampler run, wall and process CPU time (both threads), "
        f"fastest of n; attn2: the step's 16 cross-attention calls replayed {args.replay_rounds} times, interleaved "
        f"with the other variants, fastest of each call, summed, on {args.replay_threads} thread(s) (slower than "
        f"the step's {torch.get_num_threads()}, so the overhead below is an upper bound); overhead (attn2) = "
        "(attn2 of the variant - attn2 unpatched) / fastest unpatched step; above floor = the "
        "same against the floor with as many extra keys (16; 32 for two Apply nodes). Window rows: the attn2 "
        "replay at a sigma inside / outside the window."
    )

    log(
        f"\n== host cost of the 16 attn2 calls per step (1 query and 1 text token, 1 thread, fastest of "
        f"{args.host_rounds} per site) =="
    )
    for name, seconds in host.items():
        label = next(label for n, label, _ in next(iter(results.values()))[0] if n == name)
        floor = "floor (32 zero keys)" if label.startswith("two") else "floor (16 zero keys)"
        versus = (
            "" if label.startswith(("unpatched", "floor")) else f", {1e6 * (seconds - host[floor]):+.0f} us vs {floor}"
        )
        log(f"{name}: {1e6 * seconds:.0f} us ({1e6 * (seconds - host['unpatched']):+.0f} us vs unpatched{versus})")

    log("\n== aten ops per step in the 16 attn2 calls, beyond the floor with as many keys ==")
    for (name, size), ops in op_counts.items():
        if size != args.sizes[-1] or name.startswith(("unpatched", "floor")):
            continue
        floor_name = "floor (32 zero keys)" if name.startswith("two") else "floor (16 zero keys)"
        if "out of window" in name:
            floor_name = "unpatched"
        extra = ops - op_counts[(floor_name, size)]
        fewer = op_counts[(floor_name, size)] - ops
        syncs = ops.get("_local_scalar_dense", 0)
        log(
            f"{name} ({size}x{size}): {sum(ops.values())} ops (vs {floor_name}: +{dict(extra) or 0}"
            f"{', -' + str(dict(fewer)) if fewer else ''}); host reads (syncs): {syncs}"
        )

    log("\n== image K/V computations (deadiff_core.attention.image_keys_values calls) ==")
    for (label, size), n in sorted(kv.counts.items(), key=lambda x: (str(x[0][1]), str(x[0][0]))):
        if label is None or label == "warm-up":
            continue
        log(
            f"{label} @ {size}x{size}: computed {n} times while serving {kv.steps[(label, size)]} steps "
            "(whole-step model calls + replayed steps)"
        )

    log("\n== device memory for sampling ==")
    projections = deadiff.model.site_projections
    numel = sum(p.numel() for p in projections.parameters())
    log(
        f"32 site projections (i_to_k/i_to_v): {numel / 1e6:.1f} M values = {numel * 2 / 1e6:.1f} MB at fp16 "
        f"({numel * 4 / 1e6:.1f} MB at fp32, this run)"
    )
    for (label, size), nbytes in cache_bytes.items():
        log(
            f"per-site caches + tokens after the run, {label} @ {size}x{size}: {nbytes / 1e6:.2f} MB fp32 "
            f"(~{nbytes / 2e6:.2f} MB at fp16)"
        )
