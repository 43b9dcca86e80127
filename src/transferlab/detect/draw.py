"""Render detections onto an image for a quick visual check."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# right side of the face in one colour, left in another, centre line in a third
_KEYPOINT_COLOURS = ("#ff4040", "#4080ff", "#ffd000", "#ffd000", "#ff4040", "#4080ff")


def draw_detections(image: np.ndarray, records: list[dict]) -> Image.Image:
    """A copy of the image with boxes, scores and keypoints drawn."""
    out = Image.fromarray(image)
    pen = ImageDraw.Draw(out)
    width = max(1, round(max(out.size) / 300))
    for r in records:
        pen.rectangle(r["box"], outline="#00ff00", width=width)
        pen.text((r["box"][0] + 2, r["box"][1] + 2), f"{r['score']:.2f}", fill="#00ff00")
        for (x, y), colour in zip(r["keypoints"], _KEYPOINT_COLOURS):
            pen.ellipse((x - width - 1, y - width - 1, x + width + 1, y + width + 1), fill=colour)
    return out
