"""A small mixed zh/en fashion vocabulary and title generator shared by the text-side tests."""

from __future__ import annotations

import random

COLOURS = ["红色", "蓝色", "黑色", "白色", "red", "blue", "black", "white"]
ITEMS = ["连衣裙", "卫衣", "T恤", "衬衫", "dress", "hoodie", "shirt", "dresses", "hoodies"]
MARKETING = ["新款", "韩版", "ins风", "百搭", "显瘦", "2024", "oversize", "vintage", "long sleeve"]
PATTERNS = ["波点", "条纹", "纯色", "polka dot", "striped"]


def make_titles(n: int, seed: int = 0) -> list[str]:
    """Mixed zh/en fashion titles, words joined with or without spaces."""
    r = random.Random(seed)
    titles = []
    for _ in range(n):
        parts = [r.choice(MARKETING), r.choice(COLOURS), r.choice(PATTERNS), r.choice(ITEMS)]
        r.shuffle(parts)
        titles.append("".join(p + r.choice(["", " "]) for p in parts).strip())
    return titles
