"""Thumbnails for the example workflows: a drawing of each graph, as the ComfyUI template browser shows.

The front end looks for `<workflow name>.jpg` next to a custom node pack's example workflow. This
draws the graph itself (nodes at their saved positions, links coloured by type, the Note's first
line as a caption), so a thumbnail always matches its workflow. The examples share most of their
graph, so what sets one apart is drawn in an accent colour (the nodes it has beyond the basic style
transfer; for that one, the DEADiff nodes), the rest dimmed, and named under the caption:

    python -m deadiff_runner.thumbnails            # rewrite example_workflows/*.jpg
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .workflows import DEFAULT_WORKFLOW, EXAMPLES_DIR

SIZE = (512, 384)
BACKGROUND = (32, 32, 32)
NODE_BODY = (53, 53, 53)
NODE_TITLE = (34, 34, 34)
DEADIFF_TITLE = (56, 72, 110)
NOTE_BODY = (102, 85, 51)
TEXT = (220, 220, 220)
SUBTEXT = (255, 196, 120)
ACCENT = (240, 150, 50)  # outline of the nodes that set an example apart
DIM = 0.45  # how much of their colour the other nodes and links keep
# the front end's default link colours (dark palette); anything else is grey
LINK_COLORS = {
    "MODEL": (137, 120, 167),
    "CLIP": (234, 203, 139),
    "CONDITIONING": (207, 135, 111),
    "IMAGE": (128, 161, 192),
    "LATENT": (179, 142, 173),
    "VAE": (190, 97, 107),
    "CONTROL_NET": (0, 215, 141),
    "MASK": (163, 189, 141),
}
DEADIFF_TYPES = {
    "DEADiffModelLoader",
    "DEADiffStyleEncoder",
    "DEADiffContentEncoder",
    "DEADiffApply",
    "DEADiffMixStyles",
    "DEADiffMixContents",
    "DEADiffSaveTokens",
    "DEADiffLoadStyle",
    "DEADiffLoadContent",
    "DEADiffRouting",
}
NAMES = {
    "DEADiffModelLoader": "Load DEADiff Model",
    "DEADiffStyleEncoder": "DEADiff Style Encoder",
    "DEADiffContentEncoder": "DEADiff Content Encoder",
    "DEADiffApply": "Apply Disentangled Conditioning",
    "CheckpointLoaderSimple": "Load Checkpoint",
    "CLIPTextEncode": "CLIP Text Encode",
    "EmptyLatentImage": "Empty Latent Image",
    "VAEDecode": "VAE Decode",
    "SaveImage": "Save Image",
    "LoadImage": "Load Image",
    "ControlNetLoader": "Load ControlNet",
    "ControlNetApplyAdvanced": "Apply ControlNet",
    "LoraLoader": "Load LoRA",
    "DEADiffMixStyles": "DEADiff Mix Styles",
    "DEADiffMixContents": "DEADiff Mix Contents",
    "DEADiffSaveTokens": "DEADiff Save Tokens",
    "DEADiffLoadStyle": "DEADiff Load Style",
    "DEADiffLoadContent": "DEADiff Load Content",
    "DEADiffRouting": "DEADiff Layer Routing",
    "SolidMask": "SolidMask",
    "MaskComposite": "MaskComposite",
    "PreviewImage": "Preview Image",
}
TITLE_HEIGHT = 30  # in graph units, as the front end draws node titles above pos


def _font(size: int):
    for name in ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _dim(color: tuple) -> tuple:
    return tuple(int(c * DIM + b * (1 - DIM)) for c, b in zip(color, BACKGROUND))


def distinctive_nodes(workflow: dict, base: dict | None) -> set:
    """Ids of the nodes that set `workflow` apart from `base` (by type, counting repeats), Notes aside;
    with no base (the basic example itself), its DEADiff nodes."""
    nodes = [n for n in workflow["nodes"] if n["type"] != "Note"]
    if base is None:
        return {n["id"] for n in nodes if n["type"] in DEADIFF_TYPES}
    left: dict = {}
    for node in base["nodes"]:
        left[node["type"]] = left.get(node["type"], 0) + 1
    picked = set()
    for node in nodes:
        if left.get(node["type"], 0) > 0:
            left[node["type"]] -= 1
        else:
            picked.add(node["id"])
    return picked


def subtitle_for(workflow: dict, picked: set, base: dict | None) -> str:
    names = []
    for node in workflow["nodes"]:
        if node["id"] in picked:
            name = NAMES.get(node["type"], node["type"])
            if name not in names:
                names.append(name)
    if base is None:
        return f"the official default: {len(names)} DEADiff nodes on a plain SD1.5 graph"
    return "adds: " + ", ".join(names)


def render(workflow: dict, caption: str, picked: set | None = None, subtitle: str = "") -> Image.Image:
    """The graph; nodes in `picked` (and their links) in full colour with an accent outline, the rest
    dimmed (everything in full colour when `picked` is None)."""
    nodes = workflow["nodes"]

    def shade(color: tuple, node_ids: tuple) -> tuple:
        if picked is None or any(i in picked for i in node_ids):
            return color
        return _dim(color)

    boxes = {
        n["id"]: (n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
        for n in nodes
    }
    left = min(b[0] for b in boxes.values())
    top = min(b[1] for b in boxes.values())
    right = max(b[2] for b in boxes.values())
    bottom = max(b[3] for b in boxes.values())
    banner = 64 if subtitle else 44
    margin = 12
    scale = min((SIZE[0] - 2 * margin) / (right - left), (SIZE[1] - banner - 2 * margin) / (bottom - top))
    offset_x = margin + ((SIZE[0] - 2 * margin) - (right - left) * scale) / 2
    offset_y = banner + margin

    def at(x, y):
        return offset_x + (x - left) * scale, offset_y + (y - top) * scale

    scale_up = 3  # draw large, shrink with antialiasing
    image = Image.new("RGB", (SIZE[0] * scale_up, SIZE[1] * scale_up), BACKGROUND)
    draw = ImageDraw.Draw(image)

    def big(point):
        return point[0] * scale_up, point[1] * scale_up

    by_id = {n["id"]: n for n in nodes}
    for link in workflow.get("links", []):
        _, origin, origin_slot, target, target_slot, kind = link[:6]
        a, b = by_id.get(origin), by_id.get(target)
        if a is None or b is None:
            continue
        start = at(a["pos"][0] + a["size"][0], a["pos"][1] + 14 + 20 * origin_slot)
        end = at(b["pos"][0], b["pos"][1] + 14 + 20 * target_slot)
        dx = max(30 * scale, abs(end[0] - start[0]) / 2)
        points = []
        for i in range(33):
            t = i / 32
            x = (
                (1 - t) ** 3 * start[0]
                + 3 * (1 - t) ** 2 * t * (start[0] + dx)
                + 3 * (1 - t) * t**2 * (end[0] - dx)
                + t**3 * end[0]
            )
            y = (1 - t) ** 3 * start[1] + 3 * (1 - t) ** 2 * t * start[1] + 3 * (1 - t) * t**2 * end[1] + t**3 * end[1]
            points.append(big((x, y)))
        draw.line(points, fill=shade(LINK_COLORS.get(kind, (150, 150, 150)), (origin, target)), width=2 * scale_up)

    font = _font(max(7, int(11 * scale * 2.2)) * scale_up)
    for node in nodes:
        x0, y0, x1, y1 = boxes[node["id"]]
        p0, p1 = big(at(x0, y0)), big(at(x1, y1))
        is_note = node["type"] == "Note"
        body = NOTE_BODY if is_note else NODE_BODY
        title_color = DEADIFF_TITLE if node["type"] in DEADIFF_TYPES else (NOTE_BODY if is_note else NODE_TITLE)
        radius = 6 * scale_up
        own = (node["id"],) if not is_note else tuple(picked or ())  # the Note explains what is picked
        body, title_color = shade(body, own), shade(title_color, own)
        outline = ACCENT if picked is not None and node["id"] in picked else None
        draw.rounded_rectangle([p0, p1], radius=radius, fill=body, outline=outline, width=3 * scale_up)
        title_bottom = big(at(x0, y0 + TITLE_HEIGHT))[1]
        draw.rounded_rectangle(
            [p0, (p1[0], title_bottom)], radius=radius, fill=title_color, outline=outline, width=3 * scale_up
        )
        label = node.get("title") or NAMES.get(node["type"], node["type"])
        if node["type"] in DEADIFF_TYPES and not node.get("title"):
            label = NAMES[node["type"]]
        width = p1[0] - p0[0] - 8 * scale_up
        while label and draw.textlength(label, font=font) > width:
            label = label[:-2] + "…" if len(label) > 2 else ""
        draw.text((p0[0] + 4 * scale_up, (p0[1] + title_bottom) / 2), label, fill=TEXT, font=font, anchor="lm")

    caption_font = _font(20 * scale_up)
    caption_y = (22 if subtitle else banner / 2) * scale_up
    draw.text((margin * scale_up, caption_y), caption, fill=TEXT, font=caption_font, anchor="lm")
    if subtitle:
        sub_font = _font(13 * scale_up)
        room = (SIZE[0] - 2 * margin) * scale_up
        while subtitle and draw.textlength(subtitle, font=sub_font) > room:
            subtitle = subtitle[:-2] + "…"
        draw.text((margin * scale_up, 47 * scale_up), subtitle, fill=SUBTEXT, font=sub_font, anchor="lm")
    return image.resize(SIZE, Image.LANCZOS)


def caption_for(workflow: dict, name: str) -> str:
    """The Note's title without its "Note: " prefix, else the file name."""
    for node in workflow["nodes"]:
        if node["type"] == "Note" and node.get("title"):
            return node["title"].removeprefix("Note:").strip()
    return name.replace("_", " ")


def main(argv=None) -> int:
    folder = Path(argv[0]) if argv else EXAMPLES_DIR
    base_path = folder / f"{DEFAULT_WORKFLOW}.json"
    base_workflow = json.loads(base_path.read_text(encoding="utf-8")) if base_path.is_file() else None
    for path in sorted(folder.glob("*.json")):
        workflow = json.loads(path.read_text(encoding="utf-8"))
        base = None if path.stem == DEFAULT_WORKFLOW else base_workflow
        picked = distinctive_nodes(workflow, base)
        image = render(workflow, caption_for(workflow, path.stem), picked, subtitle_for(workflow, picked, base))
        target = path.with_suffix(".jpg")
        image.save(target, quality=88, optimize=True)
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
