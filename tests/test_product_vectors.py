"""The image–text linear combination and its presets."""

from __future__ import annotations

import numpy as np
import pytest

from fashionbert.product_vectors import PRESETS, ProductVectorSpec, combine, normalise, product_vector_spec


def test_presets_are_the_papers():
    assert (PRESETS["i2t"].images, PRESETS["i2t"].texts) == (1, 3)
    assert (PRESETS["t2i"].images, PRESETS["t2i"].texts) == (2, 3)
    assert PRESETS["joint"].method == "joint" and PRESETS["t2i"].name == "t2i"
    custom = product_vector_spec("t2i", texts=1)
    assert custom.method == "combo" and (custom.images, custom.texts) == (2, 1) and custom.name.startswith("combo(")
    assert product_vector_spec("joint", images=2).method == "combo"  # a/b only mean something for the combination
    with pytest.raises(ValueError, match="unknown product vector preset"):
        product_vector_spec("best")
    with pytest.raises(ValueError):
        ProductVectorSpec("combo", images=0, texts=0)


def test_combine_uses_the_first_a_images_and_b_texts():
    rng = np.random.default_rng(0)
    imgs, txts = list(normalise(rng.standard_normal((3, 8)))), list(normalise(rng.standard_normal((4, 8))))
    spec = ProductVectorSpec("combo", images=2, texts=3, image_weight=1.0, text_weight=0.5)
    expected = normalise(np.mean(imgs[:2], axis=0) + 0.5 * np.mean(txts[:3], axis=0))
    np.testing.assert_allclose(combine(imgs, txts, spec), expected, atol=1e-6)
    # No image: the texts alone (a product without a readable picture is still indexed).
    np.testing.assert_allclose(combine([], txts, spec), normalise(np.mean(txts[:3], axis=0)), atol=1e-6)
    with pytest.raises(ValueError):
        combine([], [], spec)
