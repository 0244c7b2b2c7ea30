"""The tags a tagger can predict: built from a catalog's ``tags`` column, saved as JSON.

Why a minimum count: a tag seen once in training cannot be learned, only memorised, and every
extra output dilutes the ranking; merchants' rare tags are better left to them. The order is
by descending count (ties by name), so index 0 is the most frequent tag and the vocabulary
file doubles as the most-frequent baseline.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

VOCAB_FILE = "tags.json"


def clean_tags(tags: Iterable[str] | None) -> list[str]:
    """A product's tags stripped, without blanks and duplicates, in their original order."""
    out: list[str] = []
    for tag in tags or ():
        if isinstance(tag, str) and tag.strip() and tag.strip() not in out:
            out.append(tag.strip())
    return out


class TagVocabulary:
    """Tag <-> index, with each tag's count in the catalog it was built from."""

    def __init__(self, tags: Sequence[str], counts: Sequence[int], num_products: int, min_count: int = 1):
        if len(tags) != len(counts):
            raise ValueError(f"{len(tags)} tags but {len(counts)} counts")
        if len(set(tags)) != len(tags):
            raise ValueError("duplicate tags in the vocabulary")
        self.tags = list(tags)
        self.counts = [int(c) for c in counts]
        self.num_products = int(num_products)
        self.min_count = int(min_count)
        self.index = {t: i for i, t in enumerate(self.tags)}

    @classmethod
    def build(cls, product_tags: Iterable[Iterable[str] | None], min_count: int = 2) -> TagVocabulary:
        """Count each tag once per product; keep those seen in at least ``min_count`` products."""
        counter: Counter[str] = Counter()
        n = 0
        for tags in product_tags:
            counter.update(clean_tags(tags))
            n += 1
        kept = sorted(((t, c) for t, c in counter.items() if c >= min_count), key=lambda tc: (-tc[1], tc[0]))
        if not kept:
            raise ValueError(f"no tag occurs in at least {min_count} of the {n} products: lower min_tag_count")
        return cls([t for t, _ in kept], [c for _, c in kept], n, min_count)

    def __len__(self) -> int:
        return len(self.tags)

    def __contains__(self, tag: str) -> bool:
        return tag in self.index

    def encode(self, product_tags: Sequence[Iterable[str] | None]) -> np.ndarray:
        """Multi-hot float32 [n_products, n_tags]; tags outside the vocabulary are ignored."""
        out = np.zeros((len(product_tags), len(self)), np.float32)
        for row, tags in enumerate(product_tags):
            for tag in clean_tags(tags):
                j = self.index.get(tag)
                if j is not None:
                    out[row, j] = 1.0
        return out

    def decode(self, indices: Iterable[int]) -> list[str]:
        return [self.tags[int(i)] for i in indices]

    def frequencies(self) -> np.ndarray:
        """Share of the building catalog's products carrying each tag."""
        return np.asarray(self.counts, np.float64) / max(self.num_products, 1)

    def to_dict(self) -> dict:
        return {"tags": self.tags, "counts": self.counts, "num_products": self.num_products, "min_count": self.min_count}

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / VOCAB_FILE
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TagVocabulary:
        path = Path(directory) / VOCAB_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a tagger directory (no {VOCAB_FILE})")
        data = json.loads(path.read_text())
        return cls(data["tags"], data["counts"], data["num_products"], data.get("min_count", 1))
