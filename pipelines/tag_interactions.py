"""How well an evaluated tagger reads the tags that only an interaction of title and picture predicts.

The synthetic catalog's season trend tags (``fashionbert.synthetic.seasons.TREND_TAGS``) say
whether a garment's colour, pattern or cut is on trend in the listing's season, which the
title names: neither the season nor the garment alone predicts them (each colour is on trend
in exactly two seasons). An additive model of (text, image) features scores them at their
base rate, so these tags are where the bilinear fusion's multiplicative interaction is
needed, and where its ablation should show (docs/design.md item 43). Their mean average
precision is reported as ``trend_map`` beside the mAP over every tag; a catalog without
these tags (a real one) simply gets no such key.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fashionbert.synthetic.seasons import TREND_TAGS

TREND_COLUMN = "trend_map"


def trend_tag_map(per_tag: Mapping[str, float]) -> dict[str, float]:
    """``{"trend_map": mean AP of the trend tags}`` from ``ap:<tag>`` metrics; empty when none is there."""
    found = [per_tag[f"ap:{tag}"] for tag in TREND_TAGS if f"ap:{tag}" in per_tag]
    return {TREND_COLUMN: float(np.mean(found))} if found else {}
