"""The prompts bench/gpu_check.py queues: what one run does (Plan) and the API-format graphs it builds.

Kept apart from the server and the measurement so `gpu_check.py --print-graphs` needs no ComfyUI.
"""

from __future__ import annotations

from dataclasses import dataclass

UNET_FILE = "sd15_random_unet_fp16.safetensors"
DEADIFF_FILE = "deadiff_random_full.safetensors"
CFG = 7.5
NEGATIVE = "lowres"


@dataclass(frozen=True)
class Plan:
    """What one run does; --dry-run shrinks everything so the flow runs on a CPU in a minute."""

    dry: bool
    size: int  # image side in pixels (latent = size / 8)
    steps: tuple  # (short, long) sampling runs; a step = (long - short) / (long - short steps)
    rounds: int  # sampling rounds (each runs every variant at both step counts)
    encoder_reps: int  # timed encoder runs per batch size
    context_dim: int  # text / DEADiff token width (768 for SD1.5)

    @classmethod
    def from_args(cls, args) -> "Plan":
        if args.dry_run:
            return cls(True, 64, (1, 2), 1, 1, 64)
        return cls(False, args.size, tuple(args.steps), args.rounds, args.encoder_reps, 768)


class Graph:
    """An API-format prompt built node by node (ids are strings, as the front end sends them)."""

    def __init__(self):
        self.prompt: dict = {}

    def node(self, class_type: str, **inputs) -> str:
        node_id = str(len(self.prompt) + 1)
        self.prompt[node_id] = {
            "class_type": class_type,
            "inputs": {k: ([v[0], v[1]] if isinstance(v, tuple) else v) for k, v in inputs.items()},
        }
        return node_id


def out(node_id: str, index: int = 0) -> tuple:
    return (node_id, index)


def _common(g: Graph, plan: Plan):
    """The shared head of every prompt: text encoder, DEADiff file, and (full run) the SD1.5 UNet. The
    same inputs every time, so ComfyUI runs them once and reuses their outputs."""
    tiny = g.node("DEADiffTest_TinySD15", seed=0, context_dim=plan.context_dim, model_channels=32)
    loader = g.node("DEADiffModelLoader", deadiff_name=DEADIFF_FILE)
    unet = out(tiny, 0) if plan.dry else out(g.node("UNETLoader", unet_name=UNET_FILE, weight_dtype="default"))
    return tiny, loader, unet


def probe_graph(plan: Plan, label: str) -> dict:
    g = Graph()
    g.node("DEADiffBench_Probe", label=label)
    return g.prompt


def encode_graph(plan: Plan, batch: int, seed: int, encode: bool = True, label: str | None = None) -> dict:
    """Reference images -> DEADiff Style Encoder -> probe. encode=False: the same without the encoder
    (what the prompt costs around it)."""
    g = Graph()
    _, loader, _ = _common(g, plan)
    image = g.node("DEADiffTest_ImageFromSeed", seed=seed, width=224, height=224, batch_size=batch, channels=3)
    after = out(g.node("DEADiffStyleEncoder", deadiff=out(loader), image=out(image))) if encode else out(image)
    g.node("DEADiffBench_Probe", label=label or f"encode b{batch}", after=after, deadiff=out(loader))
    return g.prompt


VARIANTS = ("unpatched", "floor (16 zero keys)", "DEADiff style")


def sample_graph(plan: Plan, variant: str, steps: int, seed: int, label: str | None = None) -> dict:
    """SD1.5 at plan.size, batch 1, cfg 7.5, euler: unpatched, with the floor patch or with DEADiff."""
    g = Graph()
    tiny, loader, model = _common(g, plan)
    if variant == "floor (16 zero keys)":
        model = out(g.node("DEADiffBench_Floor", model=model, extra=16))
    elif variant == "DEADiff style":
        image = g.node("DEADiffTest_ImageFromSeed", seed=1, width=224, height=224, batch_size=1, channels=3)
        style = g.node("DEADiffStyleEncoder", deadiff=out(loader), image=out(image))
        model = out(
            g.node(
                "DEADiffApply",
                model=model,
                deadiff=out(loader),
                style_weight=1.0,
                content_weight=1.0,
                start_at=0.0,
                end_at=1.0,
                style=out(style),
            )
        )
    elif variant != "unpatched":
        raise ValueError(f"unknown variant {variant!r}")
    pos = g.node("CLIPTextEncode", clip=out(tiny, 1), text="a lighthouse at dusk")
    neg = g.node("CLIPTextEncode", clip=out(tiny, 1), text=NEGATIVE)
    latent = g.node("EmptyLatentImage", width=plan.size, height=plan.size, batch_size=1)
    sample = g.node(
        "KSampler",
        model=model,
        seed=seed,
        steps=steps,
        cfg=CFG,
        sampler_name="euler",
        scheduler="normal",
        positive=out(pos),
        negative=out(neg),
        latent_image=out(latent),
        denoise=1.0,
    )
    g.node("DEADiffBench_Probe", label=label or f"{variant} {steps} steps", after=out(sample), deadiff=out(loader))
    return g.prompt
