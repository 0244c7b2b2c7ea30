"""The collection season a listing names, and the season's trend tags.

Why this exists: a tag that a photo alone or a title alone decides can be read off either side
by a linear model on mean-pooled states, so it cannot show what a multi-modal tagger's bilinear
fusion and attention are for (docs/design.md item 43). A listing's season is a fact only its
text holds (every title opens with it: "2026夏季", "Summer 2026"), while what is on trend
that season is a property of the garment the photo shows. "In-season colour" therefore depends
on the *pair* (season, colour): every colour is on trend in exactly two of the four seasons and
every season has about half the colours, so neither the season nor the colour alone says
anything about the tag - a table, not a sum, which only a multiplicative interaction of the two
sides can represent. The same holds, less evenly, for the pattern and for the cut.

The season is drawn from its own RNG stream (:func:`fashionbert.synthetic.catalog.product_rngs`),
so adding it moved no attribute and no pixel of any product.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fashionbert.synthetic.attributes import COLOURS, PATTERNS, Term

SEASONS: dict[str, Term] = {
    "spring": Term("spring", ("Spring 2026", "Spring", "New Spring"), ("2026春季", "春季新品", "春款")),
    "summer": Term("summer", ("Summer 2026", "Summer", "Hot Summer"), ("2026夏季", "夏季新品", "夏款")),
    "autumn": Term("autumn", ("Autumn 2026", "Fall", "Autumn"), ("2026秋季", "秋季新品", "秋款")),
    "winter": Term("winter", ("Winter 2026", "Winter", "Cozy Winter"), ("2026冬季", "冬季新品", "冬款")),
}

#: colour -> the two seasons it is on trend in (each colour exactly two: the colour alone is a coin flip).
TREND_COLOUR_SEASONS: dict[str, tuple[str, str]] = {
    "red": ("autumn", "winter"), "pink": ("spring", "summer"), "orange": ("summer", "autumn"),
    "yellow": ("spring", "summer"), "green": ("spring", "autumn"), "blue": ("summer", "winter"),
    "navy": ("autumn", "winter"), "purple": ("spring", "winter"), "brown": ("autumn", "winter"),
    "beige": ("spring", "autumn"), "black": ("summer", "winter"), "white": ("spring", "summer"),
    "grey": ("spring", "winter"),
}
#: pattern -> the seasons it is on trend in (a plain fabric never is: it is the default, not a trend).
TREND_PATTERN_SEASONS: dict[str, tuple[str, ...]] = {
    "solid": (), "stripes": ("summer", "winter"), "dots": ("spring", "summer"),
    "check": ("autumn", "winter"), "floral": ("spring", "autumn"),
}
#: season -> the cuts (attribute key, value) on trend; a garment with any of them is in-season cut.
TREND_CUTS: dict[str, frozenset[tuple[str, str]]] = {
    "spring": frozenset({("length", "midi"), ("sleeve", "short"), ("neckline", "v-neck"), ("height", "ankle")}),
    "summer": frozenset({("sleeve", "sleeveless"), ("length", "short"), ("neckline", "crew")}),
    "autumn": frozenset({("sleeve", "long"), ("neckline", "collar"), ("length", "midi"), ("height", "ankle")}),
    "winter": frozenset({("neckline", "hood"), ("height", "knee-high"), ("length", "long"), ("sleeve", "long")}),
}
TREND_TAGS = ("in-season-colour", "in-season-pattern", "in-season-cut")
_CUT_KEYS = ("sleeve", "length", "neckline", "height")


def draw_season(rng: np.random.Generator) -> str:
    """The collection season of a listing, uniform over the four."""
    return tuple(SEASONS)[int(rng.integers(len(SEASONS)))]


def season_phrase(season: str, lang: str, rng: np.random.Generator) -> str:
    """How the title opens for ``season`` in ``lang`` ("en" | "zh"), one of a few synonyms."""
    names = SEASONS[season].en if lang == "en" else SEASONS[season].zh
    return names[int(rng.integers(len(names)))]


def trend_tags(attrs: Mapping[str, str]) -> list[str]:
    """Which of :data:`TREND_TAGS` hold for a product whose attributes include its ``season``.

    Deterministic: being on trend is a fact of (season, garment), not a coin flip.
    """
    season = attrs["season"]
    if season not in SEASONS:
        raise ValueError(f"unknown season {season!r}; known: {list(SEASONS)}")
    tags = []
    if season in TREND_COLOUR_SEASONS[attrs["colour"]]:
        tags.append("in-season-colour")
    if season in TREND_PATTERN_SEASONS[attrs["pattern"]]:
        tags.append("in-season-pattern")
    if any((k, attrs[k]) in TREND_CUTS[season] for k in _CUT_KEYS if k in attrs):
        tags.append("in-season-cut")
    return tags


def _check_tables() -> None:
    """The tables cover the whole vocabulary (checked at import: a new colour must get its seasons)."""
    if set(TREND_COLOUR_SEASONS) != set(COLOURS) or set(TREND_PATTERN_SEASONS) != set(PATTERNS):
        raise RuntimeError("the trend tables must list every colour and every pattern")
    if set(TREND_CUTS) != set(SEASONS):
        raise RuntimeError("every season needs its trend cuts")


_check_tables()
