"""Evaluation protocols and reports, checked with known-answer scorers.

The "models" here are tiny oracles, not mocks: each product's patch features
carry its number in ``features[i, 0, 0]`` and its title ends with the same
number, so a scorer can know the right answer and the expected metrics follow
exactly (oracle -> perfect, anti-oracle -> worst, constant -> pessimistic tie
rule, seeded random -> chance).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from fashionbert.evaluation import (
    CrossEncoder,
    DualEncoder,
    EvalItem,
    Group,
    build_random100_groups,
    check_group,
    dual_encoder_pair_scorer,
    evaluate_full_catalog,
    evaluate_random100,
    flatten_metrics,
    markdown_table,
    pessimistic_rank,
    recall_curve,
    write_report,
)
from fashionbert.evaluation.ceiling import expected_recall_at, random100_ceiling

D = 4


def make_items(
    sizes: dict[str, int], duplicates: Sequence[int] = (), dtype: type = np.float32
) -> tuple[list[EvalItem], np.ndarray]:
    """Products numbered 0..n-1 over sub-categories; ``duplicates`` get a second item (another image row)."""
    items: list[EvalItem] = []
    markers: list[int] = []
    k = 0
    for sub, n in sizes.items():
        for _ in range(n):
            items.append(EvalItem(f"p{k:04d}", sub, f"{sub} title {k}", len(markers)))
            markers.append(k)
            k += 1
    for k in duplicates:
        first = items[k]
        items.append(EvalItem(first.product_id, first.sub_category, first.text, len(markers)))
        markers.append(k)
    features = np.random.default_rng(0).normal(size=(len(markers), 64, D)).astype(dtype)
    features[:, 0, 0] = markers
    return items, features


def title_number(texts: Sequence[str]) -> np.ndarray:
    return np.array([int(t.rsplit(" ", 1)[1]) for t in texts])


def marker(patch_features: np.ndarray) -> np.ndarray:
    return np.rint(patch_features[:, 0, 0]).astype(int)


class Oracle:
    """1.0 for a product's own (title, image), 0.2 otherwise; records batch sizes and dtypes."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, np.dtype]] = []

    def score_pairs(self, texts: Sequence[str], patch_features: np.ndarray) -> np.ndarray:
        self.calls.append((len(texts), patch_features.dtype))
        return np.where(title_number(texts) == marker(patch_features), 1.0, 0.2)


class AntiOracle:
    def score_pairs(self, texts: Sequence[str], patch_features: np.ndarray) -> np.ndarray:
        return np.where(title_number(texts) == marker(patch_features), 0.0, 0.9)


class ConstantScorer:
    def score_pairs(self, texts: Sequence[str], patch_features: np.ndarray) -> np.ndarray:
        return np.full(len(texts), 0.5)


class RandomScorer:
    def __init__(self, seed: int = 1) -> None:
        self.rng = np.random.default_rng(seed)

    def score_pairs(self, texts: Sequence[str], patch_features: np.ndarray) -> np.ndarray:
        return self.rng.random(len(texts))


class Recorder:
    def __init__(self) -> None:
        self.pairs: list[tuple[int, int]] = []

    def score_pairs(self, texts: Sequence[str], patch_features: np.ndarray) -> np.ndarray:
        self.pairs += list(zip(title_number(texts).tolist(), marker(patch_features).tolist()))
        return np.zeros(len(texts))


def pids(items: list[EvalItem], group: Group) -> list[str]:
    return [items[c].product_id for c in group.candidates]


# --------------------------------------------------------------------------- group building


def test_groups_one_positive_same_subcategory_or_topped_up() -> None:
    items, _ = make_items({"shirt": 150, "scarf": 30})
    for direction in ("t2i", "i2t"):
        groups = build_random100_groups(items, n_queries=180, seed=0, direction=direction)  # type: ignore[arg-type]
        assert len(groups) == 180 and len({g.query for g in groups}) == 180
        for g in groups:
            q = items[g.query]
            cands = pids(items, g)
            assert len(g.candidates) == 101 and len(set(cands)) == 101  # distinct products
            assert cands.count(q.product_id) == 1 and g.candidates[g.positive] == g.query
            subs = [items[c].sub_category for c in g.candidates]
            if q.sub_category == "shirt":
                assert not g.topped_up and set(subs) == {"shirt"}
            else:  # only 29 other scarves: all of them, then 71 shirts
                assert g.topped_up and subs.count("scarf") == 30 and subs.count("shirt") == 71
            assert g.warning is None
        assert len({g.positive for g in groups}) > 10  # positions are shuffled


def test_groups_deterministic_per_seed() -> None:
    items, _ = make_items({"a": 120, "b": 120})
    g1 = build_random100_groups(items, n_queries=50, seed=7)
    assert g1 == build_random100_groups(items, n_queries=50, seed=7)
    assert g1 != build_random100_groups(items, n_queries=50, seed=8)
    assert g1 != build_random100_groups(items, n_queries=50, seed=7, direction="i2t")  # independent query samples


def test_small_eval_set_uses_all_others_with_warning() -> None:
    items, features = make_items({"a": 12, "b": 8})
    groups = build_random100_groups(items, n_queries=1000, seed=0)
    assert len(groups) == 20
    for g in groups:
        assert sorted(pids(items, g)) == sorted(it.product_id for it in items)
        assert g.warning and "only 20 products" in g.warning
    res = evaluate_random100(Oracle(), items, features)
    assert res["warnings"] and res["t2i"]["r1"] == 1.0
    assert res["chance_sum_r"] == pytest.approx(100 * 2 * (1 + 5 + 10) / 20)


def test_duplicate_product_id_never_sampled_as_negative() -> None:
    items, features = make_items({"a": 130, "b": 10}, duplicates=[0, 1, 2, 3, 131])
    assert len(items) == 145
    for direction in ("t2i", "i2t"):
        groups = build_random100_groups(items, n_queries=1000, seed=3, direction=direction)  # type: ignore[arg-type]
        assert len(groups) == 140  # products, not items
        for g in groups:
            cands = pids(items, g)
            assert len(set(cands)) == len(cands) == 101
            assert cands.count(items[g.query].product_id) == 1
    # the oracle scores both images of a product 1.0: a duplicate among negatives would break R@1
    res = evaluate_random100(Oracle(), items, features, seed=3)
    assert res["t2i"]["r1"] == res["i2t"]["r1"] == 1.0


def test_check_group_rejects_second_positive() -> None:
    items, _ = make_items({"a": 5}, duplicates=[0])  # item 5 is a second image of product 0
    check_group(Group("t2i", 0, (3, 0, 1), 1, False), items)
    with pytest.raises(AssertionError, match="exactly one positive"):
        check_group(Group("t2i", 0, (0, 1, 5), 0, False), items)
    with pytest.raises(AssertionError, match="exactly one positive"):
        check_group(Group("t2i", 0, (1, 2, 3), 0, False), items)
    with pytest.raises(AssertionError, match="positive position"):
        check_group(Group("t2i", 0, (1, 0, 2), 0, False), items)


# --------------------------------------------------------------------------- random-100 metrics


def test_oracle_is_perfect_on_memmapped_float16(tmp_path: Path) -> None:
    items, features = make_items({"a": 150, "b": 80}, dtype=np.float16)
    np.save(tmp_path / "part-00000.npy", features)
    mm = np.load(tmp_path / "part-00000.npy", mmap_mode="r")
    oracle = Oracle()
    res = evaluate_random100(oracle, items, mm, n_queries=100, batch_size=404)
    assert isinstance(oracle, CrossEncoder)
    for d in ("t2i", "i2t"):
        assert res[d]["r1"] == res[d]["r5"] == res[d]["r10"] == 1.0
        assert res[d]["ranks"] == [1] * 100 and res[d]["n_groups"] == 100
    assert res["sum_r"] == 600.0 and res["tia_accuracy"] == 1.0 and res["tia_pairs"] == 200
    assert res["n_groups"] == 200 and res["n_topped_up"] > 0  # "b" has only 79 others
    assert res["chance_sum_r"] == pytest.approx(3200 / 101)
    sizes = [n for n, _ in oracle.calls]
    assert sum(sizes) == 200 * 101 and max(sizes) == 404 and len(sizes) == 50  # batched across groups
    assert all(dt == np.float32 for _, dt in oracle.calls)
    json.dumps(res)  # plain Python types


def test_anti_oracle_and_constant_scorer() -> None:
    items, features = make_items({"a": 120})
    anti = evaluate_random100(AntiOracle(), items, features, n_queries=60)
    assert anti["t2i"]["r10"] == anti["i2t"]["r10"] == 0.0
    assert anti["t2i"]["ranks"] == [101] * 60 and anti["sum_r"] == 0.0 and anti["tia_accuracy"] == 0.0
    const = evaluate_random100(ConstantScorer(), items, features, n_queries=60)
    assert const["t2i"]["r1"] == const["i2t"]["r1"] == 0.0 and const["sum_r"] == 0.0  # ties go against the positive
    assert const["tia_accuracy"] == 0.5  # 0.5 is "no match": negatives right, positives wrong


def test_random_scorer_is_at_chance() -> None:
    items, features = make_items({"a": 400, "b": 300, "c": 300})
    res = evaluate_random100(RandomScorer(), items, features, n_queries=1000)
    assert res["n_groups"] == 2000
    assert res["chance_sum_r"] == pytest.approx(31.68, abs=0.01)
    assert res["sum_r"] == pytest.approx(31.68, abs=8.0)  # SE ~ 2.5 at 1000 queries per direction
    assert np.mean(res["t2i"]["ranks"] + res["i2t"]["ranks"]) == pytest.approx(51, abs=2.5)
    assert res["tia_accuracy"] == pytest.approx(0.5, abs=0.05)


class ProductTypeBlind:
    """Ranks by the product number's parity alone, as a scorer that ignores the sub-category would:
    the positive ties with its own sub-category's same-parity products and with every top-up of that
    parity."""

    def score_pairs(self, texts: Sequence[str], patch_features: np.ndarray) -> np.ndarray:
        return np.where(title_number(texts) % 2 == marker(patch_features) % 2, 1.0, 0.0)


def test_top1_from_another_sub_category() -> None:
    items, features = make_items({"a": 40, "b": 70})  # every group is topped up from the other sub-category
    oracle = evaluate_random100(Oracle(), items, features, n_queries=50)
    assert oracle["t2i"]["top1_other_sub_category"] == oracle["i2t"]["top1_other_sub_category"] == 0.0
    blind = evaluate_random100(ProductTypeBlind(), items, features, n_queries=50)
    assert blind["t2i"]["top1_other_sub_category"] == blind["i2t"]["top1_other_sub_category"] == 1.0
    single = evaluate_random100(Oracle(), *make_items({"a": 120}), n_queries=20)  # no top-ups: never
    assert single["t2i"]["top1_other_sub_category"] == 0.0


def test_pairs_follow_direction() -> None:
    items, features = make_items({"a": 101})
    rec = Recorder()
    evaluate_random100(rec, items, features, n_queries=1)
    t2i, i2t = rec.pairs[:101], rec.pairs[101:]
    assert len({t for t, _ in t2i}) == 1 and len({m for _, m in t2i}) == 101  # one text vs 101 images
    assert len({m for _, m in i2t}) == 1 and len({t for t, _ in i2t}) == 101  # one image vs 101 texts


def test_pessimistic_rank() -> None:
    assert pessimistic_rank(np.array([0.3, 0.9, 0.1]), 1) == 1
    assert pessimistic_rank(np.array([0.9, 0.9, 0.1]), 1) == 2
    assert pessimistic_rank(np.array([0.5, 0.5, 0.5]), 0) == 3
    assert pessimistic_rank(np.array([0.1, np.nan, 0.2]), 1) == 3


# --------------------------------------------------------------------------- full catalog


class OneHotDual:
    """Text k -> e_k. Image with markers (k, s) -> e_k if s == k, else normalise(0.6 e_k + 0.8 e_s)."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim

    def encode_text(self, texts: Sequence[str], segment: str = "T") -> np.ndarray:
        assert segment == "T"
        return np.eye(self.dim, dtype=np.float32)[title_number(texts)]

    def encode_images(self, patch_features: np.ndarray) -> np.ndarray:
        k = marker(patch_features)
        s = np.rint(patch_features[:, 0, 1]).astype(int)
        e = np.eye(self.dim, dtype=np.float32)
        emb = np.where((s == k)[:, None], e[k], 0.6 * e[k] + 0.8 * e[s])
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_full_catalog_identity_is_perfect() -> None:
    items, features = make_items({"a": 30, "b": 20})
    features[:, 0, 1] = features[:, 0, 0]
    model = OneHotDual()
    assert isinstance(model, DualEncoder)
    res = evaluate_full_catalog(model, items, features, batch_size=7)
    for d in ("t2i", "i2t"):
        assert res[d]["recall@1"] == res[d]["recall@10"] == res[d]["recall@100"] == 1.0
        assert res[d]["mrr"] == 1.0 and res[d]["ranks"] == [1] * 50
    assert res["n_items"] == res["n_products"] == 50
    json.dumps(res)


def test_full_catalog_known_permutation() -> None:
    items, features = make_items({"a": 40})
    sigma = np.arange(40)
    sigma[:20] = np.arange(20) ^ 1  # swap (0,1), (2,3), ... ; 20..39 fixed
    features[:, 0, 1] = sigma
    res = evaluate_full_catalog(OneHotDual(), items, features, ks=(1, 2, 10))
    for d in ("t2i", "i2t"):
        # swapped products: the partner's image/text scores 0.8 > own 0.6 -> rank 2
        assert res[d]["ranks"] == [2] * 20 + [1] * 20
        assert res[d]["recall@1"] == 0.5 and res[d]["recall@2"] == res[d]["recall@10"] == 1.0
        assert res[d]["mrr"] == pytest.approx(0.75)


def test_full_catalog_any_image_of_the_product_is_positive() -> None:
    items, features = make_items({"a": 20}, duplicates=[5])  # item 20: a second image of product 5
    features[:, 0, 1] = features[:, 0, 0]
    features[5, 0, :2] = 63  # item 5's own image is unrelated to its title; item 20's matches
    res = evaluate_full_catalog(OneHotDual(), items, features)
    assert res["n_items"] == 21 and res["n_products"] == 20
    assert res["t2i"]["ranks"][5] == 1 and res["t2i"]["ranks"][20] == 1  # found via the other image
    assert res["t2i"]["recall@1"] == 1.0
    # item 5's image (e_63) ties every text at 0: pessimistically behind all 19 negatives
    assert res["i2t"]["ranks"][5] == 20 and res["i2t"]["ranks"][20] == 1


def test_random100_scored_by_the_dual_encoder() -> None:
    """The same groups through the dual encoder: exact ranks from a known permutation."""
    items, features = make_items({"a": 150})
    sigma = np.arange(150)
    sigma[:50] = np.arange(50) ^ 1  # products 0..49 swapped in pairs: the partner scores 0.8 > own 0.6
    features[:, 0, 1] = sigma
    scorer = dual_encoder_pair_scorer(OneHotDual(dim=150), features, batch_size=16)
    res = evaluate_random100(None, items, features, n_queries=150, pair_scorer=scorer)
    for d in ("t2i", "i2t"):
        groups = build_random100_groups(items, n_queries=150, seed=0, direction=d)
        # swapped product k ranks 2 exactly when its partner k^1 is among its 100 candidates
        expected = [2 if g.query < 50 and (g.query ^ 1) in g.candidates else 1 for g in groups]
        assert res[d]["ranks"] == expected and 2 in expected
    with pytest.raises(ValueError, match="pair_scorer returned"):
        evaluate_random100(None, items, features, n_queries=5, pair_scorer=lambda t, r: np.zeros(3))


# --------------------------------------------------------------------------- reports

EXPECTED_KEYS = {
    *(f"random100.{d}.r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)),
    *(f"random100.{d}.top1_other_sub_category" for d in ("i2t", "t2i")),
    "random100.sum_r",
    "tia_accuracy",
    *(f"full.{d}.{m}" for d in ("t2i", "i2t") for m in ("recall@1", "recall@10", "recall@100", "mrr")),
}


@pytest.fixture(scope="module")
def results() -> tuple[dict, dict]:
    items, features = make_items({"a": 150, "b": 60})
    features[:, 0, 1] = features[:, 0, 0]
    r100 = evaluate_random100(Oracle(), items, features, n_queries=50)
    full = evaluate_full_catalog(OneHotDual(dim=256), items, features)
    return r100, full


def test_flatten_metrics_keys(results: tuple[dict, dict]) -> None:
    r100, full = results
    flat = flatten_metrics(r100, full)
    assert set(flat) == EXPECTED_KEYS
    assert all(isinstance(v, float) for v in flat.values())
    assert flat["random100.sum_r"] == 600.0 and flat["full.t2i.mrr"] == 1.0
    assert set(flatten_metrics(r100, None)) == {k for k in EXPECTED_KEYS if not k.startswith("full.")}
    assert set(flatten_metrics(None, full)) == {k for k in EXPECTED_KEYS if k.startswith("full.")}
    assert flatten_metrics(None, None) == {}


def test_write_report_round_trips(results: tuple[dict, dict], tmp_path: Path) -> None:
    r100, full = results
    extra = {"checkpoint": "ckpt/step-1000", "n_items": 210}
    paths = write_report({"random100": r100, "full": full}, tmp_path / "out" / "eval.json", extra=extra)
    js, md, png = paths
    assert (js.name, md.name, png.name) == ("eval.json", "eval.md", "eval.png")
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(js.read_text())
    assert data["metrics"] == flatten_metrics(r100, full) and data["extra"] == extra
    assert data["details"]["random100"]["t2i"]["ranks"] == r100["t2i"]["ranks"]
    text = md.read_text()
    assert "ckpt/step-1000" in text and "SumR: 600.0" in text and "| text → image | 1.0000" in text

    flat = flatten_metrics(r100, None)  # the flat form works too (no curves to draw)
    paths = write_report(flat, tmp_path / "flat.json")
    assert json.loads(paths[0].read_text())["metrics"] == flat and paths[2].stat().st_size > 0


def test_markdown_table_and_recall_curve(results: tuple[dict, dict]) -> None:
    r100, full = results
    table = markdown_table(flatten_metrics(r100, full))
    assert "| direction | R@1 | R@5 | R@10 |" in table and "| direction | R@1 | R@10 | R@100 | MRR |" in table
    assert markdown_table({}) == "(no metrics)\n"
    curve = recall_curve([1, 2, 2, 5, 200], 10)
    assert curve.shape == (10,)
    np.testing.assert_allclose(curve[[0, 1, 3, 4, 9]], [0.2, 0.6, 0.6, 0.8, 0.8])


def test_expected_recall_breaks_exact_ties_at_random() -> None:
    assert expected_recall_at([1.0, 1.0, 1.0, 0.0], 0, 1) == pytest.approx(1 / 3)
    assert expected_recall_at([1.0, 1.0, 1.0, 0.0], 0, 2) == pytest.approx(2 / 3)
    assert expected_recall_at([1.0, 1.0, 1.0, 0.0], 0, 5) == 1.0
    assert expected_recall_at([0.5, 0.9, 0.5, 0.1], 0, 1) == 0.0  # one strictly better: never first
    assert expected_recall_at([0.5, 0.9, 0.5, 0.1], 0, 2) == pytest.approx(1 / 2)


def test_ceiling_of_a_catalog_of_indistinguishable_pairs() -> None:
    """Known answer: products come in pairs no text can tell apart, so the best R@1 is 1/2 and R@5 is 1."""
    items = [EvalItem(f"p{i}", "shirts", f"text {i // 2}", i) for i in range(40)]
    ceiling = random100_ceiling(items, lambda text, image: float(text // 2 == image // 2), n_candidates=100)
    for d in ("t2i", "i2t"):
        assert ceiling[d]["r1"] == pytest.approx(0.5) and ceiling[d]["r5"] == 1.0 and ceiling[d]["r10"] == 1.0
    assert ceiling["sum_r"] == pytest.approx(500.0)


def test_the_ceiling_needs_a_catalog_that_says_what_titles_name(make_catalog) -> None:
    """A real catalog (no title_attributes) gets no ceiling; a synthetic-style one gets the exact likelihood."""
    from indexer.catalog import read_catalog
    from pipelines.evaluate import known_attributes

    rows = [{"attributes": [("colour", c), ("pattern", "solid"), ("sub_category", "shirt"), ("category", "tops")]}
            for c in ("red", "blue")]
    items = [EvalItem(f"p{i:03d}", "shirt", f"t{i}", i) for i in range(2)]
    plain = read_catalog(make_catalog(rows, name="real.parquet"), check_images="none")
    assert known_attributes(plain, items) is None
    named = [{**r, "title_attributes": ["colour"]} for r in rows]
    likelihood = known_attributes(read_catalog(make_catalog(named), check_images="none"), items).likelihood
    assert likelihood(0, 1) == 0.0  # "red" does not describe the blue shirt
    # "red shirt" of a red solid shirt: solid left implicit (0.6), or named and then the one left out (0.4 x 0.3)
    assert likelihood(0, 0) == pytest.approx(0.6 + 0.4 * 0.3)
