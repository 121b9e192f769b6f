"""Rendered text inputs for the OCR models of the benchmarks (`write_inputs(..., style="text")`).

Lines of random words (letters and digits) drawn with Pillow's bundled scalable font (`ImageFont.load_default`,
no system font needed), dark on a light, slightly uneven background with sensor noise: closer to what an OCR
model is made for than the scaled 8x8 digit glyphs of the `glyphs` style. Still synthetic: no real scans, and
the OCR models' own languages (Chinese) are not drawn. Every image is made from the seed alone.
"""

from __future__ import annotations

import string

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CHARS = string.ascii_letters + string.digits


def _word(rng: np.random.Generator) -> str:
    return "".join(rng.choice(list(CHARS), int(rng.integers(2, 9))))


def _canvas(rng: np.random.Generator, h: int, w: int) -> tuple[Image.Image, int]:
    """A light background (grey level 200-255 with a gentle gradient) and a dark ink level for its text."""
    base = int(rng.integers(200, 256))
    ramp = np.linspace(0, rng.uniform(-25, 25), w)[None, :] + np.zeros((h, 1))
    img = Image.fromarray(np.clip(base + ramp, 0, 255).astype(np.uint8), "L")
    return img, int(rng.integers(0, 80))


def _finish(img: Image.Image, rng: np.random.Generator) -> np.ndarray:
    a = np.asarray(img, np.float32) / 255.0
    return np.clip(a + rng.normal(0, 0.02, a.shape), 0, 1).astype(np.float32)


def text_line(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """One text line filling most of the height of an [h, w] image (a recogniser's or classifier's crop)."""
    img, ink = _canvas(rng, h, w)
    size = int(h * rng.uniform(0.55, 0.8))
    font = ImageFont.load_default(size=size)
    d = ImageDraw.Draw(img)
    x, y = int(rng.integers(0, max(1, w // 10))), int(rng.integers(0, max(1, h - size - size // 4)))
    while x < w * rng.uniform(0.6, 1.0):
        word = _word(rng)
        d.text((x, y), word, font=font, fill=ink)
        x += int(d.textlength(word + " ", font=font))
    return _finish(img, rng)


def text_page(rng: np.random.Generator, h: int, w: int, scattered: bool = False) -> np.ndarray:
    """An [h, w] page: several text lines of different sizes (a detector's input), or with `scattered`, single
    characters at random places and sizes (a click-captcha)."""
    img, ink = _canvas(rng, h, w)
    d = ImageDraw.Draw(img)
    if scattered:
        for _ in range(int(rng.integers(3, 8))):
            size = int(rng.integers(h // 12, h // 6))
            font = ImageFont.load_default(size=size)
            d.text((int(rng.integers(0, w - size)), int(rng.integers(0, h - size))), str(rng.choice(list(CHARS))),
                   font=font, fill=int(rng.integers(0, 120)))
        return _finish(img, rng)
    y = int(rng.integers(0, h // 10 + 1))
    while True:
        size = int(rng.integers(max(10, h // 30), max(11, h // 10)))
        if y + size > h:
            break
        font = ImageFont.load_default(size=size)
        x, end = int(rng.integers(0, w // 4)), int(w * rng.uniform(0.4, 1.0))
        while x < end:
            word = _word(rng)
            d.text((x, y), word, font=font, fill=ink)
            x += int(d.textlength(word + " ", font=font))
        y += int(size * rng.uniform(1.4, 2.5))
    return _finish(img, rng)


def lines(rng: np.random.Generator, h: int, w: int, n: int, flip: float = 0.0) -> np.ndarray:
    """`n` text lines [n, h, w] in 0..1; a fraction `flip` turned upside down (an orientation classifier's other
    class)."""
    out = np.stack([text_line(rng, h, w) for _ in range(n)])
    turn = rng.random(n) < flip
    out[turn] = out[turn][:, ::-1, ::-1]
    return out


def pages(rng: np.random.Generator, h: int, w: int, n: int, scattered: bool = False) -> np.ndarray:
    """`n` pages [n, h, w] in 0..1 (`text_page`)."""
    return np.stack([text_page(rng, h, w, scattered) for _ in range(n)])
