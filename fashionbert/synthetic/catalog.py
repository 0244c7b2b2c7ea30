"""generate_catalog: the project's embedded default data set (ARCHITECTURE.md section 7).

Products are generated in parallel (a process pool over chunks of indices);
each product draws from its own RNG seeded by (seed, split, index, stream), so
the output is byte-identical whatever the number of workers.  Workers write
the JPEGs; the main process collects rows in product order and writes the
Parquet catalog and the click log.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from fashionbert.synthetic.attributes import SUB_CATEGORIES, eligible_sub_categories, sample_attributes
from fashionbert.synthetic.drawing import STRAY, render_photo_set, render_views
from fashionbert.synthetic.seasons import draw_season, season_phrase, trend_tags
from fashionbert.synthetic.text import description, look_tags, make_tags, queries, title_en, title_keys, title_zh

SPLIT_CODE = {"train": 0, "test": 1}
ID_PREFIX = {"train": "tr", "test": "te"}
JPEG_QUALITY = 90
_CHUNK = 32

CATALOG_SCHEMA = pa.schema(
    [
        ("product_id", pa.string()),
        ("title", pa.string()),
        ("title_en", pa.string()),
        ("title_zh", pa.string()),
        ("lang", pa.string()),
        ("description", pa.string()),
        ("category", pa.string()),
        ("sub_category", pa.string()),
        ("images", pa.list_(pa.string())),
        ("queries", pa.list_(pa.string())),
        ("tags", pa.list_(pa.string())),
        ("price", pa.float64()),
        ("attributes", pa.map_(pa.string(), pa.string())),
        # The attribute keys ``title`` names (the rest it leaves out): what a perfect reader of the
        # title could know, for the Bayes ceiling of random-100 (fashionbert.evaluation.ceiling).
        ("title_attributes", pa.list_(pa.string())),
        # What each of ``images`` shows (drawing.VIEW_KINDS: front, garment, close-up, stray): the
        # generator's ground truth, for diagnostics only (e.g. the tagger's weight on stray photos).
        ("image_kinds", pa.list_(pa.string())),
    ]
)
QUERY_LOG_SCHEMA = pa.schema([("query", pa.string()), ("product_id", pa.string()), ("clicks", pa.int32())])


@dataclass(frozen=True)
class SynthResult:
    """Where the catalog went and how long it took."""

    catalog_path: Path
    query_log_path: Path
    n_products: int
    n_images: int
    seconds: float


STRAY_SHARE = 0.2  # share of products whose photo set holds one photo of another product


def product_rngs(seed: int, split: str, index: int) -> tuple[np.random.Generator, ...]:
    """Independent streams for attributes, text, pixels, the collection season, the close-ups and
    the stray photos.

    Separate streams so a text change never moves an image, the season (added later) moved
    no attribute and no pixel of an existing product, the close-up views (added after it)
    moved no whole-garment view, and the stray photos (added last) moved no other photo.
    """
    return tuple(np.random.default_rng([seed, SPLIT_CODE[split], index, s]) for s in range(6))


def stray_photo(attrs: dict[str, str], split: str, rng: np.random.Generator) -> Image.Image:
    """A photo of another product of the same sub-category in another colour: a merchant's mix-up.

    Real photo sets hold such strays (a sibling listing's colourway uploaded by mistake). A
    model that averages a product's photos mixes the stray's colour and pattern into the
    product's; one that weighs its photos against the title can drop it (issue 7's high-level
    attention). The stray is a varied, not a front, shot of the other product.
    """
    other = sample_attributes(rng, split, [attrs["sub_category"]])
    for _ in range(8):  # a different colour, so the mix-up is visible (few sub-categories have one colour)
        if other["colour"] != attrs["colour"]:
            break
        other = sample_attributes(rng, split, [attrs["sub_category"]])
    return render_views(other, rng, 2)[1]


def price_of(sub_category: str, rng: np.random.Generator) -> float:
    """Base price of the sub-category times lognormal noise, rounded to a .9 / .99 shop price."""
    p = SUB_CATEGORIES[sub_category].base_price * float(rng.lognormal(0.0, 0.35))
    if rng.random() < 0.5:
        return float(max(9.9, round(p / 10.0) * 10.0 - 0.1))
    return float(round(max(1, int(p)) + 0.99, 2))


def make_product(index: int, seed: int, split: str, subs: Sequence[str], out_dir: Path, id_prefix: str | None = None) -> dict[str, Any]:
    """One product row; its 2-4 views (a front shot first, then varied shots and close-ups, and for
    ``STRAY_SHARE`` of products one stray photo of another product) are written to `out_dir/images/`."""
    r_attr, r_text, r_img, r_season, r_detail, r_stray = product_rngs(seed, split, index)
    attrs = sample_attributes(r_attr, split, subs)
    season = draw_season(r_season)
    listing = {**attrs, "season": season}  # the season is a fact of the listing, not a visual attribute
    pid = f"{id_prefix or ID_PREFIX[split]}-{index + 1:06d}"
    keys_en = title_keys(attrs, r_text)
    t_en = season_phrase(season, "en", r_season) + " " + title_en(attrs, r_text, keys_en)
    keys_zh = title_keys(attrs, r_text)
    t_zh = season_phrase(season, "zh", r_season) + title_zh(attrs, r_text, keys_zh)
    lang = "zh" if r_text.random() < 0.5 else "en"
    looks = look_tags(attrs)
    row: dict[str, Any] = {
        "product_id": pid,
        "title": t_zh if lang == "zh" else t_en,
        "title_en": t_en,
        "title_zh": t_zh,
        "lang": lang,
        "description": description(attrs, lang, looks, r_text),
        "category": attrs["category"],
        "sub_category": attrs["sub_category"],
        "images": [],
        "queries": queries(attrs, r_text),
        "tags": make_tags(attrs, looks, trend_tags(listing)),
        "price": price_of(attrs["sub_category"], r_text),
        "attributes": sorted(listing.items()),
        "title_attributes": sorted(keys_zh if lang == "zh" else keys_en),
    }
    photos = render_photo_set(attrs, r_img, int(r_img.integers(2, 5)), detail_rng=r_detail)
    images, kinds = list(photos.images), list(photos.kinds)
    if r_stray.random() < STRAY_SHARE:  # never the front shot: thumbnails and the index use it
        slot = 1 + int(r_stray.integers(len(images) - 1))
        images[slot], kinds[slot] = stray_photo(attrs, split, r_stray), STRAY
    for v, img in enumerate(images):
        rel = f"images/{pid}_{v}.jpg"
        img.save(out_dir / rel, "JPEG", quality=JPEG_QUALITY)
        row["images"].append(rel)
    row["image_kinds"] = kinds
    return row


def _work(args: tuple[list[int], int, str, tuple[str, ...], str, str | None]) -> list[dict[str, Any]]:
    idx, seed, split, subs, out_dir, id_prefix = args
    return [make_product(i, seed, split, subs, Path(out_dir), id_prefix) for i in idx]


def query_log(rows: Sequence[dict[str, Any]], seed: int, split: str) -> pa.Table:
    """Clicks of each product's queries; ~10 % of clicks leak to another product of the same sub-category.

    The leak models real logs (mis-clicks, near-duplicates) so a pretraining
    stage that trusts clicks blindly sees realistic label noise.
    """
    rng = np.random.default_rng([seed, SPLIT_CODE[split], 2**32 - 1])
    by_sub: dict[str, list[str]] = {}
    for r in rows:
        by_sub.setdefault(r["sub_category"], []).append(r["product_id"])
    q_out: list[str] = []
    p_out: list[str] = []
    c_out: list[int] = []
    for r in rows:
        peers = by_sub[r["sub_category"]]
        for q in r["queries"]:
            if rng.random() < 0.25:
                continue
            clicks = int(rng.integers(1, 30))
            noise = int(rng.binomial(clicks, 0.1)) if len(peers) > 1 else 0
            if clicks - noise > 0:
                q_out.append(q), p_out.append(r["product_id"]), c_out.append(clicks - noise)
            if noise:
                other = r["product_id"]
                while other == r["product_id"]:
                    other = peers[int(rng.integers(len(peers)))]
                q_out.append(q), p_out.append(other), c_out.append(noise)
    return pa.table({"query": q_out, "product_id": p_out, "clicks": pa.array(c_out, pa.int32())},
                    schema=QUERY_LOG_SCHEMA)


def generate_catalog(
    out_dir: str | Path,
    n_products: int,
    seed: int = 0,
    split: Literal["train", "test"] = "train",
    workers: int | None = None,
    categories: Sequence[str] | None = None,
    exclude_categories: Sequence[str] | None = None,
    progress: bool = True,
    id_prefix: str | None = None,
) -> SynthResult:
    """Write `out_dir/catalog.parquet`, `out_dir/query_log.parquet` and `out_dir/images/*.jpg`.

    Same arguments give byte-identical files whatever `workers` is.  Products of
    `split` only use (sub_category, colour, pattern) combinations of that split.
    Ids are ``<prefix>-NNNNNN`` (prefix ``tr``/``te`` by split unless
    ``id_prefix`` is given: catalogs that will be indexed together need
    different prefixes, e.g. an old catalog and a new category's).
    """
    if id_prefix is not None and (not id_prefix or any(c in id_prefix for c in "/\\ ")):
        raise ValueError(f"id_prefix must be non-empty without slashes or spaces, got {id_prefix!r}")
    t0 = time.perf_counter()
    if n_products < 0:
        raise ValueError("n_products must be >= 0")
    subs = eligible_sub_categories(split, categories, exclude_categories)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    workers = max(1, workers or os.cpu_count() or 1)
    size = max(1, min(_CHUNK, -(-n_products // (4 * workers))))  # small runs still spread over workers
    chunks = [list(range(i, min(i + size, n_products))) for i in range(0, n_products, size)]
    workers = min(workers, max(1, len(chunks)))
    jobs = [(c, seed, split, subs, str(out), id_prefix) for c in chunks]
    rows: list[dict[str, Any]] = []
    with tqdm(total=n_products, unit="product", disable=not progress, desc=f"synth {split}") as bar:
        if workers == 1:
            results = map(_work, jobs)
            for part in results:
                rows.extend(part), bar.update(len(part))
        else:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ctx.Pool(workers) as pool:
                for part in pool.imap(_work, jobs):
                    rows.extend(part), bar.update(len(part))
    table = pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA)
    catalog_path, log_path = out / "catalog.parquet", out / "query_log.parquet"
    pq.write_table(table, catalog_path)
    pq.write_table(query_log(rows, seed, split), log_path)
    return SynthResult(
        catalog_path=catalog_path,
        query_log_path=log_path,
        n_products=len(rows),
        n_images=sum(len(r["images"]) for r in rows),
        seconds=time.perf_counter() - t0,
    )
