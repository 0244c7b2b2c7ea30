"""Vocabulary of the synthetic fashion catalog and attribute sampling.

Everything the text generator names and the drawing module paints comes from
this one table, so a title can only mention what the picture shows.  Synonyms
(en/zh) must denote the same *visual* value: a query using any of them is
relevant to the same pictures.

The held-out split is decided by a seed-independent hash of the attribute
combination (sub_category, colour, pattern): a train catalog from any seed and
a test catalog from any seed never share a combination, which is what lets the
test split measure generalisation to unseen combinations.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

TEST_FRACTION = 0.18
# Fixed forever (changing it reshuffles the held-out combos).  Chosen among a few
# candidates so that every sub-category keeps >= 60 % of its combos in train and
# has >= 1 in test (jeans only have 5 combos); tests check both properties.
_SPLIT_SALT = "fashionbert-synth-v3"


@dataclass(frozen=True)
class Term:
    """A canonical value with its display names; en[0]/zh[0] are the preferred names."""

    value: str
    en: tuple[str, ...]
    zh: tuple[str, ...]
    tag: str = ""


def _terms(*rows: tuple[str, tuple[str, ...], tuple[str, ...], str]) -> dict[str, Term]:
    return {r[0]: Term(r[0], r[1], r[2], r[3]) for r in rows}


COLOURS: dict[str, Term] = _terms(
    ("red", ("red",), ("红色", "红"), "red"),
    ("pink", ("pink",), ("粉色", "粉红色", "粉红"), "pink"),
    ("orange", ("orange",), ("橙色", "橘色"), "orange"),
    ("yellow", ("yellow",), ("黄色", "黄"), "yellow"),
    ("green", ("green",), ("绿色", "绿"), "green"),
    ("blue", ("blue",), ("蓝色", "蓝"), "blue"),
    ("navy", ("navy",), ("藏青色", "藏青"), "navy"),
    ("purple", ("purple",), ("紫色", "紫"), "purple"),
    ("brown", ("brown",), ("棕色", "咖啡色", "褐色"), "brown"),
    ("beige", ("beige",), ("米色", "米黄色"), "beige"),
    ("black", ("black",), ("黑色", "黑"), "black"),
    ("white", ("white",), ("白色", "白"), "white"),
    ("grey", ("grey", "gray"), ("灰色", "灰"), "grey"),
)

# Far apart in RGB so a mean pixel colour identifies the name (and a CNN can too).
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (204, 30, 38),
    "pink": (246, 146, 186),
    "orange": (246, 128, 18),
    "yellow": (248, 214, 40),
    "green": (34, 146, 64),
    "blue": (38, 108, 222),
    "navy": (22, 34, 92),
    "purple": (118, 46, 160),
    "brown": (118, 68, 32),
    "beige": (216, 188, 140),
    "black": (26, 26, 28),
    "white": (246, 246, 244),
    "grey": (128, 128, 130),
}

PATTERNS: dict[str, Term] = _terms(
    ("solid", ("solid", "plain", "solid-color"), ("纯色", "素色"), "solid"),
    ("stripes", ("striped", "stripes", "stripe"), ("条纹", "条纹款"), "stripes"),
    ("dots", ("polka dot", "dotted", "polka-dot"), ("波点", "圆点"), "dots"),
    ("check", ("check", "checked", "plaid", "checkered"), ("格子", "格纹"), "check"),
    ("floral", ("floral", "flower print", "flowered"), ("碎花", "花卉", "小碎花"), "floral"),
)
PATTERN_WEIGHT: dict[str, float] = {"solid": 0.4, "stripes": 0.15, "dots": 0.15, "check": 0.15, "floral": 0.15}

SLEEVES: dict[str, Term] = _terms(
    ("sleeveless", ("sleeveless",), ("无袖",), "sleeveless"),
    ("short", ("short sleeve", "short-sleeved"), ("短袖",), "short-sleeve"),
    ("long", ("long sleeve", "long-sleeved"), ("长袖",), "long-sleeve"),
)
LENGTHS: dict[str, Term] = _terms(
    ("short", ("mini", "short"), ("短款", "超短"), "mini"),
    ("midi", ("midi", "knee-length"), ("中长款", "及膝"), "midi"),
    ("long", ("maxi", "long", "floor-length"), ("长款", "及踝"), "maxi"),
)
NECKLINES: dict[str, Term] = _terms(
    ("crew", ("crew neck", "round neck", "crewneck"), ("圆领",), "crew-neck"),
    ("v-neck", ("v-neck", "v neck"), ("V领", "v领"), "v-neck"),
    ("collar", ("collared", "with collar"), ("翻领", "有领"), "collar"),
    ("hood", ("hooded",), ("连帽",), "hood"),
)
PRINTS: dict[str, Term] = _terms(
    ("none", (), (), ""),
    ("star", ("star print", "star"), ("星星印花", "星星图案", "五角星"), "star-print"),
    ("heart", ("heart print", "heart"), ("爱心印花", "爱心"), "heart-print"),
    ("logo", ("logo print", "logo", "letter print"), ("字母印花", "logo印花", "字母"), "logo-print"),
)
HEIGHTS: dict[str, Term] = _terms(
    ("ankle", ("ankle", "short"), ("短筒", "及踝"), "ankle"),
    ("knee-high", ("knee-high", "tall"), ("高筒", "过膝"), "knee-high"),
)

#: attribute key -> its vocabulary; keys are the keys of the `attributes` map column.
ATTRIBUTE_TERMS: dict[str, dict[str, Term]] = {
    "colour": COLOURS,
    "pattern": PATTERNS,
    "sleeve": SLEEVES,
    "length": LENGTHS,
    "neckline": NECKLINES,
    "print": PRINTS,
    "height": HEIGHTS,
}

CATEGORIES: dict[str, Term] = _terms(
    ("tops", ("top",), ("上衣",), "tops"),
    ("dresses", ("dress",), ("连衣裙",), "dresses"),
    ("bottoms", ("bottoms",), ("裤子",), "bottoms"),  # not "pants": that names trousers only
    ("skirts", ("skirt",), ("半身裙",), "skirts"),
    ("shoes", ("shoes",), ("鞋子", "鞋"), "shoes"),
    ("bags", ("bag",), ("包包", "包"), "bags"),
)

_ALL_COLOURS = tuple(COLOURS)
_ALL_PATTERNS = tuple(PATTERNS)


@dataclass(frozen=True, eq=False)
class SubCategory:
    """A sub-category: names, price level and which attribute values it can take."""

    name: str
    category: str
    en: tuple[str, ...]
    zh: tuple[str, ...]
    base_price: float
    options: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return self.name.replace(" ", "-")


def _sub(name: str, cat: str, en: tuple[str, ...], zh: tuple[str, ...], price: float, **opts: tuple[str, ...]) -> SubCategory:
    options = {"colour": opts.pop("colour", _ALL_COLOURS), "pattern": opts.pop("pattern", _ALL_PATTERNS)}
    options.update(opts)
    return SubCategory(name, cat, en, zh, price, options)


_PRINTS = tuple(PRINTS)
_DRESS = {"sleeve": ("sleeveless", "short", "long"), "length": ("short", "midi", "long")}
_SKIRT_LEN = ("short", "midi", "long")
SUB_CATEGORIES: dict[str, SubCategory] = {
    s.name: s
    for s in (
        _sub("t-shirt", "tops", ("t-shirt", "tee", "t shirt"), ("T恤", "T恤衫"), 79.0,
             sleeve=("short", "long"), neckline=("crew", "v-neck"), print=_PRINTS),
        _sub("shirt", "tops", ("shirt", "button-up shirt"), ("衬衫", "衬衣"), 129.0,
             sleeve=("short", "long"), neckline=("collar",)),
        _sub("hoodie", "tops", ("hoodie", "hooded sweatshirt"), ("卫衣", "连帽卫衣"), 159.0,
             sleeve=("short", "long"), neckline=("hood",), print=_PRINTS),
        _sub("a-line dress", "dresses", ("a-line dress", "a line dress"), ("A字连衣裙", "A字型连衣裙"), 199.0,
             neckline=("crew", "v-neck", "collar"), **_DRESS),
        _sub("bodycon dress", "dresses", ("bodycon dress", "bodycon"), ("包臀连衣裙", "紧身连衣裙"), 189.0,
             neckline=("crew", "v-neck"), **_DRESS),
        _sub("trousers", "bottoms", ("trousers", "pants", "slacks"), ("长裤", "西裤", "休闲裤"), 149.0,
             pattern=("solid", "stripes", "check")),
        _sub("jeans", "bottoms", ("jeans", "denim jeans"), ("牛仔裤",), 169.0,
             colour=("blue", "navy", "black", "grey", "white"), pattern=("solid",)),
        _sub("shorts", "bottoms", ("shorts",), ("短裤",), 69.0),
        _sub("pleated skirt", "skirts", ("pleated skirt",), ("百褶裙",), 119.0, length=_SKIRT_LEN),
        _sub("pencil skirt", "skirts", ("pencil skirt",), ("铅笔裙", "一步裙"), 109.0, length=_SKIRT_LEN),
        _sub("sneakers", "shoes", ("sneakers", "trainers"), ("运动鞋", "板鞋"), 259.0),
        _sub("boots", "shoes", ("boots",), ("靴子", "靴"), 329.0, pattern=("solid", "check"),
             height=("ankle", "knee-high")),
        _sub("heels", "shoes", ("heels", "high heels", "pumps"), ("高跟鞋",), 229.0,
             pattern=("solid", "dots", "floral")),
        _sub("tote", "bags", ("tote", "tote bag"), ("托特包",), 139.0, print=_PRINTS),
        _sub("backpack", "bags", ("backpack", "rucksack"), ("双肩包", "背包"), 189.0, print=_PRINTS),
        _sub("crossbody bag", "bags", ("crossbody bag", "cross-body bag"), ("斜挎包",), 159.0, print=_PRINTS),
    )
}


def attribute_combo(attributes: Mapping[str, str]) -> tuple[str, ...]:
    """The combination that decides the split: (sub_category, colour, pattern)."""
    return (attributes["sub_category"], attributes["colour"], attributes["pattern"])


def split_of_combo(combo: Sequence[str]) -> str:
    """'train' or 'test' from a fixed, seed-independent hash of the combination."""
    digest = hashlib.sha1(("|".join([_SPLIT_SALT, *combo])).encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < TEST_FRACTION else "train"


@lru_cache(maxsize=None)
def combos_of(sub_category: str, split: str) -> tuple[tuple[tuple[str, str], ...], np.ndarray]:
    """All (colour, pattern) pairs of a sub-category in `split`, with sampling probabilities."""
    sub = SUB_CATEGORIES[sub_category]
    pairs = tuple(
        (c, p)
        for c in sub.options["colour"]
        for p in sub.options["pattern"]
        if split_of_combo((sub_category, c, p)) == split
    )
    w = np.array([PATTERN_WEIGHT[p] for _, p in pairs], dtype=np.float64)
    return pairs, (w / w.sum() if len(w) else w)


def eligible_sub_categories(
    split: str,
    categories: Sequence[str] | None = None,
    exclude_categories: Sequence[str] | None = None,
) -> tuple[str, ...]:
    """Sub-categories allowed by the category filters that have combinations in `split`."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    for names in (categories or (), exclude_categories or ()):
        unknown = set(names) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown categories {sorted(unknown)}; known: {list(CATEGORIES)}")
    subs = tuple(
        s.name
        for s in SUB_CATEGORIES.values()
        if (categories is None or s.category in categories)
        and s.category not in (exclude_categories or ())
        and combos_of(s.name, split)[0]
    )
    if not subs:
        raise ValueError("the category filters leave no sub-category to generate")
    return subs


def sample_attributes(rng: np.random.Generator, split: str, subs: Sequence[str]) -> dict[str, str]:
    """Draw one product's attributes (canonical en values) whose combo lies in `split`.

    Sampling (colour, pattern) from the split's own combination list is the
    exact equivalent of reject-and-resample, without the loop.
    """
    sub = SUB_CATEGORIES[subs[int(rng.integers(len(subs)))]]
    pairs, probs = combos_of(sub.name, split)
    colour, pattern = pairs[int(rng.choice(len(pairs), p=probs))]
    attrs = {"category": sub.category, "sub_category": sub.name, "colour": colour, "pattern": pattern}
    for key, values in sub.options.items():
        if key in attrs:
            continue
        if key == "print":  # most garments carry no print
            attrs[key] = "none" if rng.random() < 0.45 else values[1 + int(rng.integers(len(values) - 1))]
        else:
            attrs[key] = values[int(rng.integers(len(values)))]
    return attrs


def attribute_keys(attrs: Mapping[str, str]) -> list[str]:
    """Visual attribute keys present in `attrs`, in a fixed order."""
    return [k for k in ATTRIBUTE_TERMS if k in attrs]
