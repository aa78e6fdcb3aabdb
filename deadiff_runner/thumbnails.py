"""Thumbnails for the example workflows: a drawing of each graph, as the ComfyUI template browser shows.

The front end looks for `<workflow name>.jpg` next to a custom node pack's example workflow. This
draws the graph itself (nodes at their saved positions, links coloured by type, the Note's first
line as a caption), so a thumbnail always matches its workflow:

    python -m deadiff_runner.thumbnails            # rewrite example_workflows/*.jpg
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .workflows import EXAMPLES_DIR

SIZE = (512, 384)
BACKGROUND = (32, 32, 32)
NODE_BODY = (53, 53, 53)
NODE_TITLE = (34, 34, 34)
DEADIFF_TITLE = (56, 72, 110)
NOTE_BODY = (102, 85, 51)
TEXT = (220, 220, 220)
# the front end's default link colours (dark palette); anything else is grey
LINK_COLORS = {"MODEL": (137, 120, 167), "CLIP": (234, 203, 139), "CONDITIONING": (207, 135, 111),
               "IMAGE": (128, 161, 192), "LATENT": (179, 142, 173), "VAE": (190, 97, 107),
               "CONTROL_NET": (0, 215, 141), "MASK": (163, 189, 141)}
DEADIFF_TYPES = {"DEADiffModelLoader", "DEADiffStyleEncoder", "DEADiffContentEncoder", "DEADiffApply",
                 "DEADiffMixStyles", "DEADiffMixContents", "DEADiffSaveTokens", "DEADiffLoadStyle",
                 "DEADiffLoadContent", "DEADiffRouting"}
NAMES = {"DEADiffModelLoader": "Load DEADiff Model", "DEADiffStyleEncoder": "DEADiff Style Encoder",
         "DEADiffContentEncoder": "DEADiff Content Encoder", "DEADiffApply": "Apply Disentangled Conditioning",
         "CheckpointLoaderSimple": "Load Checkpoint", "CLIPTextEncode": "CLIP Text Encode",
         "EmptyLatentImage": "Empty Latent Image", "VAEDecode": "VAE Decode", "SaveImage": "Save Image",
         "LoadImage": "Load Image", "ControlNetLoader": "Load ControlNet", "ControlNetApplyAdvanced": "Apply ControlNet",
         "LoraLoader": "Load LoRA", "DEADiffMixStyles": "DEADiff Mix Styles",
         "DEADiffMixContents": "DEADiff Mix Contents", "DEADiffSaveTokens": "DEADiff Save Tokens",
         "DEADiffLoadStyle": "DEADiff Load Style", "DEADiffLoadContent": "DEADiff Load Content",
         "DEADiffRouting": "DEADiff Layer Routing", "SolidMask": "SolidMask", "MaskComposite": "MaskComposite"}
TITLE_HEIGHT = 30  # in graph units, as the front end draws node titles above pos


def _font(size: int):
    for name in ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def render(workflow: dict, caption: str) -> Image.Image:
    nodes = workflow["nodes"]
    boxes = {n["id"]: (n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in nodes}
    left = min(b[0] for b in boxes.values())
    top = min(b[1] for b in boxes.values())
    right = max(b[2] for b in boxes.values())
    bottom = max(b[3] for b in boxes.values())
    banner = 44
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
            x = ((1 - t) ** 3 * start[0] + 3 * (1 - t) ** 2 * t * (start[0] + dx) + 3 * (1 - t) * t ** 2 * (end[0] - dx)
                 + t ** 3 * end[0])
            y = (1 - t) ** 3 * start[1] + 3 * (1 - t) ** 2 * t * start[1] + 3 * (1 - t) * t ** 2 * end[1] + t ** 3 * end[1]
            points.append(big((x, y)))
        draw.line(points, fill=LINK_COLORS.get(kind, (150, 150, 150)), width=2 * scale_up)

    font = _font(max(7, int(11 * scale * 2.2)) * scale_up)
    for node in nodes:
        x0, y0, x1, y1 = boxes[node["id"]]
        p0, p1 = big(at(x0, y0)), big(at(x1, y1))
        is_note = node["type"] == "Note"
        body = NOTE_BODY if is_note else NODE_BODY
        title_color = DEADIFF_TITLE if node["type"] in DEADIFF_TYPES else (NOTE_BODY if is_note else NODE_TITLE)
        radius = 6 * scale_up
        draw.rounded_rectangle([p0, p1], radius=radius, fill=body)
        title_bottom = big(at(x0, y0 + TITLE_HEIGHT))[1]
        draw.rounded_rectangle([p0, (p1[0], title_bottom)], radius=radius, fill=title_color)
        label = node.get("title") or NAMES.get(node["type"], node["type"])
        if node["type"] in DEADIFF_TYPES and not node.get("title"):
            label = NAMES[node["type"]]
        width = p1[0] - p0[0] - 8 * scale_up
        while label and draw.textlength(label, font=font) > width:
            label = label[:-2] + "…" if len(label) > 2 else ""
        draw.text((p0[0] + 4 * scale_up, (p0[1] + title_bottom) / 2), label, fill=TEXT, font=font, anchor="lm")

    caption_font = _font(20 * scale_up)
    draw.text((margin * scale_up, banner * scale_up / 2), caption, fill=TEXT, font=caption_font, anchor="lm")
    return image.resize(SIZE, Image.LANCZOS)


def caption_for(workflow: dict, name: str) -> str:
    """The Note's title without its "Note: " prefix, else the file name."""
    for node in workflow["nodes"]:
        if node["type"] == "Note" and node.get("title"):
            return node["title"].removeprefix("Note:").strip()
    return name.replace("_", " ")


def main(argv=None) -> int:
    folder = Path(argv[0]) if argv else EXAMPLES_DIR
    for path in sorted(folder.glob("*.json")):
        workflow = json.loads(path.read_text(encoding="utf-8"))
        image = render(workflow, caption_for(workflow, path.stem))
        target = path.with_suffix(".jpg")
        image.save(target, quality=88, optimize=True)
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
