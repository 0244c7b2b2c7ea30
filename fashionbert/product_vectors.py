"""How one vector is made for a product with several images and several texts.

Two methods (ARCHITECTURE.md §4):

* ``joint`` (default): the cross-modal encoding of ``[CLS] title [SEP] patches``
  of the product's first image, i.e. :meth:`FashionBert.encode_products`;
* the image-text linear combination: ``normalise(xi * mean(first a image
  vectors) + mu * mean(first b text vectors))`` over single-side encodings.
  Presets per scenario: ``i2t`` (image->text search, a=1, b=3) and ``t2i``
  (text->image search, a=2, b=3), xi = mu = 1.

The spec lives with the model (not the indexer) because the evaluation job
scores the same vectors the index serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Method = Literal["joint", "combo"]


@dataclass(frozen=True)
class ProductVectorSpec:
    """Which vector represents a product in the index."""

    method: Method = "joint"
    images: int = 1  # a: first a image vectors (combo)
    texts: int = 3  # b: first b text vectors (combo)
    image_weight: float = 1.0  # xi
    text_weight: float = 1.0  # mu

    def __post_init__(self) -> None:
        if self.method not in ("joint", "combo"):
            raise ValueError(f"product vector method must be 'joint' or 'combo', not {self.method!r}")
        if self.images < 0 or self.texts < 0 or (self.method == "combo" and self.images + self.texts == 0):
            raise ValueError(f"need a >= 0 images and b >= 0 texts, not both 0 (got a={self.images}, b={self.texts})")
        if self.image_weight < 0 or self.text_weight < 0:
            raise ValueError("xi and mu must be >= 0")

    @property
    def name(self) -> str:
        if self.method == "joint":
            return "joint"
        for preset, spec in PRESETS.items():
            if spec == self:
                return preset
        return f"combo(a={self.images},b={self.texts},xi={self.image_weight:g},mu={self.text_weight:g})"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, **asdict(self)}


PRESETS: dict[str, ProductVectorSpec] = {
    "joint": ProductVectorSpec("joint"),
    "i2t": ProductVectorSpec("combo", images=1, texts=3),
    "t2i": ProductVectorSpec("combo", images=2, texts=3),
}


def product_vector_spec(name: str, **overrides: object) -> ProductVectorSpec:
    """A preset by name (``joint``, ``i2t``, ``t2i``) with optional a/b/xi/mu overrides."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown product vector preset {name!r}; valid: {', '.join(PRESETS)}") from None
    fields = {**asdict(base), **{k: v for k, v in overrides.items() if v is not None}}
    if name == "joint" and any(v is not None for v in overrides.values()):
        fields["method"] = "combo"  # a/b/xi/mu only mean something for the linear combination
    return ProductVectorSpec(**fields)  # type: ignore[arg-type]


def normalise(v: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation; an all-zero row stays zero."""
    v = np.asarray(v, np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), eps)


def combine(image_vectors: Sequence[np.ndarray], text_vectors: Sequence[np.ndarray], spec: ProductVectorSpec) -> np.ndarray:
    """The linear combination for one product (uses what it has when it has fewer than a or b).

    A product with no readable image is represented by its texts alone, and vice versa.
    """
    parts = []
    imgs = list(image_vectors)[: spec.images]
    txts = list(text_vectors)[: spec.texts]
    if imgs and spec.image_weight > 0:
        parts.append(spec.image_weight * np.mean(imgs, axis=0))
    if txts and spec.text_weight > 0:
        parts.append(spec.text_weight * np.mean(txts, axis=0))
    if not parts:
        raise ValueError("a product needs at least one image or text vector")
    return normalise(np.sum(parts, axis=0))
