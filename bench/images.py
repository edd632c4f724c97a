"""Image grids a person can read: images enlarged to a legible size (nearest neighbour when they are small, so the
24-px testbed's pixels stay sharp), the prompt under each column, a label at the start of each row ("initial",
"final", a LoRA scale), written atomically as PNG.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: images are enlarged to at least this many pixels on a side
MIN_CELL = 96


def _font(size: int) -> ImageFont.ImageFont:
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return ImageFont.truetype(str(path), size)
    except Exception:  # noqa: BLE001 - no matplotlib font: PIL's built-in bitmap font
        return ImageFont.load_default()


def _to_uint8(images) -> np.ndarray:
    """[N,3,H,W] tensor or array in [0,1] -> [N,H,W,3] uint8."""
    arr = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images, dtype=float)
    return (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


def _wrap_px(text: str, font, width: float) -> list[str]:
    """Greedy word wrap to ``width`` pixels (a word longer than the line stands on its own line)."""
    lines: list[str] = []
    for word in str(text).split():
        if lines and font.getlength(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def grid(rows: Sequence, col_labels: Sequence[str] = (), row_labels: Sequence[str] = (),
         title: str | None = None, min_cell: int = MIN_CELL) -> Image.Image:
    """``rows``: a list of image batches [N,3,H,W] in [0,1] (all the same N, H, W). Columns share a label below them
    (the prompt); rows share one at their left."""
    batches = [_to_uint8(r) for r in rows]
    n, h, w = batches[0].shape[:3]
    factor = max(1, -(-min_cell // max(h, w)))
    resample = Image.NEAREST if max(h, w) < min_cell else Image.BICUBIC
    ch, cw = h * factor, w * factor
    font = _font(12)
    pad = 4
    wrap = max(8, cw // 7)
    col_text = [textwrap.wrap(str(t), wrap)[:8] for t in col_labels] if col_labels else []
    label_h = (max((len(t) for t in col_text), default=0) * 14 + pad) if col_text else 0
    row_w = (max((font.getlength(str(t)) for t in row_labels), default=0) + 2 * pad) if row_labels else 0
    row_w = int(row_w)
    width = row_w + n * (cw + pad) + pad
    title_lines = _wrap_px(title, font, width - 2 * pad) if title else []
    title_h = len(title_lines) * 14 + 6 if title else 0
    height = title_h + len(batches) * (ch + pad) + pad + label_h
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        for i, line in enumerate(title_lines):
            draw.text((pad, 3 + i * 14), line, fill="black", font=font)
    for r, batch in enumerate(batches):
        y = title_h + pad + r * (ch + pad)
        if row_labels:
            draw.text((pad, y + ch // 2 - 7), str(row_labels[r]), fill="black", font=font)
        for c in range(n):
            x = row_w + pad + c * (cw + pad)
            canvas.paste(Image.fromarray(batch[c]).resize((cw, ch), resample), (x, y))
    y0 = title_h + pad + len(batches) * (ch + pad)
    for c, lines in enumerate(col_text):
        x = row_w + pad + c * (cw + pad)
        for i, line in enumerate(lines):
            draw.text((x, y0 + i * 14), line, fill="black", font=font)
    return canvas


def save(image: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def save_grid(path: str | Path, rows: Sequence, col_labels: Sequence[str] = (), row_labels: Sequence[str] = (),
              title: str | None = None) -> Path:
    return save(grid(rows, col_labels, row_labels, title), path)
