"""What bench/gpu_check.py measures on a running server (memory, the Style Encoder's time, a sampling step's
time per variant) and how it reports the figures.

Times are ComfyUI's own execution timestamps; a step's time is the difference of a long and a short run,
so fixed costs cancel out.
"""

from __future__ import annotations

import statistics
import time

from gpu_check_graphs import CFG, VARIANTS, Plan, encode_graph, probe_graph, sample_graph
from gpu_check_server import Server, log, probes, seconds


# -------------------------------------------------------------------------------------- measurement
def memory_line(reading: dict) -> str:
    parts = [f"{reading['label']}:"]
    if "device_used_mb" in reading:
        parts.append(
            f"GPU in use {reading['device_used_mb']:.0f} MB (torch allocated {reading['torch_allocated_mb']:.0f},"
            f" reserved {reading['torch_reserved_mb']:.0f})"
        )
    loaded = (
        ", ".join(
            f"{m['model']} {m['patcher']}{' dynamic' if m['dynamic'] else ''} {m['loaded_mb']:.0f}/"
            f"{m['size_mb']:.0f} MB"
            for m in reading["loaded"]
        )
        or "none"
    )
    parts.append(f"loaded models (resident/size): {loaded}")
    return " ".join(parts)


def measure(server: Server, plan: Plan, deadline: float) -> dict:
    results = {"memory": [], "encoder": {}, "steps": {}}
    first = probes(server.run(probe_graph(plan, "before anything")))[0]
    results["first"] = first
    results["memory"].append(first)

    # encoder: a warm-up (loads the file and the encoders), then timed runs with and without the encoder
    warm = server.run(encode_graph(plan, 1, seed=100, label="after encode (batch 1)"))
    results["memory"].append(probes(warm)[0])
    results["deadiff_patchers"] = probes(warm)[0].get("deadiff")
    for batch in (1, 8):
        server.run(encode_graph(plan, batch, seed=200 + batch))  # warm-up at this batch size
        with_encoder, without = [], []
        for rep in range(plan.encoder_reps):
            seed = 1000 * batch + rep
            with_encoder.append(seconds(server.run(encode_graph(plan, batch, seed))))
            without.append(seconds(server.run(encode_graph(plan, batch, seed, encode=False))))
        results["encoder"][batch] = (statistics.median(with_encoder) - statistics.median(without), with_encoder)
    results["memory"].append(probes(server.run(encode_graph(plan, 8, seed=300, label="after encode (batch 8)")))[0])

    # sampling: warm-up each variant, then rounds of (variant x short/long), order rotating per round
    for variant in VARIANTS:
        entry = server.run(sample_graph(plan, variant, plan.steps[0], seed=1, label=f"after sampling ({variant})"))
        results["memory"].append(probes(entry)[0])
        results.setdefault("sampling_patchers", {})[variant] = probes(entry)[0]["loaded"]
    times = {(v, s): [] for v in VARIANTS for s in plan.steps}
    for r in range(plan.rounds):
        if time.monotonic() > deadline:
            log(f"(time budget reached after {r} sampling rounds)")
            break
        order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]
        for variant in order:
            # an untimed run first: switching variants (other patches, other models to load) costs once
            server.run(sample_graph(plan, variant, plan.steps[0], seed=50 + r))
            for steps in plan.steps:
                times[(variant, steps)].append(seconds(server.run(sample_graph(plan, variant, steps, seed=10 + r))))
    short, long = plan.steps
    for variant in VARIANTS:
        if times[(variant, long)]:
            per_step = [(b - a) / (long - short) for a, b in zip(times[(variant, short)], times[(variant, long)])]
            results["steps"][variant] = (statistics.median(per_step), per_step)
            results.setdefault("runs", {})[variant] = (times[(variant, short)], times[(variant, long)])
    results["memory"].append(probes(server.run(probe_graph(plan, "at the end")))[0])
    return results


def report(results: dict, plan: Plan, server: Server) -> None:
    first = results["first"]
    log("\n== DynamicVRAM")
    log(
        f"device: {first.get('device_name', first['device'])}; DynamicVRAM active: {first['dynamic_vram']}; "
        f"ComfyUI's CoreModelPatcher: {first['core_patcher']}"
    )
    enabled_line = [line for line in server.log_tail(200000).splitlines() if "DynamicVRAM" in line]
    log("server log: " + (enabled_line[0].strip() if enabled_line else "(no DynamicVRAM line)"))
    if results.get("deadiff_patchers"):
        d = results["deadiff_patchers"]
        log(
            f"DEADiff encoders: {d['encoder']['patcher']} (dynamic: {d['encoder']['dynamic']}); "
            f"site projections: {d['site_projections']['patcher']} (dynamic: {d['site_projections']['dynamic']})"
        )
    for variant, loaded in results.get("sampling_patchers", {}).items():
        legacy = [m["model"] for m in loaded if not m["dynamic"]]
        log(f"loaded after sampling {variant}: {len(loaded)} models, not dynamic: {legacy or 'none'}")

    log("\n== memory")
    for reading in results["memory"]:
        log(memory_line(reading))

    log("\n== DEADiff Style Encoder through the node (prompt time minus the same prompt without the encoder)")
    for batch, (secs, raw) in results["encoder"].items():
        log(
            f"batch {batch}: {1000 * secs:.1f} ms, {1000 * secs / batch:.1f} ms/image "
            f"(with encoder, each run: {', '.join(f'{1000 * x:.0f}' for x in raw)} ms)"
        )
    if 1 in results["encoder"] and 8 in results["encoder"] and results["encoder"][8][0] > 0:
        log(
            f"batch 8 per image is {results['encoder'][1][0] / (results['encoder'][8][0] / 8):.1f}x faster than batch 1"
        )

    log(
        f"\n== sampling step at {plan.size}x{plan.size}, batch 1, cfg {CFG} (cond + uncond), euler: "
        f"({plan.steps[1]}-step run - {plan.steps[0]}-step run) / {plan.steps[1] - plan.steps[0]}, median of rounds"
    )
    steps = results["steps"]
    for variant, (per_step, raw) in steps.items():
        short_runs, long_runs = results["runs"][variant]
        log(
            f"{variant}: {1000 * per_step:.2f} ms/step (rounds: {', '.join(f'{1000 * x:.2f}' for x in raw)}; "
            f"whole prompts, s: {plan.steps[0]} steps {short_runs}, {plan.steps[1]} steps {long_runs})"
        )
    if all(v in steps for v in VARIANTS):
        base, floor, ours = (steps[v][0] for v in VARIANTS)
        log(
            f"DEADiff vs unpatched: {100 * (ours / base - 1):+.1f}%; "
            f"floor vs unpatched: {100 * (floor / base - 1):+.1f}%; "
            f"DEADiff above the floor: {100 * (ours / floor - 1):+.1f}%"
        )
    if plan.dry:
        log("\n(dry run: tiny models on the CPU with --cpu; the figures above measure nothing)")
