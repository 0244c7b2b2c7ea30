"""Procedural product photos: a garment is drawn once, then photographed 2-4 times (the first a
front shot, later ones varied shots or fabric close-ups; the catalog may swap one for a photo
of another product, see :mod:`fashionbert.synthetic.catalog`).

Why this shape: retrieval is scored against the attributes, so each attribute
value must change the pixels in a way a CNN can see (colour fills most of the
silhouette, patterns are bold, sleeve/length/neckline change the outline).
Speed matters too (10k products in well under a minute), so the garment is a
mask of a few polygons with a numpy pattern composited through it, and the
views are single affine transforms of that RGBA layer - no per-pixel Python.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from fashionbert.synthetic.attributes import COLOUR_RGB

S = 256
RGB = tuple[int, int, int]
Op = tuple  # ("piece"|"detail", kind, geometry, role, width)

_LOGO_WORDS = ("FB", "NYC", "LOVE", "88", "GO", "ACE")


def _m(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Mirror points about the vertical centre line (garments are symmetric)."""
    return [(S - x, y) for x, y in pts]


def _lum(c: RGB) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def jitter_colour(name: str, rng: np.random.Generator) -> RGB:
    """The named colour with a small per-product shade change (never enough to cross names)."""
    base = np.array(COLOUR_RGB[name], dtype=np.float64)
    out = base * rng.uniform(0.96, 1.04) + rng.integers(-6, 7, size=3)
    return tuple(int(v) for v in np.clip(out, 0, 255))  # type: ignore[return-value]


def _palette(base: RGB, sub: str) -> dict[str, RGB]:
    """Colours of the roles used by details; outlines stay visible on black and white."""
    lum = _lum(base)
    # Outlines keep white garments visible on light backgrounds, without dragging their mean colour far.
    dark = _mix(base, (0, 0, 0), 0.45 if lum < 190 else 0.3) if lum > 70 else _mix(base, (160, 160, 160), 0.45)
    light = (240, 240, 236)
    return {
        "dark": dark,
        "inner": _mix(base, (0, 0, 0), 0.3 if lum < 190 else 0.2) if lum > 70 else _mix(base, (90, 90, 90), 0.5),
        "trim": _mix(base, (0, 0, 0), 0.18) if lum > 70 else _mix(base, (120, 120, 120), 0.25),
        "accent": light if lum < 150 else _mix(base, (0, 0, 0), 0.55),
        "print": light if lum < 150 else (24, 24, 26),
        # Soles share the upper's hue (dark shade) so small shoes still read as their colour.
        "sole": ((236, 234, 228) if lum >= 60 else (70, 70, 72)) if sub == "sneakers"
        else _mix(base, (0, 0, 0), 0.3 if lum < 180 else 0.15),
        "stitch": (214, 158, 58),
        "metal": (184, 150, 92),
        "lace": light if lum < 170 else (150, 150, 150),
    }


@lru_cache(maxsize=1)
def _grids() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel coordinate grids, a soft fabric shading map and a denim twill map (made once)."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    shade = (1.03 - 0.10 * ((xx - S / 2) / (S / 2)) ** 2 - 0.05 * yy / S)[..., None]
    twill = (1.0 - 0.10 * (((xx + yy) % 4) < 1.5) - 0.05 * (((xx - yy) % 7) < 1))[..., None]
    return yy, xx, shade.astype(np.float32), twill.astype(np.float32)


def pattern_array(pattern: str, base: RGB, accent: RGB, rng: np.random.Generator) -> np.ndarray:
    """A full-canvas fabric (S,S,3 uint8) with the base colour dominant and a bold pattern."""
    yy, xx, _, _ = _grids()
    b = np.array(base, np.float32)
    a = np.array(accent, np.float32)
    out = np.broadcast_to(b, (S, S, 3)).copy()
    if pattern == "stripes":
        period = float(rng.integers(14, 24))
        coord = yy if rng.random() < 0.65 else xx
        sel = ((coord + rng.integers(0, 24)) % period) < period * 0.38
        out[sel] = a
    elif pattern == "dots":
        t = float(rng.integers(18, 27))
        r = t * rng.uniform(0.17, 0.24)
        row = np.floor(yy / t)
        dx = (xx + (row % 2) * t / 2) % t - t / 2
        dy = yy % t - t / 2
        out[dx * dx + dy * dy < r * r] = a
    elif pattern == "check":
        c = float(rng.integers(18, 28))
        band_y = (yy % c) < c * 0.45
        band_x = (xx % c) < c * 0.45
        out[band_y ^ band_x] = b * 0.62 + a * 0.38
        out[band_y & band_x] = b * 0.3 + a * 0.7
        out[((yy + c * 0.7) % c < 2) | ((xx + c * 0.7) % c < 2)] = a
    elif pattern == "floral":
        tile = Image.new("RGB", (64, 64), base)
        d = ImageDraw.Draw(tile)
        centre = (240, 196, 52) if _lum(base) < 180 or base[2] > 120 else (150, 70, 40)
        for cx0, cy0 in ((16, 16), (48, 24), (24, 48), (52, 54)):
            cx, cy = cx0 + rng.uniform(-5, 5), cy0 + rng.uniform(-5, 5)
            pr, rot = rng.uniform(4.0, 5.5), rng.uniform(0, np.pi)
            for k in range(5):
                ang = rot + k * 2 * np.pi / 5
                px, py = cx + np.cos(ang) * pr, cy + np.sin(ang) * pr
                d.ellipse((px - pr * 0.8, py - pr * 0.8, px + pr * 0.8, py + pr * 0.8), fill=accent)
            d.ellipse((cx - 2.6, cy - 2.6, cx + 2.6, cy + 2.6), fill=centre)
        arr = np.tile(np.asarray(tile), (4, 4, 1))
        out = np.roll(arr, (int(rng.integers(64)), int(rng.integers(64))), axis=(0, 1)).astype(np.float32)
    return out


# ----------------------------------------------------------------------------- silhouettes
def _top(a: Mapping[str, str], rng: np.random.Generator) -> list[Op]:
    sub, t = a["sub_category"], 50.0
    left, bot = (74.0, 222.0) if sub == "hoodie" else (80.0, 224.0)
    ops: list[Op] = []
    if sub == "hoodie":
        ops.append(("piece", "ellipse", (92, t - 38, 164, t + 26), "fabric", 2))
    torso = [(106, t), (left - 8, t + 12), (left, t + 62), (left, bot)]
    torso = torso + _m(torso)[::-1]
    if a["sleeve"] == "short":
        sl = [(left - 8, t + 12), (left - 44, t + 60), (left - 22, t + 80), (left, t + 58)]
        cuff: tuple = ((left - 40, t + 64), (left - 22, t + 78))
    else:
        sl = [(left - 8, t + 12), (left - 36, t + 156), (left - 14, t + 160), (left, t + 62)]
        cuff = ((left - 34, t + 144), (left - 12, t + 148))
    ops += [("piece", "poly", sl, "fabric", 2), ("piece", "poly", _m(sl), "fabric", 2),
            ("piece", "poly", torso, "fabric", 2)]
    for c in (cuff, tuple(_m(list(cuff)))):
        ops.append(("detail", "line", list(c), "dark", 2))
    ops.append(("detail", "line", [(left + 2, bot - 8), (S - left - 2, bot - 8)], "dark", 1))
    neck = a.get("neckline", "crew")
    if neck == "crew":
        ops += [("detail", "ellipse", (108, t - 8, 148, t + 16), "inner", 0),
                ("detail", "arc", ((106, t - 10, 150, t + 18), 0, 180), "trim", 4)]
    elif neck == "v-neck":
        ops += [("detail", "poly", [(106, t), (128, t + 38), (150, t)], "inner", 0),
                ("detail", "line", [(106, t), (128, t + 38), (150, t)], "trim", 4)]
    elif neck == "collar":
        ops.append(("detail", "ellipse", (110, t - 8, 146, t + 12), "inner", 0))
        flap = [(106, t - 4), (128, t + 26), (120, t + 34), (96, t + 8)]
        ops += [("piece", "poly", flap, "fabric", 2), ("piece", "poly", _m(flap), "fabric", 2),
                ("detail", "line", [(128, t + 26), (128, bot)], "dark", 2)]
        ops += [("detail", "ellipse", (125, y - 3, 131, y + 3), "accent", 0) for y in range(int(t) + 44, int(bot), 30)]
    else:  # hood
        ops += [("detail", "ellipse", (108, t - 26, 148, t + 18), "inner", 0),
                ("detail", "line", [(116, t + 14), (114, t + 66)], "lace", 3),
                ("detail", "line", [(140, t + 14), (142, t + 66)], "lace", 3),
                ("detail", "poly", [(98, bot - 74), (158, bot - 74), (172, bot - 18), (84, bot - 18)], "trim", 2),
                ("detail", "line", [(left + 2, bot - 14), (S - left - 2, bot - 14)], "dark", 2)]
    if a.get("print", "none") != "none":
        ops.append(("print", a["print"], (128, t + 78 if sub == "t-shirt" else t + 56, 22)))
    return ops


def _dress(a: Mapping[str, str], rng: np.random.Generator) -> list[Op]:
    t, w = 22.0, 96.0
    hem = {"short": 150.0, "midi": 196.0, "long": 246.0}[a["length"]]
    ops: list[Op] = []
    sh = 92.0 if a["sleeve"] == "sleeveless" else 80.0
    if a["sleeve"] != "sleeveless":
        end = t + 52 if a["sleeve"] == "short" else t + 134
        sl = [(80, t + 10), (54, end - 4), (70, end + 2), (88, t + 44)]
        ops += [("piece", "poly", sl, "fabric", 2), ("piece", "poly", _m(sl), "fabric", 2)]
    bodice = [(106, t), (sh, t + 4), (84 if sh > 85 else 80, t + 40), (88, w)]
    ops.append(("piece", "poly", bodice + _m(bodice)[::-1], "fabric", 2))
    if a["sub_category"] == "a-line dress":
        hw = 40 + (hem - w) * 0.5
        ops.append(("piece", "poly", [(88, w), (168, w), (128 + hw, hem), (128 - hw, hem)], "fabric", 2))
        for f in (-0.5, 0.0, 0.5):
            ops.append(("detail", "line", [(128 + f * 30, w + 6), (128 + f * hw * 1.4, hem - 4)], "trim", 1))
    else:
        skirt = [(88, w), (82, w + 34), (92, hem)]
        ops.append(("piece", "poly", skirt + _m(skirt)[::-1], "fabric", 2))
    ops.append(("detail", "line", [(88, w), (168, w)], "dark", 2))
    neck = a["neckline"]
    if neck == "crew":
        ops.append(("detail", "ellipse", (112, t - 8, 144, t + 12), "inner", 0))
    elif neck == "v-neck":
        ops.append(("detail", "poly", [(106, t), (128, t + 36), (150, t)], "inner", 0))
    else:
        ops.append(("detail", "ellipse", (112, t - 6, 144, t + 10), "inner", 0))
        ops += [("piece", "ellipse", (100, t - 6, 130, t + 18), "fabric", 2),
                ("piece", "ellipse", (126, t - 6, 156, t + 18), "fabric", 2)]
    return ops


def _bottoms(a: Mapping[str, str], rng: np.random.Generator) -> list[Op]:
    sub = a["sub_category"]
    hem = 132.0 if sub == "shorts" else 246.0
    out_hem, in_hem = (66.0, 126.0) if sub == "shorts" else ((90.0, 124.0) if sub == "jeans" else (80.0, 124.0))
    leg = [(76, 40), (128.5, 40), (128.5, 104), (in_hem, hem), (out_hem, hem), (72, 120 if sub != "shorts" else 90)]
    ops: list[Op] = [("piece", "poly", leg, "fabric", 2), ("piece", "poly", _m(leg), "fabric", 2),
                     ("piece", "rect", (74, 24, 182, 42), "trim", 2)]
    for x in (90, 128, 166):
        ops.append(("detail", "rect", (x - 3, 22, x + 3, 44), "dark" if sub != "jeans" else "stitch", 0))
    if sub == "jeans":
        ops += [("detail", "arc", ((66, 4, 116, 76), 20, 90), "stitch", 2),
                ("detail", "arc", ((140, 4, 190, 76), 90, 160), "stitch", 2),
                ("detail", "line", [(138, 44), (138, 92), (128, 102)], "stitch", 2),
                ("detail", "line", [(78, 46), (77, 236)], "stitch", 2),
                ("detail", "line", [(178, 46), (179, 236)], "stitch", 2),
                ("detail", "ellipse", (124, 28, 132, 36), "metal", 0)]
        ops += [("detail", "ellipse", (x - 3, 50, x + 3, 56), "metal", 0) for x in (110, 146)]
    else:
        ops += [("detail", "line", [(104, 44), (90, 84)], "dark", 2), ("detail", "line", [(152, 44), (166, 84)], "dark", 2),
                ("detail", "ellipse", (124, 29, 132, 37), "dark", 0)]
        if sub == "trousers":
            ops += [("detail", "line", [(102, 60), (102, hem - 4)], "trim", 1),
                    ("detail", "line", [(154, 60), (154, hem - 4)], "trim", 1)]
        else:
            ops += [("detail", "line", [(out_hem + 2, hem - 10), (in_hem - 2, hem - 10)], "dark", 2),
                    ("detail", "line", [(S - in_hem + 2, hem - 10), (S - out_hem - 2, hem - 10)], "dark", 2)]
    return ops


def _skirt(a: Mapping[str, str], rng: np.random.Generator) -> list[Op]:
    top = 44.0
    ops: list[Op] = [("piece", "rect", (88, 28, 168, top), "trim", 2)]
    if a["sub_category"] == "pleated skirt":
        hem = {"short": 128.0, "midi": 186.0, "long": 242.0}[a["length"]]
        hw = 42 + (hem - top) * 0.42
        ops.append(("piece", "poly", [(88, top), (168, top), (128 + hw, hem), (128 - hw, hem)], "fabric", 2))
        n = 9
        for k in range(1, n):
            f = k / n
            ops.append(("detail", "line", [(88 + 80 * f, top), (128 - hw + 2 * hw * f, hem)], "dark", 2))
    else:
        hem = {"short": 118.0, "midi": 176.0, "long": 232.0}[a["length"]]
        side = [(88, top), (82, top + 34), (94, hem)]
        ops += [("piece", "poly", side + _m(side)[::-1], "fabric", 2),
                ("detail", "line", [(128, hem - 26), (128, hem)], "dark", 3),
                ("detail", "line", [(106, top + 2), (104, top + 30)], "dark", 1),
                ("detail", "line", [(150, top + 2), (152, top + 30)], "dark", 1)]
    return ops


def _shoe_ops(a: Mapping[str, str], dx: float, dy: float) -> list[Op]:
    sub = a["sub_category"]

    def o(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(x + dx, y + dy) for x, y in pts]

    if sub == "sneakers":
        upper = [(38, 168), (42, 128), (62, 114), (104, 112), (150, 104), (190, 124), (216, 150), (222, 168)]
        return [("piece", "poly", o(upper), "fabric", 2),
                ("piece", "rect", (32 + dx, 166 + dy, 226 + dx, 180 + dy), "sole", 2),
                ("detail", "line", o([(34, 174), (224, 174)]), "dark", 1),
                ("detail", "line", o([(104, 112), (120, 150), (196, 150)]), "dark", 2)] + [
                ("detail", "line", o([(116 + 12 * k, 108 + 4 * k), (124 + 12 * k, 122 + 4 * k)]), "lace", 3) for k in range(4)]
    if sub == "boots":
        shaft = 112.0 if a["height"] == "ankle" else 30.0
        body = [(58, shaft), (122, shaft), (124, 150), (172, 160), (214, 176), (220, 196), (56, 196)]
        return [("piece", "poly", o(body), "fabric", 2),
                ("piece", "rect", (52 + dx, 194 + dy, 224 + dx, 206 + dy), "sole", 2),
                ("piece", "rect", (52 + dx, 200 + dy, 86 + dx, 218 + dy), "sole", 2),
                ("detail", "line", o([(114, shaft + 4), (116, 168)]), "dark", 2),
                ("detail", "line", o([(60, shaft + 6), (120, shaft + 6)]), "dark", 2)]
    body = [(58, 100), (68, 98), (100, 132), (150, 156), (190, 166), (222, 182), (228, 200), (218, 208),
            (170, 204), (120, 182), (80, 152), (56, 142)]
    return [("piece", "poly", o(body), "fabric", 2),
            ("piece", "poly", o([(56, 140), (78, 148), (72, 226), (66, 226)]), "sole", 2),
            ("detail", "line", o([(80, 153), (120, 183), (170, 205), (222, 208)]), "sole", 3),
            ("detail", "poly", o([(68, 104), (100, 136), (150, 160), (150, 164), (100, 144), (66, 114)]), "inner", 0)]


def _shoes(a: Mapping[str, str], rng: np.random.Generator) -> list[Op]:
    back, front = ((-26, -22), (14, 14)) if a["sub_category"] == "heels" else ((-20, -26), (12, 18))
    return _shoe_ops(a, *back) + _shoe_ops(a, *front)


def _bag(a: Mapping[str, str], rng: np.random.Generator) -> list[Op]:
    sub = a["sub_category"]
    if sub == "tote":
        ops: list[Op] = [("piece", "arc", ((84, 40, 172, 150), 180, 360), "trim", 9),
                         ("piece", "poly", [(60, 96), (196, 96), (212, 228), (44, 228)], "fabric", 2),
                         ("detail", "line", [(62, 110), (194, 110)], "dark", 1)]
        centre = (128, 162, 28)
    elif sub == "backpack":
        ops = [("piece", "arc", ((106, 34, 150, 78), 180, 360), "trim", 6),
               ("piece", "rect", (52, 84, 70, 206), "trim", 2), ("piece", "rect", (186, 84, 204, 206), "trim", 2),
               ("piece", "rrect", (64, 56, 192, 234), "fabric", 2),
               ("detail", "rrect", (84, 148, 172, 226), "dark", 2),
               ("detail", "arc", ((70, 62, 186, 150), 200, 340), "dark", 2)]
        centre = (128, 116, 22)
    else:
        ops = [("piece", "line", [(78, 126), (100, 22), (156, 22), (178, 126)], "trim", 5),
               ("piece", "rrect", (66, 116, 190, 214), "fabric", 2),
               ("detail", "line", [(66, 168), (128, 182), (190, 168)], "dark", 2),
               ("detail", "ellipse", (122, 174, 134, 186), "metal", 0)]
        centre = (128, 142, 18)
    if a.get("print", "none") != "none":
        ops.append(("print", a["print"], centre))
    return ops


SILHOUETTES: dict[str, Callable[[Mapping[str, str], np.random.Generator], list[Op]]] = {
    "tops": _top, "dresses": _dress, "bottoms": _bottoms, "skirts": _skirt, "shoes": _shoes, "bags": _bag,
}


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _shape(d: ImageDraw.ImageDraw, kind: str, geom, fill, outline=None, width: int = 0) -> None:
    """Draw one primitive filled (mask/solid) or outlined."""
    if kind == "poly":
        d.polygon(geom, fill=fill, outline=outline, width=width or 1)
    elif kind == "ellipse":
        d.ellipse(geom, fill=fill, outline=outline, width=width or 1)
    elif kind == "rect":
        d.rectangle(geom, fill=fill, outline=outline, width=width or 1)
    elif kind == "rrect":
        d.rounded_rectangle(geom, radius=22, fill=fill, outline=outline, width=width or 1)
    elif kind == "line":
        d.line(geom, fill=fill if fill is not None else outline, width=width or 2, joint="curve")
    elif kind == "arc":
        box, start, end = geom
        d.arc(box, start, end, fill=fill if fill is not None else outline, width=width or 2)


def _draw_print(d: ImageDraw.ImageDraw, kind: str, centre: tuple[float, float, float], colour: RGB, rng) -> None:
    cx, cy, r = centre
    if kind == "star":
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.42)
        d.polygon(list(zip(cx + rad * np.cos(ang), cy + rad * np.sin(ang))), fill=colour)
    elif kind == "heart":
        q = r * 0.52
        d.ellipse((cx - 2 * q, cy - q * 1.4, cx, cy + q * 0.6), fill=colour)
        d.ellipse((cx, cy - q * 1.4, cx + 2 * q, cy + q * 0.6), fill=colour)
        d.polygon([(cx - 1.95 * q, cy - 0.1 * q), (cx + 1.95 * q, cy - 0.1 * q), (cx, cy + r * 1.05)], fill=colour)
    else:
        word = _LOGO_WORDS[int(rng.integers(len(_LOGO_WORDS)))]
        d.text((cx, cy), word, fill=colour, font=_font(int(r * 1.3)), anchor="mm", stroke_width=1, stroke_fill=colour)


def render_garment(attrs: Mapping[str, str], rng: np.random.Generator) -> Image.Image:
    """The product alone as a 256x256 RGBA layer (alpha = silhouette), drawn once per product."""
    sub = attrs["sub_category"]
    base = jitter_colour(attrs["colour"], rng)
    pal = _palette(base, sub)
    _, _, shade, twill = _grids()
    fabric = pattern_array(attrs["pattern"], base, pal["accent"], rng) * shade
    if sub == "jeans":
        fabric *= twill
    fabric_img = Image.fromarray(np.clip(fabric, 0, 255).astype(np.uint8), "RGB")
    layer = Image.new("RGB", (S, S), (0, 0, 0))
    mask = Image.new("L", (S, S), 0)
    draw, mdraw = ImageDraw.Draw(layer), ImageDraw.Draw(mask)
    for op in SILHOUETTES[attrs["category"]](attrs, rng):
        if op[0] == "piece":
            _, kind, geom, role, width = op
            _shape(mdraw, kind, geom, 255, width=width)
            if role == "fabric":
                pm = Image.new("L", (S, S), 0)
                _shape(ImageDraw.Draw(pm), kind, geom, 255)
                layer.paste(fabric_img, (0, 0), pm)
                _shape(draw, kind, geom, None, outline=pal["dark"], width=width)
            elif kind in ("line", "arc"):
                _shape(draw, kind, geom, pal[role], width=width)
            else:
                _shape(draw, kind, geom, pal[role], outline=pal["dark"], width=width)
        elif op[0] == "detail":
            _, kind, geom, role, width = op
            filled = width == 0 or kind in ("line", "arc")
            _shape(draw, kind, geom, pal[role] if filled else None, outline=None if filled else pal[role], width=width)
        else:
            _draw_print(draw, op[1], op[2], pal["print"], rng)
    layer.putalpha(mask)
    return layer


def _affine(c: tuple[float, float], scale: float, angle_deg: float, dx: float, dy: float, flip: bool) -> tuple[float, ...]:
    """Inverse map (output -> input pixel): move content centre `c` to the canvas centre,
    scale, rotate, mirror, then shift by (dx, dy)."""
    a = np.deg2rad(angle_deg)
    co, si = np.cos(a) / scale, np.sin(a) / scale
    fx = -1.0 if flip else 1.0
    m = np.array([[fx * co, fx * si], [-si, co]])
    off = np.array(c) - m @ np.array([S / 2 + dx, S / 2 + dy])
    return (m[0, 0], m[0, 1], off[0], m[1, 0], m[1, 1], off[1])


DETAIL_SHARE = 0.4  # chance that a view after the first is a fabric close-up (with a `detail_rng`)
DETAIL_ZOOM = (2.4, 3.2)  # close-up magnification over the whole-garment shot


def _detail_shot(layer: Image.Image, alpha: Image.Image, fit: float, bg: tuple[int, ...],
                 rng: np.random.Generator) -> Image.Image:
    """A fabric close-up: the garment magnified ~3x around a point well inside it.

    Shop photo sets mix whole-garment shots with such details. A close-up shows the colour,
    pattern and print up close but not the outline, so the cut, sleeves and length cannot be
    read off it: a model reading all of a product's photos has to weigh them, not average them.
    """
    ys, xs = np.nonzero(np.asarray(alpha) > 0)
    if len(xs) == 0:
        centre = (S / 2, S / 2)
    else:  # a garment pixel inside the central half of the silhouette's extent
        x0, x1, y0, y1 = np.percentile(xs, 25), np.percentile(xs, 75), np.percentile(ys, 25), np.percentile(ys, 75)
        inner = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
        i = int(rng.choice(np.flatnonzero(inner))) if inner.any() else int(rng.integers(len(xs)))
        centre = (float(xs[i]), float(ys[i]))
    scale = fit * rng.uniform(*DETAIL_ZOOM)
    canvas = Image.new("RGB", (S, S), tuple(bg))
    g_img = layer.transform((S, S), Image.Transform.AFFINE, _affine(centre, scale, rng.uniform(-6, 6), 0.0, 0.0, False),
                            resample=Image.Resampling.BILINEAR)
    canvas.paste(g_img, (0, 0), g_img)
    return canvas


FRONT, GARMENT, CLOSE_UP, STRAY = "front", "garment", "close-up", "stray"
VIEW_KINDS = (FRONT, GARMENT, CLOSE_UP, STRAY)  # STRAY: a photo of another product (set by the catalog)


@dataclass(frozen=True)
class PhotoSet:
    """A product's photos and what each one shows (one of ``VIEW_KINDS``), in the same order."""

    images: list[Image.Image]
    kinds: list[str]


def render_views(attrs: Mapping[str, str], rng: np.random.Generator, n_views: int,
                 detail_rng: np.random.Generator | None = None) -> list[Image.Image]:
    """The photos of :func:`render_photo_set`, without their kinds."""
    return render_photo_set(attrs, rng, n_views, detail_rng).images


def render_photo_set(attrs: Mapping[str, str], rng: np.random.Generator, n_views: int,
                     detail_rng: np.random.Generator | None = None) -> PhotoSet:
    """`n_views` 256x256 RGB photos of one product: varied background, scale, tilt, offset, shadow.

    With ``detail_rng``, each view after the first is a fabric close-up with probability
    ``DETAIL_SHARE`` (:func:`_detail_shot`). The close-ups draw only from ``detail_rng`` and
    every whole-garment view still draws what it drew before, so a view that stays a
    whole-garment shot has the same pixels with or without close-ups.
    """
    layer = render_garment(attrs, rng)
    alpha = layer.getchannel("A")
    shadow = alpha.filter(ImageFilter.BoxBlur(5)).point(lambda v: v * 0.32)
    flip_ok = attrs.get("print", "none") != "logo"
    x0, y0, x1, y1 = alpha.getbbox() or (0, 0, S, S)
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    fit = min(1.5, 230 / max(x1 - x0, y1 - y0))  # small items (shorts, minis) fill the frame too
    views: list[Image.Image] = []
    kinds: list[str] = []
    for v in range(n_views):
        g = int(rng.integers(214, 244))
        bg = tuple(int(np.clip(g + t, 0, 255)) for t in rng.integers(-7, 8, size=3))
        if v == 0:  # a near-canonical front shot first: retrieval thumbnails use it
            scale, ang, dx, dy, flip = rng.uniform(0.86, 0.95), rng.uniform(-2, 2), 0.0, 0.0, False
        else:
            scale = rng.uniform(0.72, 1.04)
            ang = rng.uniform(-9, 9)
            dx, dy = rng.uniform(-16, 16, size=2)
            flip = flip_ok and rng.random() < 0.3
        scale *= fit
        shadow_offset = (rng.uniform(2, 7), rng.uniform(3, 9)) if rng.random() < 0.6 else None
        if v > 0 and detail_rng is not None and detail_rng.random() < DETAIL_SHARE:
            # drawn after this view's whole-garment draws, so the later views keep their pixels
            views.append(_detail_shot(layer, alpha, fit, bg, detail_rng))
            kinds.append(CLOSE_UP)
            continue
        canvas = Image.new("RGB", (S, S), bg)
        if shadow_offset is not None:
            sdx, sdy = shadow_offset
            sh = shadow.transform((S, S), Image.Transform.AFFINE, _affine(centre, scale, ang, dx + sdx, dy + sdy, flip),
                                  resample=Image.Resampling.NEAREST)  # blurred already
            canvas.paste((int(bg[0] * 0.55), int(bg[1] * 0.55), int(bg[2] * 0.55)), (0, 0, S, S), sh)
        # Bilinear costs ~2 ms a view on these CPUs; only the canonical first view gets it
        # (the source drawing is not anti-aliased, so nearest loses little on the others).
        resample = Image.Resampling.BILINEAR if v == 0 else Image.Resampling.NEAREST
        g_img = layer.transform((S, S), Image.Transform.AFFINE, _affine(centre, scale, ang, dx, dy, flip),
                                resample=resample)
        canvas.paste(g_img, (0, 0), g_img)
        views.append(canvas)
        kinds.append(FRONT if v == 0 else GARMENT)
    return PhotoSet(views, kinds)
