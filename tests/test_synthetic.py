"""Tests of the synthetic catalog generator (fashionbert.synthetic).

The catalog is the ground truth for retrieval metrics, so these tests check
the properties that make it a fair benchmark: determinism, the exact Arrow
schema, held-out attribute combinations, and text that names what the picture
actually shows.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fashionbert.synthetic import SynthResult, attribute_combo, generate_catalog, split_of_combo
from fashionbert.synthetic.attributes import (
    CATEGORIES,
    COLOUR_RGB,
    COLOURS,
    PATTERNS,
    SUB_CATEGORIES,
    combos_of,
    eligible_sub_categories,
    sample_attributes,
)
from fashionbert.synthetic import catalog as catalog_module
from fashionbert.synthetic.catalog import CATALOG_SCHEMA, STRAY_SHARE, product_rngs
from fashionbert.synthetic.drawing import STRAY, VIEW_KINDS, render_garment, render_photo_set, render_views
from fashionbert.synthetic.seasons import SEASONS, TREND_COLOUR_SEASONS, draw_season, trend_tags
from fashionbert.synthetic.text import (
    look_tags,
    make_tags,
    nameable_keys,
    queries,
    title_en,
    title_keys,
    title_keys_probability,
    title_likelihood,
    title_zh,
)

EXPECTED_SCHEMA = pa.schema(
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
        ("title_attributes", pa.list_(pa.string())),
        ("image_kinds", pa.list_(pa.string())),
    ]
)
CJK = re.compile(r"[\u4e00-\u9fff]")
PALETTE = np.array(list(COLOUR_RGB.values()), dtype=np.float64)
PALETTE_NAMES = list(COLOUR_RGB)


def nearest_colour(rgb: np.ndarray) -> str:
    return PALETTE_NAMES[int(np.argmin(((PALETTE - rgb) ** 2).sum(axis=1)))]


def sample_attrs(n: int, seed: int, split: str) -> list[dict[str, str]]:
    subs = eligible_sub_categories(split)
    return [sample_attributes(product_rngs(seed, split, i)[0], split, subs) for i in range(n)]


def read_images(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "images").glob("*.jpg"))}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[SynthResult, pa.Table]:
    out = tmp_path_factory.mktemp("cat")
    res = generate_catalog(out, 60, seed=3, workers=1, progress=False)
    return res, pq.read_table(res.catalog_path)


def test_schema_ids_and_images(catalog: tuple[SynthResult, pa.Table]) -> None:
    res, table = catalog
    assert table.schema.remove_metadata().equals(EXPECTED_SCHEMA)
    assert CATALOG_SCHEMA.equals(EXPECTED_SCHEMA)
    assert res.n_products == table.num_rows == 60
    ids = table.column("product_id").to_pylist()
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"tr-\d{6}", i) for i in ids)
    assert ids == sorted(ids)  # rows in product order
    n_images = 0
    for row in table.to_pylist():
        assert 2 <= len(row["images"]) <= 4
        for rel in row["images"]:
            assert rel.startswith("images/") and not Path(rel).is_absolute()
            with Image.open(res.catalog_path.parent / rel) as im:
                assert im.format == "JPEG" and im.mode == "RGB" and im.size == (256, 256)
                im.load()
            n_images += 1
        attrs = dict(row["attributes"])
        assert attrs["category"] == row["category"] and attrs["sub_category"] == row["sub_category"]
        assert SUB_CATEGORIES[row["sub_category"]].category == row["category"]
        assert row["lang"] in ("zh", "en")
        assert row["title"] == (row["title_zh"] if row["lang"] == "zh" else row["title_en"])
        assert attrs["colour"] not in row["tags"] and attrs["season"] in SEASONS and row["price"] > 0
        assert 2 <= len(row["queries"]) <= 4 and row["description"]
    assert n_images == res.n_images
    langs = Counter(table.column("lang").to_pylist())
    assert langs["zh"] >= 15 and langs["en"] >= 15


def test_deterministic_and_independent_of_workers(tmp_path: Path) -> None:
    a = generate_catalog(tmp_path / "a", 40, seed=5, workers=1, progress=False)
    b = generate_catalog(tmp_path / "b", 40, seed=5, workers=2, progress=False)
    assert pq.read_table(a.catalog_path).equals(pq.read_table(b.catalog_path))
    assert a.catalog_path.read_bytes() == b.catalog_path.read_bytes()
    assert a.query_log_path.read_bytes() == b.query_log_path.read_bytes()
    imgs_a, imgs_b = read_images(tmp_path / "a"), read_images(tmp_path / "b")
    assert imgs_a and imgs_a == imgs_b
    c = generate_catalog(tmp_path / "c", 40, seed=6, workers=1, progress=False)
    ta, tc = pq.read_table(a.catalog_path), pq.read_table(c.catalog_path)
    assert ta.column("title").to_pylist() != tc.column("title").to_pylist()
    assert ta.column("attributes").to_pylist() != tc.column("attributes").to_pylist()
    imgs_c = read_images(tmp_path / "c")
    shared = set(imgs_a) & set(imgs_c)
    assert sum(imgs_a[k] == imgs_c[k] for k in shared) == 0


def test_split_hash_is_fixed_and_balanced() -> None:
    for sub in SUB_CATEGORIES:
        n_train, n_test = len(combos_of(sub, "train")[0]), len(combos_of(sub, "test")[0])
        assert n_test >= 1 and n_train / (n_train + n_test) >= 0.6, sub
    combo = ("t-shirt", "red", "stripes")
    assert split_of_combo(combo) == split_of_combo(list(combo)) in ("train", "test")
    every = [(s, c, p) for s, sub in SUB_CATEGORIES.items() for c in sub.options["colour"] for p in sub.options["pattern"]]
    frac = sum(split_of_combo(c) == "test" for c in every) / len(every)
    assert 0.1 < frac < 0.3
    train = [c for c in every if split_of_combo(c) == "train"]
    assert {c for _, c, _ in train} == set(COLOURS) and {p for _, _, p in train} == set(PATTERNS)
    assert {s for s, _, _ in train} == set(SUB_CATEGORIES)


def test_train_and_test_never_share_a_combo(tmp_path: Path) -> None:
    train = sample_attrs(3000, seed=0, split="train")
    test = sample_attrs(800, seed=1, split="test")
    tr = {attribute_combo(a) for a in train}
    te = {attribute_combo(a) for a in test}
    assert tr and te and not (tr & te)
    assert all(split_of_combo(c) == "train" for c in tr) and all(split_of_combo(c) == "test" for c in te)
    for key in ("sub_category", "colour", "pattern"):
        assert {a[key] for a in test} <= {a[key] for a in train}, key
    # The same holds for written catalogs.
    r_tr = generate_catalog(tmp_path / "tr", 30, seed=11, split="train", workers=1, progress=False)
    r_te = generate_catalog(tmp_path / "te", 30, seed=12, split="test", workers=1, progress=False)
    t_tr, t_te = pq.read_table(r_tr.catalog_path), pq.read_table(r_te.catalog_path)
    assert all(i.startswith("te-") for i in t_te.column("product_id").to_pylist())
    c_tr = {attribute_combo(dict(m)) for m in t_tr.column("attributes").to_pylist()}
    c_te = {attribute_combo(dict(m)) for m in t_te.column("attributes").to_pylist()}
    assert not (c_tr & c_te) and all(split_of_combo(c) == "test" for c in c_te)


def _mentions(text: str, names: tuple[str, ...]) -> bool:
    low = text.lower()
    return any(n.lower() in low for n in names)


def test_titles_name_colour_and_sub_category() -> None:
    other_en = {c: [n for o, t in COLOURS.items() if o != c for n in t.en] for c in COLOURS}
    t_len = {"en": [], "zh": []}
    q_len = {"en": [], "zh": []}
    for i, attrs in enumerate(sample_attrs(400, seed=7, split="train")):
        rng = product_rngs(7, "train", i)[1]
        en, zh = title_en(attrs, rng), title_zh(attrs, rng)
        sub, colour = SUB_CATEGORIES[attrs["sub_category"]], COLOURS[attrs["colour"]]
        assert en.isascii() and CJK.search(zh), (en, zh)
        assert _mentions(en, colour.en) and _mentions(zh, colour.zh), (attrs, en, zh)
        assert _mentions(en, sub.en) and _mentions(zh, sub.zh), (attrs, en, zh)
        words = set(re.findall(r"[a-z]+", en.lower()))
        assert not words & set(other_en[attrs["colour"]]), (attrs, en)
        t_len["en"].append(len(en)), t_len["zh"].append(len(zh))
        for q in queries(attrs, rng):
            q_len["zh" if CJK.search(q) else "en"].append(len(q))
    for lang in ("en", "zh"):
        assert np.mean(q_len[lang]) < 0.8 * np.mean(t_len[lang]), lang


def test_tags_are_the_merchant_hashtags_with_looks_from_attribute_combinations() -> None:
    base = {"category": "tops", "sub_category": "t-shirt", "sleeve": "short", "neckline": "crew", "print": "none"}
    plain_black = {**base, "colour": "black", "pattern": "solid"}
    assert make_tags(plain_black, look_tags(plain_black)) == ["minimalist"]  # no sub-category or colour tag
    # Each look is a conjunction: change one attribute of the combination and it goes.
    assert "minimalist" not in look_tags({**plain_black, "print": "star"})
    assert "minimalist" not in look_tags({**plain_black, "colour": "red"})
    red_dots = {**base, "colour": "red", "pattern": "dots"}
    assert make_tags(red_dots, look_tags(red_dots), ["in-season-cut"]) == ["dots", "statement", "vintage", "in-season-cut"]
    assert "vintage" not in look_tags({**red_dots, "colour": "blue"}) and "statement" in look_tags({**red_dots, "colour": "blue"})
    office = {"category": "bottoms", "sub_category": "trousers", "colour": "navy", "pattern": "stripes"}
    assert "office" in look_tags(office) and "office" not in look_tags({**office, "pattern": "check"})
    assert "office" not in look_tags({**office, "colour": "yellow"})
    tags_per_product, looks = [], Counter()
    for i, attrs in enumerate(sample_attrs(600, seed=3, split="train")):
        attrs["season"] = draw_season(product_rngs(3, "train", i)[3])
        tags = make_tags(attrs, look_tags(attrs), trend_tags(attrs))
        assert SUB_CATEGORIES[attrs["sub_category"]].tag not in tags and COLOURS[attrs["colour"]].tag not in tags
        assert len(set(tags)) == len(tags) and look_tags(attrs) == look_tags(dict(attrs))  # no duplicates, no RNG
        tags_per_product.append(len(tags))
        looks.update(look_tags(attrs))
    assert 2.5 < np.mean(tags_per_product) < 4.0 and np.mean(np.array(tags_per_product) == 0) < 0.08
    assert len(looks) >= 8 and min(looks.values()) >= 10  # every look is learnable from a train catalog


def test_in_season_tags_need_the_season_and_the_garment_together() -> None:
    """Neither side alone says anything about in-season colour: every colour is in exactly two
    seasons, and a season's verdict flips with the colour; the pattern and cut tags likewise
    depend on the pair."""
    assert all(len(set(s)) == 2 for s in TREND_COLOUR_SEASONS.values())
    per_season = Counter(s for pair in TREND_COLOUR_SEASONS.values() for s in pair)
    assert set(per_season) == set(SEASONS) and max(per_season.values()) - min(per_season.values()) <= 1
    shirt = {"sub_category": "t-shirt", "colour": "red", "pattern": "stripes", "sleeve": "long", "neckline": "v-neck"}
    assert trend_tags({**shirt, "season": "winter"}) == ["in-season-colour", "in-season-pattern", "in-season-cut"]
    assert trend_tags({**shirt, "season": "summer"}) == ["in-season-pattern"]  # red is not summer's; stripes are
    assert trend_tags({**shirt, "season": "spring"}) == ["in-season-cut"]  # the v-neck
    assert trend_tags({**shirt, "season": "autumn"}) == ["in-season-colour", "in-season-cut"]
    assert trend_tags({**shirt, "colour": "pink", "season": "summer"})[0] == "in-season-colour"
    assert "in-season-pattern" not in trend_tags({**shirt, "pattern": "solid", "season": "winter"})
    with pytest.raises(ValueError, match="unknown season"):
        trend_tags({**shirt, "season": "monsoon"})


def test_every_title_opens_with_the_season_drawn_without_moving_attributes_or_pixels(catalog) -> None:
    _, table = catalog
    for row in table.to_pylist():
        attrs = dict(row["attributes"])
        season = SEASONS[attrs["season"]]
        assert row["title_en"].startswith(season.en) and row["title_zh"].startswith(season.zh), row
        others = [n for s, t in SEASONS.items() if s != attrs["season"] for n in t.en]
        assert not any(re.search(rf"\b{re.escape(n)}\b", row["title_en"]) for n in others if " " not in n), row
        assert set(trend_tags(attrs)) <= set(row["tags"])
    # The season has its own stream: the attribute stream draws what it drew before seasons existed.
    rngs, subs = product_rngs(0, "train", 5), eligible_sub_categories("train")
    assert len(rngs) == 6 and sample_attributes(rngs[0], "train", subs) == sample_attributes(
        np.random.default_rng([0, 0, 5, 0]), "train", subs)


def test_solid_garment_colour_is_the_named_colour() -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for sub in SUB_CATEGORIES.values():
        for colour in sub.options["colour"]:
            attrs = {"category": sub.category, "sub_category": sub.name, "colour": colour, "pattern": "solid"}
            for key, values in sub.options.items():
                attrs.setdefault(key, values[int(rng.integers(len(values)))])
            layer = np.asarray(render_garment(attrs, rng))
            pix = layer[..., :3][layer[..., 3] > 128].astype(np.float64)
            assert len(pix) > 3000, attrs
            assert nearest_colour(pix.mean(axis=0)) == colour, (attrs, pix.mean(axis=0))
            checked += 1
    assert checked > 150


def test_solid_colour_visible_in_saved_photo(catalog: tuple[SynthResult, pa.Table]) -> None:
    res, table = catalog
    hits = total = 0
    for row in table.to_pylist():
        attrs = dict(row["attributes"])
        if attrs["pattern"] != "solid" or attrs["colour"] == "white":
            continue  # a white garment is not separable from a light background by a threshold
        im = np.asarray(Image.open(res.catalog_path.parent / row["images"][0]).convert("RGB")).astype(np.float64)
        border = np.concatenate([im[:4].reshape(-1, 3), im[-4:].reshape(-1, 3)])
        bg = np.median(border, axis=0)
        fg = im[np.abs(im - bg).max(axis=2) > 45]
        total += 1
        hits += nearest_colour(fg.mean(axis=0)) == attrs["colour"]
    assert total >= 5 and hits / total >= 0.9


def test_attribute_values_change_the_picture() -> None:
    def mask(**kw: str) -> np.ndarray:
        sub = SUB_CATEGORIES[kw["sub_category"]]
        attrs = {"category": sub.category, "colour": "red", "pattern": "solid", **kw}
        return np.asarray(render_garment(attrs, np.random.default_rng(1)))[..., 3] > 128

    def height(m: np.ndarray) -> int:
        rows = np.where(m.any(axis=1))[0]
        return int(rows[-1] - rows[0])

    for sub in ("a-line dress", "bodycon dress"):
        hs = [height(mask(sub_category=sub, sleeve="short", neckline="crew", length=v)) for v in ("short", "midi", "long")]
        assert hs[0] + 30 < hs[1] and hs[1] + 30 < hs[2], (sub, hs)
    for sub in ("pleated skirt", "pencil skirt"):
        hs = [height(mask(sub_category=sub, length=v)) for v in ("short", "midi", "long")]
        assert hs[0] + 30 < hs[1] and hs[1] + 30 < hs[2], (sub, hs)
    short = mask(sub_category="t-shirt", sleeve="short", neckline="crew", print="none")
    long_ = mask(sub_category="t-shirt", sleeve="long", neckline="crew", print="none")
    assert (long_ & ~short).sum() > 2000
    ankle, knee = mask(sub_category="boots", height="ankle"), mask(sub_category="boots", height="knee-high")
    assert knee.sum() > 1.2 * ankle.sum()
    hoodie = mask(sub_category="hoodie", sleeve="long", neckline="hood", print="none")
    shirt = mask(sub_category="shirt", sleeve="long", neckline="collar")
    assert (hoodie ^ shirt).sum() > 1500
    # Patterns: a detail-free patch of the torso is flat for solid fabric and busy for every pattern.
    base = {"category": "tops", "sub_category": "shirt", "sleeve": "long", "neckline": "collar"}
    for colour in ("blue", "white", "black", "yellow"):
        stds = {}
        for p in PATTERNS:
            layer = np.asarray(render_garment({**base, "colour": colour, "pattern": p}, np.random.default_rng(2)))
            stds[p] = layer[140:200, 92:122, :3].astype(np.float64).std(axis=(0, 1)).mean()
        assert stds["solid"] < 6 and all(stds[p] > 20 for p in PATTERNS if p != "solid"), (colour, stds)


def test_views_vary(catalog: tuple[SynthResult, pa.Table]) -> None:
    attrs = {"category": "tops", "sub_category": "t-shirt", "colour": "green", "pattern": "dots",
             "sleeve": "short", "neckline": "v-neck", "print": "star"}
    views = [np.asarray(v, dtype=np.int16) for v in render_views(attrs, np.random.default_rng(4), 4)]
    assert len(views) == 4 and all(v.shape == (256, 256, 3) for v in views)
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(views[i] - views[j]).mean() > 3


def _background_share(view: np.ndarray, background: np.ndarray) -> float:
    """Share of pixels of the (flat) background colour."""
    return float((np.abs(view - background).sum(-1) < 12).mean())


def test_close_ups_come_after_the_front_shot_and_leave_whole_garment_views_unchanged() -> None:
    attrs = {"category": "dresses", "sub_category": "a-line dress", "colour": "red", "pattern": "solid",
             "sleeve": "short", "neckline": "v-neck", "length": "midi"}  # solid: no stripe mistaken for background
    close_ups = 0
    for seed in range(12):
        plain = [np.asarray(v, dtype=np.int16) for v in render_views(attrs, np.random.default_rng(seed), 4)]
        mixed = [np.asarray(v, dtype=np.int16) for v in
                 render_views(attrs, np.random.default_rng(seed), 4, detail_rng=np.random.default_rng(100 + seed))]
        assert np.array_equal(plain[0], mixed[0])  # the front shot is never a close-up
        for a, b in zip(plain[1:], mixed[1:]):
            if np.array_equal(a, b):
                continue
            close_ups += 1
            # a close-up is filled by the garment: almost no background, where the whole garment leaves plenty
            bg = a[0, 0]  # the close-up replaces this view and keeps its background colour
            assert _background_share(b, bg) < 0.5 * _background_share(a, bg), (seed, _background_share(a, bg),
                                                                                 _background_share(b, bg))
    assert 0.2 * 36 <= close_ups <= 0.6 * 36  # DETAIL_SHARE = 0.4 of the 3 later views


def test_render_photo_set_names_each_view() -> None:
    attrs = {"category": "dresses", "sub_category": "a-line dress", "colour": "red", "pattern": "solid",
             "sleeve": "short", "neckline": "v-neck", "length": "midi"}
    photos = render_photo_set(attrs, np.random.default_rng(1), 4, detail_rng=np.random.default_rng(2))
    plain = render_views(attrs, np.random.default_rng(1), 4)
    assert photos.kinds[0] == "front" and len(photos.kinds) == len(photos.images) == 4
    for kind, mixed, whole in zip(photos.kinds, photos.images, plain):
        assert kind in VIEW_KINDS and (kind == "close-up") != np.array_equal(np.asarray(mixed), np.asarray(whole))


def _garment_colour(photo: Image.Image) -> str:
    """The palette colour nearest the mean of the pixels that stand out from the photo's border."""
    im = np.asarray(photo.convert("RGB")).astype(np.float64)
    bg = np.median(np.concatenate([im[:4].reshape(-1, 3), im[-4:].reshape(-1, 3)]), axis=0)
    return nearest_colour(im[np.abs(im - bg).max(axis=2) > 45].mean(axis=0))


def test_stray_photos_show_another_product_and_move_no_other_photo(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with_strays = generate_catalog(tmp_path / "s", 80, seed=4, workers=1, progress=False)
    monkeypatch.setattr(catalog_module, "STRAY_SHARE", 0.0)
    without = generate_catalog(tmp_path / "n", 80, seed=4, workers=1, progress=False)
    rows_s, rows_n = pq.read_table(with_strays.catalog_path).to_pylist(), pq.read_table(without.catalog_path).to_pylist()
    strays = checked = colour_moved = 0
    for a, b in zip(rows_s, rows_n):
        assert {k: v for k, v in a.items() if k != "image_kinds"} == {k: v for k, v in b.items() if k != "image_kinds"}
        assert len(a["image_kinds"]) == len(a["images"]) and a["image_kinds"][0] == "front"
        assert STRAY not in b["image_kinds"] and a["image_kinds"].count(STRAY) <= 1
        for rel, kind_s, kind_n in zip(a["images"], a["image_kinds"], b["image_kinds"]):
            same = (tmp_path / "s" / rel).read_bytes() == (tmp_path / "n" / rel).read_bytes()
            assert same == (kind_s == kind_n), (rel, kind_s, kind_n)  # only the stray slot changed
            if kind_s == STRAY:
                strays += 1
                attrs = dict(a["attributes"])
                front = Image.open(tmp_path / "s" / a["images"][0])
                if attrs["pattern"] == "solid" and attrs["colour"] != "white":  # a light garment hides in the background
                    checked += 1
                    colour_moved += _garment_colour(Image.open(tmp_path / "s" / rel)) != _garment_colour(front)
    assert 0.5 * STRAY_SHARE * 80 <= strays <= 1.6 * STRAY_SHARE * 80
    assert checked >= 3 and colour_moved == checked  # the stray is another colourway, visible in the pixels


def test_category_filters(tmp_path: Path) -> None:
    r = generate_catalog(tmp_path / "inc", 30, seed=2, categories=["shoes", "bags"], workers=1, progress=False)
    cats = set(pq.read_table(r.catalog_path).column("category").to_pylist())
    assert cats == {"shoes", "bags"}
    r = generate_catalog(tmp_path / "exc", 60, seed=2, exclude_categories=["shoes"], workers=1, progress=False)
    cats = set(pq.read_table(r.catalog_path).column("category").to_pylist())
    assert "shoes" not in cats and len(cats) >= 4
    with pytest.raises(ValueError):
        generate_catalog(tmp_path / "bad", 5, categories=["hats"], progress=False)
    with pytest.raises(ValueError):
        generate_catalog(tmp_path / "none", 5, exclude_categories=list(CATEGORIES), progress=False)


def test_query_log(catalog: tuple[SynthResult, pa.Table]) -> None:
    res, table = catalog
    log = pq.read_table(res.query_log_path)
    assert log.schema.remove_metadata().equals(
        pa.schema([("query", pa.string()), ("product_id", pa.string()), ("clicks", pa.int32())])
    )
    rows = {r["product_id"]: r for r in table.to_pylist()}
    own = noise = 0
    for q, pid, clicks in zip(*(log.column(c).to_pylist() for c in ("query", "product_id", "clicks"))):
        assert pid in rows and clicks > 0
        if q in rows[pid]["queries"]:
            own += clicks
        else:
            noise += clicks
            owners = [r for r in rows.values() if q in r["queries"]]
            assert any(o["sub_category"] == rows[pid]["sub_category"] for o in owners)
    assert own > 0 and 0.02 < noise / (own + noise) < 0.25
    assert len(set(log.column("product_id").to_pylist())) > 0.8 * len(rows)


def test_title_keys_probability_is_the_generators_own_frequency() -> None:
    """The likelihood the random-100 ceiling ranks by must be what title_keys actually draws."""
    rng = np.random.default_rng(3)
    checked = 0
    for attrs in sample_attrs(60, seed=11, split="train"):
        draws = Counter(frozenset(title_keys(attrs, rng)) for _ in range(2000))
        keys = nameable_keys(attrs)
        subsets = {frozenset(k for j, k in enumerate(keys) if (mask >> j) & 1) for mask in range(2 ** len(keys))}
        assert sum(title_keys_probability(s, attrs) for s in subsets) == pytest.approx(1.0)
        for named, count in draws.items():
            assert title_keys_probability(named, attrs) == pytest.approx(count / 2000, abs=0.035), (attrs, named)
        checked += len(draws) > 1
    assert checked > 30  # most products have a choice of what their title names


def test_title_attributes_name_the_title_and_the_likelihood_reads_them(catalog: tuple[SynthResult, pa.Table]) -> None:
    _, table = catalog
    for row in table.to_pylist()[:40]:
        attrs = dict(row["attributes"])
        named = row["title_attributes"]
        assert "colour" in named and set(named) <= set(nameable_keys(attrs))
        lang = "zh" if CJK.search(row["title"]) else "en"
        terms = {"colour": COLOURS}
        for key in named:
            if key in terms:
                names = terms[key][attrs[key]].en if lang == "en" else terms[key][attrs[key]].zh
                assert _mentions(row["title"], names), (row["title"], key)
        own = {**{k: attrs[k] for k in named}, "sub_category": attrs["sub_category"]}
        assert title_likelihood(own, attrs) > 0
        other_colour = next(c for c in COLOURS if c != attrs["colour"])
        assert title_likelihood(own, {**attrs, "colour": other_colour}) == 0.0
        assert title_likelihood({**own, "sub_category": "not " + attrs["sub_category"]}, attrs) == 0.0
