"""A long-running real ComfyUI server (main.py, subprocess) under DEADiff prompts.

One soak server gets 50 varied prompts (reference images generated or uploaded through /upload/image,
gray / RGB / RGBA, 1-4 references, style / content / both, one or two chained Apply nodes, masks,
weights, windows, samplers, cfg, steps, latent sizes and batches, two DEADiff files alternating so
the loader runs every time). Then:
- its resident memory (VmRSS of /proc/<pid>/status) after prompt 50 is within RSS_GROWTH_BOUND of
  what it was after prompt 25 (all 25 variants warmed up; prompts 26-50 are the same variants with
  other seeds and values);
- a plain SD1.5 prompt and a DEADiff prompt give results bit-identical to a fresh server's (no patch
  leaks into the shared model, nothing is left behind);
- the same prompt run twice (with the soak in between, so it really runs again) gives identical
  latents and identical PNG pixels;
- a prompt interrupted (POST /interrupt) in the middle of DEADiff sampling leaves the next prompts
  bit-identical to the fresh server's.
"""

from __future__ import annotations

import io
import random
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import deadiff_fakes
from conftest import start_server, stop_server
from graphs import Graph

pytestmark = [pytest.mark.server, pytest.mark.slow]

SOAK_PROMPTS = 50
VARIANTS = 25  # prompts 1-25 and 26-50 are the same 25 variants with other values
RSS_GROWTH_BOUND = 32 * 2**20  # bytes: resident memory after prompt 50 minus after prompt 25
DEADIFF_FILES = ("soak_a.ckpt", "soak_b.safetensors")


def png_bytes(mode: str, width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    smooth = rng.random((max(2, height // 16), max(2, width // 16), channels))
    image = Image.fromarray((smooth * 255).astype(np.uint8).squeeze()).resize((width, height), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


UPLOADS = {
    "soak_rgb.png": ("RGB", 300, 200, 1),
    "soak_rgba.png": ("RGBA", 128, 128, 2),
    "soak_gray.png": ("L", 64, 96, 3),
}


def prepare(server):
    folder = server.base / "models" / "deadiff"
    deadiff_fakes.place(folder, DEADIFF_FILES[0], seed=40)
    deadiff_fakes.place(folder, DEADIFF_FILES[1], seed=41)
    for name, spec in UPLOADS.items():
        assert server.upload_image(name, png_bytes(*spec)) == name


def reference_image(g: Graph, rng: random.Random, variant: int):
    """An IMAGE (and, for uploads, the MASK LoadImage makes of the alpha channel)."""
    if variant % 3 == 0:
        loaded = g.node("LoadImage", image=rng.choice(sorted(UPLOADS)))
        return loaded[0], loaded[1]
    size = rng.choice([8, 64, 256, 1024])
    return g.node(
        "DEADiffTest_ImageFromSeed",
        seed=rng.randrange(1000),
        width=size,
        height=rng.choice([8, 64, 200]),
        batch_size=rng.randint(1, 4),
        channels=rng.choice([1, 3, 4]),
    )[0], None


def soak_prompt(index: int) -> dict:
    variant = index % VARIANTS
    rng = random.Random(1000 * variant + index)  # the variant fixes the graph's shape, the index its values
    shape = random.Random(variant)
    g = Graph()
    tiny = g.node("DEADiffTest_TinySD15", seed=0)
    pos = g.node(
        "CLIPTextEncode",
        clip=tiny[1],
        text=rng.choice(["a castle", "a cat on a sofa, oil painting", "a harbour at night " * 30]),
    )
    neg = g.node("CLIPTextEncode", clip=tiny[1], text=rng.choice(["", "lowres, blurry"]))
    loader = g.node("DEADiffModelLoader", deadiff_name=DEADIFF_FILES[index % 2])
    model = tiny[0]
    latent_batch = shape.choice([1, 1, 2])
    for _ in range(shape.choice([1, 1, 2])):  # one Apply node or two chained
        image, alpha_mask = reference_image(g, shape, variant)
        branches = shape.choice([("style",), ("content",), ("style", "content")])
        extra = {b: g.node(f"DEADiff{b.capitalize()}Encoder", deadiff=loader, image=image) for b in branches}
        mask_kind = shape.choice(["none", "solid", "wild", "alpha"])
        if mask_kind == "solid":
            extra["attn_mask"] = g.node("SolidMask", value=rng.random(), width=rng.randint(1, 100), height=32)
        elif mask_kind == "wild":
            extra["attn_mask"] = g.node(
                "DEADiffTest_MaskFromSeed",
                seed=rng.randrange(1000),
                width=37,
                height=23,
                batch_size=latent_batch,
                low=-1.0,
                high=2.0,
                nan_fraction=0.1,
            )
        elif mask_kind == "alpha" and alpha_mask is not None:
            extra["attn_mask"] = alpha_mask
        start = round(rng.uniform(0.0, 0.5), 2)
        model = g.node(
            "DEADiffApply",
            model=model,
            deadiff=loader,
            style_weight=round(rng.uniform(-1.0, 3.0), 2),
            content_weight=round(rng.uniform(0.0, 2.0), 2),
            start_at=start,
            end_at=round(rng.uniform(start, 1.0), 2),
            **extra,
        )
    latent = g.node("EmptyLatentImage", width=64, height=shape.choice([64, 96]), batch_size=latent_batch)
    sample = g.node(
        "KSampler",
        model=model,
        seed=rng.randrange(10**6),
        steps=rng.randint(1, 4),
        cfg=shape.choice([1.0, 4.0, 8.0]),
        sampler_name=shape.choice(["euler", "ddim", "dpmpp_2m"]),
        scheduler=shape.choice(["normal", "karras"]),
        positive=pos,
        negative=neg,
        latent_image=latent,
        denoise=1.0,
    )
    if shape.random() < 0.3:
        g.node("SaveImage", images=g.node("VAEDecode", samples=sample, vae=tiny[2]), filename_prefix="soak")
    g.node("DEADiffTest_SaveLatentFile", samples=sample, filename=f"soak_{index}.safetensors")
    return g.prompt


def check_prompt(kind: str, name: str) -> tuple[dict, str]:
    """The prompts compared with the fresh server: plain SD1.5, or a fixed DEADiff style+content transfer.
    Returns (prompt, the KSampler's node id)."""
    g = Graph()
    tiny = g.node("DEADiffTest_TinySD15", seed=0)
    pos = g.node("CLIPTextEncode", clip=tiny[1], text="a lighthouse at dusk")
    neg = g.node("CLIPTextEncode", clip=tiny[1], text="lowres")
    model = tiny[0]
    if kind == "deadiff":
        loader = g.node("DEADiffModelLoader", deadiff_name=DEADIFF_FILES[0])
        image = g.node("LoadImage", image="soak_rgba.png")
        model = g.node(
            "DEADiffApply",
            model=model,
            deadiff=loader,
            style_weight=1.0,
            content_weight=0.8,
            start_at=0.0,
            end_at=1.0,
            style=g.node("DEADiffStyleEncoder", deadiff=loader, image=image[0]),
            content=g.node("DEADiffContentEncoder", deadiff=loader, image=image[0]),
        )
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    sample = g.node(
        "KSampler",
        model=model,
        seed=77,
        steps=3,
        cfg=7.0,
        sampler_name="euler",
        scheduler="normal",
        positive=pos,
        negative=neg,
        latent_image=latent,
        denoise=1.0,
    )
    g.node("SaveImage", images=g.node("VAEDecode", samples=sample, vae=tiny[2]), filename_prefix=name)
    g.node("DEADiffTest_SaveLatentFile", samples=sample, filename=f"{name}.safetensors")
    return g.prompt, sample.id


def run_check(server, kind: str, name: str) -> dict:
    prompt, sampler = check_prompt(kind, name)
    entry = server.run(prompt)
    cached = {n for event, data in entry["status"]["messages"] if event == "execution_cached" for n in data["nodes"]}
    images = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    assert len(images) == 1
    pixels = np.asarray(Image.open(server.base / "output" / images[0]["subfolder"] / images[0]["filename"]))
    return {
        "latent": load_file(str(server.base / "output" / f"{name}.safetensors"))["samples"],
        "pixels": pixels,
        "sampler_ran": sampler not in cached,
    }


def assert_identical(result: dict, expected: dict, why: str):
    assert result["sampler_ran"], f"{why}: the KSampler came from ComfyUI's cache, nothing was compared"
    assert torch.equal(result["latent"], expected["latent"]), f"{why}: latents differ"
    assert np.array_equal(result["pixels"], expected["pixels"]), f"{why}: PNG pixels differ"


@pytest.fixture(scope="module")
def soak():
    servers, errors = {}, []

    def start(role):
        try:
            servers[role] = start_server(f"deadiff-{role}-")
        except Exception as e:  # noqa: BLE001  (reported below, in the test's thread)
            errors.append(e)

    threads = [threading.Thread(target=start, args=(role,)) for role in ("soak", "fresh")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        soak_server, fresh = servers["soak"], servers["fresh"]
        for server in (soak_server, fresh):
            prepare(server)
        state = {
            "server": soak_server,
            "fresh": {kind: run_check(fresh, kind, f"fresh_{kind}") for kind in ("plain", "deadiff")},
        }
        state["first"] = run_check(soak_server, "deadiff", "soak_first")
        rss = []
        for index in range(SOAK_PROMPTS):
            entry = soak_server.run(soak_prompt(index))
            assert entry["status"]["status_str"] == "success"
            result = load_file(str(soak_server.base / "output" / f"soak_{index}.safetensors"))["samples"]
            assert torch.isfinite(result).all(), f"soak prompt {index} gave non-finite values"
            rss.append(soak_server.resident_bytes())
        state["rss"] = rss
        # after the soak (a different prompt ran last, so these run again rather than come from the cache)
        state["after"] = {kind: run_check(soak_server, kind, f"soak_after_{kind}") for kind in ("plain", "deadiff")}
        yield state
    finally:
        for server in servers.values():
            stop_server(server)


def test_resident_memory_stays_flat(soak):
    rss = soak["rss"]
    assert len(rss) == SOAK_PROMPTS
    warm = rss[VARIANTS - 1]
    growth = max(rss[VARIANTS:]) - warm
    print(
        f"soak RSS after prompt {VARIANTS}: {warm / 2**20:.0f} MiB; max over prompts {VARIANTS + 1}-"
        f"{SOAK_PROMPTS}: {max(rss[VARIANTS:]) / 2**20:.0f} MiB; last: {rss[-1] / 2**20:.0f} MiB; "
        f"growth {growth / 2**20:.1f} MiB (bound {RSS_GROWTH_BOUND / 2**20:.0f} MiB)"
    )
    assert growth <= RSS_GROWTH_BOUND, (
        f"resident memory grew by {growth / 2**20:.1f} MiB over prompts {VARIANTS + 1}-{SOAK_PROMPTS} "
        f"(bound {RSS_GROWTH_BOUND / 2**20:.0f} MiB); per prompt: {[round(r / 2**20) for r in rss]}"
    )


def test_no_patch_leaks_after_deadiff_prompts(soak):
    """A plain SD1.5 prompt (and a DEADiff one) after 51 DEADiff prompts: bit-identical to a fresh server's."""
    assert_identical(soak["after"]["plain"], soak["fresh"]["plain"], "plain SD1.5 after the soak vs a fresh server")
    assert_identical(soak["after"]["deadiff"], soak["fresh"]["deadiff"], "DEADiff after the soak vs a fresh server")


def test_same_prompt_twice_gives_identical_images(soak):
    """The DEADiff check prompt ran first on the soak server, and again after the 50 soak prompts."""
    assert_identical(soak["after"]["deadiff"], soak["first"], "the same prompt twice")


def gated_prompt(marker: str) -> dict:
    g = Graph()
    tiny = g.node("DEADiffTest_TinySD15", seed=0)
    pos = g.node("CLIPTextEncode", clip=tiny[1], text="a lighthouse at dusk")
    neg = g.node("CLIPTextEncode", clip=tiny[1], text="lowres")
    loader = g.node("DEADiffModelLoader", deadiff_name=DEADIFF_FILES[1])
    image = g.node("DEADiffTest_ImageFromSeed", seed=5, width=64, height=64, batch_size=2, channels=3)
    mask = g.node("SolidMask", value=0.5, width=32, height=32)
    model = g.node(
        "DEADiffApply",
        model=tiny[0],
        deadiff=loader,
        style_weight=1.0,
        content_weight=1.0,
        start_at=0.0,
        end_at=1.0,
        style=g.node("DEADiffStyleEncoder", deadiff=loader, image=image),
        attn_mask=mask,
    )
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    sigmas = g.node("BasicScheduler", model=model, scheduler="normal", steps=20, denoise=1.0)
    sampler = g.node("DEADiffTest_GatedSampler", marker=marker, hold_seconds=120.0)
    sample = g.node(
        "SamplerCustom",
        model=model,
        add_noise=True,
        noise_seed=3,
        cfg=6.0,
        positive=pos,
        negative=neg,
        sampler=sampler,
        sigmas=sigmas,
        latent_image=latent,
    )
    g.node("DEADiffTest_SaveLatentFile", samples=sample, filename="interrupted.safetensors")
    return g.prompt


def test_interrupt_mid_sampling_leaves_the_next_prompts_correct(soak):
    server = soak["server"]
    marker = server.base / "sampling_started"
    prompt_id = server.queue(gated_prompt(str(marker)))
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert time.monotonic() < deadline, f"the gated prompt never started sampling:\n{server.log()}"
        time.sleep(0.05)
    server.post("/interrupt", {})
    entry = server.wait(prompt_id)
    events = [event for event, _ in entry["status"]["messages"]]
    assert entry["status"]["status_str"] == "error" and "execution_interrupted" in events, entry["status"]
    assert not (server.base / "output" / "interrupted.safetensors").exists()
    assert_identical(
        run_check(server, "deadiff", "after_interrupt_deadiff"),
        soak["fresh"]["deadiff"],
        "DEADiff after an interrupted DEADiff prompt vs a fresh server",
    )
    assert_identical(
        run_check(server, "plain", "after_interrupt_plain"),
        soak["fresh"]["plain"],
        "plain SD1.5 after an interrupted DEADiff prompt vs a fresh server",
    )
