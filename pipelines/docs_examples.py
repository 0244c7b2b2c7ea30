"""Contact sheet of synthetic catalog examples for the docs.

Run: python -m pipelines.docs_examples --out docs/synthetic_examples.png

Generates a few products (seed 0, two per category) into a temp dir and lays
out each product's views with its English and Chinese titles, so a reader
can check at a glance that the pictures show what the titles say (a stray photo of another
product, ``image_kinds``, is outlined in red).  Chinese
needs a CJK font; without one only the English titles are drawn.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from fashionbert.synthetic import generate_catalog
from fashionbert.synthetic.attributes import CATEGORIES

THUMB = 150
CELL_W = 4 * THUMB + 3 * 4
TEXT_H = 62
PAD = 14
_CJK_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "C:/Windows/Fonts/msyh.ttc",
)


def find_cjk_font() -> str | None:
    """A font file with Chinese glyphs: fontconfig first, then well-known paths; None if absent."""
    paths: list[str] = []
    try:
        out = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=10).stdout
        paths = [line.split(":")[0].strip() for line in out.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    for p in sorted(paths, key=lambda p: ("wqy" not in p.lower() and "noto" not in p.lower(), p)) + list(_CJK_CANDIDATES):
        if Path(p).is_file():
            return p
    return None


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """Truncate with an ellipsis so long titles stay inside their cell."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def pick_examples(rows: list[dict], per_category: int) -> list[dict]:
    """The first `per_category` products of each category, in category order."""
    out = []
    for cat in CATEGORIES:
        out += [r for r in rows if r["category"] == cat][:per_category]
    return out


def contact_sheet(catalog_dir: Path, rows: list[dict], cols: int = 2) -> Image.Image:
    cjk_path = find_cjk_font()
    en_font = ImageFont.load_default(size=15)
    zh_font = ImageFont.truetype(cjk_path, 16) if cjk_path else None
    small = ImageFont.load_default(size=11)
    n_rows = -(-len(rows) // cols)
    sheet = Image.new("RGB", (cols * (CELL_W + PAD) + PAD, n_rows * (THUMB + TEXT_H + PAD) + PAD), "white")
    draw = ImageDraw.Draw(sheet)
    for k, row in enumerate(rows):
        x0 = PAD + (k % cols) * (CELL_W + PAD)
        y0 = PAD + (k // cols) * (THUMB + TEXT_H + PAD)
        kinds = row.get("image_kinds") or []
        for v, rel in enumerate(row["images"]):
            with Image.open(catalog_dir / rel) as im:
                sheet.paste(im.convert("RGB").resize((THUMB, THUMB), Image.Resampling.LANCZOS), (x0 + v * (THUMB + 4), y0))
            if v < len(kinds) and kinds[v] == "stray":  # a photo of another product: marked, so no reader is misled
                x = x0 + v * (THUMB + 4)
                draw.rectangle((x, y0, x + THUMB - 1, y0 + THUMB - 1), outline=(220, 30, 30), width=3)
                draw.text((x + 6, y0 + 4), "stray: another product", fill=(220, 30, 30), font=small)
        ty = y0 + THUMB + 4
        draw.text((x0, ty), _fit(draw, row["title_en"], en_font, CELL_W), fill=(20, 20, 20), font=en_font)
        if zh_font is not None:
            draw.text((x0, ty + 19), _fit(draw, row["title_zh"], zh_font, CELL_W), fill=(20, 20, 20), font=zh_font)
        attrs = ", ".join(f"{k}={v}" for k, v in row["attributes"] if k not in ("category",))
        draw.text((x0, ty + 40), _fit(draw, f"{row['product_id']}  {attrs}", small, CELL_W), fill=(110, 110, 110), font=small)
    return sheet


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Contact sheet of synthetic catalog examples")
    ap.add_argument("--out", type=Path, default=Path("docs/synthetic_examples.png"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-category", type=int, default=2)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="synth-examples-") as tmp:
        res = generate_catalog(tmp, 16 * args.per_category * 2, seed=args.seed, workers=1, progress=False)
        rows = pick_examples(pq.read_table(res.catalog_path).to_pylist(), args.per_category)
        sheet = contact_sheet(Path(tmp), rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    font = find_cjk_font()
    print(f"wrote {args.out} ({len(rows)} products; CJK font: {font or 'none, English titles only'})")


if __name__ == "__main__":
    main()
