"""Titles, descriptions, queries and tags generated from a product's attributes.

The same attributes drive the picture, so every visual word in the text is
true of the image.  Variation (synonyms, word order, an omitted attribute,
marketing words with no visual meaning) mimics real e-commerce text so a
model has to learn which words matter.  Colour and sub-category are always
named in titles: they are what a shopper searches for first.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from fashionbert.synthetic.attributes import ATTRIBUTE_TERMS, CATEGORIES, SUB_CATEGORIES, attribute_keys

# No season words here: the collection season opens every title (fashionbert.synthetic.seasons) and
# a second, contradicting season would make the in-season tags unknowable.
_EN_PREFIX = ("New", "Trendy", "Casual", "Premium", "Classic", "Hot Sale", "Fashion", "Chic")
_EN_SUFFIX = ("Free Shipping", "Best Seller", "Gift Idea", "Everyday Wear", "Limited Edition", "New Arrival")
_ZH_PREFIX = ("新款", "韩版", "ins风", "百搭", "显瘦", "爆款", "时尚", "简约", "网红同款")
_ZH_SUFFIX = ("包邮", "女", "百搭款", "潮", "现货速发", "清仓特价")
_MATERIAL = {
    "tops": (("cotton", "纯棉"), ("linen", "亚麻"), ("polyester", "涤纶")),
    "dresses": (("chiffon", "雪纺"), ("cotton", "纯棉"), ("silk", "真丝")),
    "bottoms": (("cotton", "纯棉"), ("twill", "斜纹布"), ("linen", "亚麻")),
    "skirts": (("chiffon", "雪纺"), ("wool blend", "混纺羊毛"), ("polyester", "涤纶")),
    "shoes": (("leather", "真皮"), ("canvas", "帆布"), ("suede", "麂皮")),
    "bags": (("canvas", "帆布"), ("leather", "真皮"), ("nylon", "尼龙")),
}
_PLURAL = {"sneakers", "boots", "heels", "jeans", "trousers", "shorts"}
_EN_FEATURE = {  # fixed grammatical phrases for descriptions (titles carry the synonym variety)
    ("sleeve", "sleeveless"): "a sleeveless cut", ("sleeve", "short"): "short sleeves",
    ("sleeve", "long"): "long sleeves", ("length", "short"): "a mini length", ("length", "midi"): "a midi length",
    ("length", "long"): "a maxi length", ("neckline", "crew"): "a crew neck", ("neckline", "v-neck"): "a v-neck",
    ("neckline", "collar"): "a neat collar", ("neckline", "hood"): "a hood", ("print", "star"): "a star print",
    ("print", "heart"): "a heart print", ("print", "logo"): "a logo print", ("height", "ankle"): "an ankle-high shaft",
    ("height", "knee-high"): "a knee-high shaft",
}
_STYLE_ZH = {"casual": "休闲", "office": "通勤", "sporty": "运动", "party": "派对", "warm-weather": "清凉",
             "cold-weather": "保暖", "streetwear": "街头", "vintage": "复古", "minimalist": "极简", "statement": "吸睛"}


def _pick(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]


def _cap(s: str) -> str:
    """Title-case word starts without str.title()'s "Women'S" / "T-Shirt" quirks."""
    return " ".join(w[:1].upper() + w[1:] for w in s.split(" "))


def _names(attrs: Mapping[str, str], key: str, lang: str) -> tuple[str, ...]:
    term = ATTRIBUTE_TERMS[key][attrs[key]]
    return term.en if lang == "en" else term.zh


def nameable_keys(attrs: Mapping[str, str]) -> list[str]:
    """Attributes worth naming: skips print 'none' and necklines implied by the noun (shirt collar, hood)."""
    sub = SUB_CATEGORIES[attrs["sub_category"]]
    keys = []
    for k in attribute_keys(attrs):
        if k == "print" and attrs[k] == "none":
            continue
        if k == "neckline" and len(sub.options["neckline"]) == 1:
            continue
        keys.append(k)
    return keys


SOLID_LEFT_IMPLICIT = 0.6  # how often a title leaves a solid pattern unnamed
ONE_LEFT_OUT = 0.3  # how often a title leaves out one of the non-colour attributes it could name


def title_keys(attrs: Mapping[str, str], rng: np.random.Generator) -> list[str]:
    """Keys a title names: colour always; sometimes one other omitted; 'solid' often left implicit."""
    keys = nameable_keys(attrs)
    if attrs["pattern"] == "solid" and rng.random() < SOLID_LEFT_IMPLICIT:
        keys.remove("pattern")
    others = [k for k in keys if k != "colour"]
    if others and rng.random() < ONE_LEFT_OUT:
        keys.remove(_pick(rng, others))
    return keys


def title_keys_probability(named: Collection[str], attrs: Mapping[str, str]) -> float:
    """P(:func:`title_keys` names exactly ``named`` for a product with ``attrs``).

    Why: it is the likelihood of a title given a candidate image (times whether the
    named values agree), which is what the Bayes-optimal random-100 ranker orders by
    (:func:`title_likelihood`); kept next to :func:`title_keys` so the two cannot drift
    apart (a test compares them with the generator's own draws).
    """
    named = set(named)
    keys = nameable_keys(attrs)
    if attrs["pattern"] == "solid":
        branches = [([k for k in keys if k != "pattern"], SOLID_LEFT_IMPLICIT), (keys, 1.0 - SOLID_LEFT_IMPLICIT)]
    else:
        branches = [(keys, 1.0)]
    total = 0.0
    for kept, p in branches:
        others = [k for k in kept if k != "colour"]
        if set(kept) == named:
            total += p * ((1.0 - ONE_LEFT_OUT) if others else 1.0)
        total += sum(p * ONE_LEFT_OUT / len(others) for k in others if set(kept) - {k} == named)
    return total


def title_likelihood(named: Mapping[str, str], attrs: Mapping[str, str]) -> float:
    """P(a title naming ``named`` {key: value} | a product with ``attrs``); 0 when a named value disagrees.

    Titles of other sub-categories name another noun, so they score 0 too.
    """
    if named.get("sub_category", attrs["sub_category"]) != attrs["sub_category"]:
        return 0.0
    keys = [k for k in named if k != "sub_category"]
    if any(attrs.get(k) != named[k] for k in keys):
        return 0.0
    return title_keys_probability(keys, attrs)


def _phrases(attrs: Mapping[str, str], keys: list[str], lang: str, rng: np.random.Generator) -> dict[str, str]:
    """One synonym per key, avoiding a repeated word (e.g. 'long' length next to 'long sleeve')."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for k in keys:
        options = [n for n in _names(attrs, k, lang) if not (set(n.lower().split()) & used)] or list(_names(attrs, k, lang))
        out[k] = _pick(rng, options)
        used |= set(out[k].lower().split())
    return out


def title_en(attrs: Mapping[str, str], rng: np.random.Generator, keys: Sequence[str] | None = None) -> str:
    """An English product title naming ``keys`` (default: :func:`title_keys`' draw); ASCII only."""
    sub = SUB_CATEGORIES[attrs["sub_category"]]
    keys = title_keys(attrs, rng) if keys is None else list(keys)
    ph = _phrases(attrs, keys, "en", rng)
    order = [k for k in ("length", "height", "colour", "pattern", "sleeve", "neckline") if k in ph]
    if rng.random() < 0.4 and len(order) > 2:  # shuffle the non-colour modifiers
        rest = [k for k in order if k != "colour"]
        rest = [rest[i] for i in rng.permutation(len(rest))]
        order = rest[:1] + ["colour"] + rest[1:] if rng.random() < 0.5 else ["colour"] + rest
    noun = _pick(rng, sub.en)
    colour_last = rng.random() < 0.2
    words = [ph[k] for k in order if not (colour_last and k == "colour")] + [noun]
    if colour_last:
        words += ["in", ph["colour"]]
    if "print" in ph:
        words = words + ["with", ph["print"]] if rng.random() < 0.6 else [ph["print"]] + words
    prefix = [_pick(rng, _EN_PREFIX) for _ in range(int(rng.integers(0, 3)))]
    if rng.random() < 0.4 and sub.category not in ("bags",):
        prefix.append("Women's")
    title = " ".join(dict.fromkeys(prefix)) + " " + " ".join(words)
    if rng.random() < 0.35:
        title += _pick(rng, (" - ", " | ", ", ")) + _pick(rng, _EN_SUFFIX)
    title = title.strip()
    return _cap(title) if rng.random() < 0.75 else title[:1].upper() + title[1:]


def title_zh(attrs: Mapping[str, str], rng: np.random.Generator, keys: Sequence[str] | None = None) -> str:
    """A Chinese product title in the dense, keyword-stacked style of Taobao listings, naming ``keys``."""
    sub = SUB_CATEGORIES[attrs["sub_category"]]
    keys = title_keys(attrs, rng) if keys is None else list(keys)
    ph = _phrases(attrs, keys, "zh", rng)
    order = [k for k in ("colour", "pattern", "print", "sleeve", "neckline", "length", "height") if k in ph]
    if rng.random() < 0.5:
        order = [order[i] for i in rng.permutation(len(order))]
    prefix = "".join(dict.fromkeys(_pick(rng, _ZH_PREFIX) for _ in range(int(rng.integers(0, 4)))))
    body = "".join(ph[k] for k in order) + _pick(rng, sub.zh)
    parts = [prefix, body] if prefix else [body]
    if rng.random() < 0.45:
        parts.append(_pick(rng, _ZH_SUFFIX))
    return (" " if rng.random() < 0.5 else "").join(parts)


_NEUTRAL = frozenset({"black", "white", "grey", "beige", "navy", "brown"})
_DARK = frozenset({"black", "grey", "navy", "brown"})
_WARM = frozenset({"red", "orange", "yellow", "pink", "brown", "beige"})
_PARTY_COLOURS = frozenset({"red", "black", "purple", "pink"})
_OFFICE = frozenset({"shirt", "trousers", "pencil skirt", "tote", "heels"})
_SPORTY = frozenset({"hoodie", "sneakers", "backpack", "shorts"})


def look_tags(attrs: Mapping[str, str]) -> list[str]:
    """Style tags from rules over several attributes at once, the way a merchandiser tags a look.

    Deterministic (a product's look is a fact, not a coin flip), and each rule is a conjunction
    across attributes a title and a photo show differently: "minimalist" needs a neutral colour,
    a plain pattern and no print; "office" a formal sub-category in a neutral colour without a
    busy pattern. That makes the tags depend on combinations, and on held-out attribute
    combinations a tagger must compose what it learnt rather than recall a seen product.
    """
    sub, colour, pattern = attrs["sub_category"], attrs["colour"], attrs["pattern"]
    printed = attrs.get("print", "none") != "none"
    plain = pattern == "solid" and not printed
    looks: list[str] = []
    if colour in _NEUTRAL and plain:
        looks.append("minimalist")
    if colour not in _NEUTRAL and not plain:
        looks.append("statement")
    if pattern in ("dots", "floral") and colour in _WARM:
        looks.append("vintage")
    if sub in _OFFICE and colour in _NEUTRAL and pattern in ("solid", "stripes"):
        looks.append("office")
    short = attrs.get("length") == "short"
    if colour in _PARTY_COLOURS and (sub in ("bodycon dress", "heels") or (sub == "a-line dress" and short)):
        looks.append("party")
    if attrs.get("sleeve") == "sleeveless" or sub == "shorts" or (short and colour not in _DARK):
        looks.append("warm-weather")
    if sub in _SPORTY and (pattern in ("solid", "stripes") or attrs.get("print") == "logo"):
        looks.append("sporty")
    if attrs.get("print") == "logo" or (sub in ("hoodie", "sneakers", "jeans") and colour in ("black", "white", "grey")):
        looks.append("streetwear")
    if attrs.get("height") == "knee-high" or (sub == "hoodie" and attrs.get("sleeve") == "long" and colour in _DARK):
        looks.append("cold-weather")
    return looks


def make_tags(attrs: Mapping[str, str], looks: Sequence[str], trends: Sequence[str] = ()) -> list[str]:
    """A merchant's hashtags: the pattern or print when there is one, the looks, the season's trends.

    What a tagger is asked to *suggest*: the sub-category, the colour and the shape attributes
    (sleeve, neckline, length, shaft height) are structured fields every listing already fills
    in (the ``sub_category`` column, the ``attributes`` map) and every title names, so they are
    not repeated as tags: they filled a top-3 with answers any method reads off for free, which
    left F1@3 unable to tell a tagger from a linear probe (docs/design.md item 43). Products
    carry 0-7 tags (3.1 on average); a product without any is skipped by training and metrics.
    """
    tags = [ATTRIBUTE_TERMS[key][attrs[key]].tag for key in ("pattern", "print")
            if attrs.get(key, "none") not in ("none", "solid")]
    return tags + [t for t in (*looks, *trends) if t not in tags]


def description(attrs: Mapping[str, str], lang: str, looks: Sequence[str], rng: np.random.Generator) -> str:
    """One or two sentences in `lang` restating attributes plus a material (not visible) word."""
    sub = SUB_CATEGORIES[attrs["sub_category"]]
    mat_en, mat_zh = _MATERIAL[sub.category][int(rng.integers(3))]
    keys = nameable_keys(attrs)
    ph = _phrases(attrs, keys, lang, rng)
    style = looks[0] if looks else "casual"
    if lang == "en":
        feats = [_EN_FEATURE[(k, attrs[k])] for k in keys if k not in ("colour", "pattern")]
        listed = ", ".join(feats[:-1]) + " and " + feats[-1] if len(feats) > 1 else "".join(feats)
        look = " ".join(p for p in (ph["colour"], ph["pattern"] if attrs["pattern"] != "solid" else "") if p)
        plural = sub.name in _PLURAL
        s = f"{'These' if plural else 'This'} {look} {sub.en[0]} {'are' if plural else 'is'} made of soft {mat_en}"
        s += f" and {'feature' if plural else 'features'} {listed}." if feats else "."
        return s + f" A {style} look; pair {'them' if plural else 'it'} with your favourite basics."
    feats_zh = "，".join(ph[k] + "设计" for k in keys if k not in ("colour", "pattern"))
    look = ph["colour"] + (ph["pattern"] if attrs["pattern"] != "solid" else "")
    s = f"这款{look}{sub.zh[0]}采用{mat_zh}面料" + (f"，{feats_zh}" if feats_zh else "") + "。"
    return s + f"{_STYLE_ZH.get(style, '休闲')}风格，舒适百搭。"


def queries(attrs: Mapping[str, str], rng: np.random.Generator) -> list[str]:
    """2-4 short, partial, mixed-language queries a shopper might type for this product."""
    sub = SUB_CATEGORIES[attrs["sub_category"]]
    cat = CATEGORIES[sub.category]
    keys = [k for k in nameable_keys(attrs) if not (k == "pattern" and attrs[k] == "solid")]
    want = int(rng.integers(2, 5))
    out: list[str] = []
    for _ in range(want * 4):
        if len(out) == want:
            break
        lang = "zh" if rng.random() < 0.5 else "en"
        n = min(len(keys), 1 + int(rng.random() < 0.45))
        chosen = [keys[i] for i in rng.permutation(len(keys))[:n]]
        if "colour" not in chosen and rng.random() < 0.55:
            chosen = ["colour"] + chosen[: max(0, n - 1)]
        names = sub.en if lang == "en" else sub.zh
        noun = _pick(rng, cat.en if lang == "en" else cat.zh) if rng.random() < 0.15 else _pick(rng, names)
        mods = [_pick(rng, _names(attrs, k, lang)) for k in chosen]
        if lang == "en":
            words = [m.lower() for m in mods]
            q = " ".join(words + [noun]) if rng.random() < 0.75 else " ".join([noun] + words)
        else:
            q = "".join(mods) + noun if rng.random() < 0.75 else noun + " " + "".join(mods)
        if q not in out:
            out.append(q)
    return out
