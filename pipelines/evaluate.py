"""The evaluation job: a checkpoint on a held-out catalog, both protocols of ARCHITECTURE.md §8."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashionbert.encoder import FashionBert
from fashionbert.evaluation import (
    EvalItem,
    MemoisedPairScorer,
    cross_encoder_pair_scorer,
    dual_encoder_pair_scorer,
    evaluate_full_catalog,
    evaluate_random100,
    flatten_metrics,
    write_report,
)
from fashionbert.evaluation.ceiling import random100_ceiling
from fashionbert.evaluation.misses import KnownAttributes, top1_misses
from fashionbert.reranking import DEFAULT_DUAL_WEIGHT, fuse_stage_scores
from indexer.catalog import Catalog, read_catalog
from indexer.embeddings import check_feature_dim
from indexer.feature_store import FeatureStore
from pipelines.photo_search_eval import evaluate_photo_search


@dataclass
class EvalConfig:
    checkpoint: Path
    catalog: Path
    features: Path
    json_out: Path | None = None
    n_queries: int = 1000
    n_candidates: int = 100
    seed: int = 0
    random100: bool = True
    full: bool = True
    random100_dual: bool = True  # the same groups scored by the dual encoder (stage 1), under random100_dual.*
    random100_fused: bool = True  # ... and by the search's fused score of both stages, under random100_fused.*
    dual_weight: float = DEFAULT_DUAL_WEIGHT  # of the fused score (fashionbert.reranking)
    # More weights to score the fused ranking with, on the same memoised cross-encoder scores
    # (random100_fused_sweep.<w>.*): the figure FASHIONBERT_RERANK_DUAL_WEIGHT is chosen by.
    dual_weight_sweep: tuple[float, ...] = ()
    ceiling: bool = True  # the Bayes ceiling of random-100, under random100_ceiling.* (catalogs that say what titles name)
    product_vectors: tuple[str, ...] = ()  # presets to score as the index serves them (joint, i2t, t2i)
    photo_search: bool = True  # a held-out shopper photo against the image-only vectors (photo_search.*)
    device: str = "cpu"
    precision: str = "fp32"  # the trunk's matmuls; auto/bf16 (fashionbert.precision) trade exactness for speed


def eval_items(catalog: Catalog, features_dir: Path) -> tuple[list[EvalItem], np.ndarray]:
    """One item per product: its title and the features of its first extracted image."""
    store = FeatureStore(features_dir)
    items, feats = [], []
    for pid, sub, title in zip(*(catalog.table.column(c).to_pylist() for c in ("product_id", "sub_category", "title"))):
        views = store.image_indices(pid)
        if not views:
            continue
        items.append(EvalItem(pid, sub, title, len(feats)))
        feats.append(store.get(pid, views[0]))
    if not items:
        raise ValueError(f"no product of the catalog under {catalog.root} has features in {features_dir}")
    return items, np.stack(feats)


def known_attributes(catalog: Catalog, items: list[EvalItem]) -> KnownAttributes | None:
    """Each item's attributes and what its title names, for a synthetic catalog; None for a catalog
    without ``attributes`` and ``title_attributes`` columns (a real one: its ceiling is unknown)."""
    if not {"attributes", "title_attributes"} <= set(catalog.table.column_names):
        return None
    rows = {pid: (dict(attrs or ()), named or ()) for pid, attrs, named in zip(
        *(catalog.table.column(c).to_pylist() for c in ("product_id", "attributes", "title_attributes")))}
    attrs = [rows[it.product_id][0] for it in items]
    named = [{k: a[k] for k in (*rows[it.product_id][1], "sub_category") if k in a} for it, a in zip(items, attrs)]
    return KnownAttributes(attrs, named)


def _misses(result: dict, prefix: str, items: list[EvalItem], known: KnownAttributes | None) -> dict[str, float]:
    """Why random-100 queries miss Rank@1 (fashionbert.evaluation.misses), under ``prefix.*``; none for a
    catalog that does not say what its titles name."""
    return {} if known is None else {f"{prefix}.{k}": v for k, v in top1_misses(result, items, known).items()}


def _miss_summary(metrics: dict[str, float], prefix: str, d: str) -> str:
    """One line for people: where ``prefix``'s Rank@1 misses in direction ``d`` go."""
    head = f"{prefix}.{d}.top1_miss."
    m = {k[len(head):]: v for k, v in metrics.items() if k.startswith(head)}
    detail = ", ".join(f"{k.split('.', 1)[1]} {v:.3f}" for k, v in sorted(m.items(), key=lambda kv: -kv[1])
                       if k.startswith("mistake."))
    return (f"eval: {d} Rank@1 misses, as shares of the queries: ties no reader could break {m['tie']:.3f}, "
            f"another sub-category {m['other_sub_category']:.3f}, mistakes {m['mistake']:.3f}"
            + (f" (by contradicted attribute: {detail})" if detail else ""))


def _renamed(result: dict, prefix: str, items: list[EvalItem], known: KnownAttributes | None) -> dict[str, float]:
    """random-100 headline numbers (and misses) of another scorer of the same groups, under ``prefix.*``."""
    flat = {k.replace("random100.", f"{prefix}.", 1): v for k, v in flatten_metrics(result, None).items()
            if k.startswith("random100.")}
    return flat | _misses(result, prefix, items, known)


def evaluate(cfg: EvalConfig, echo: Callable[[str], None] = print) -> dict[str, float]:
    start = time.perf_counter()
    model = FashionBert.from_pretrained(cfg.checkpoint, device=cfg.device, precision=cfg.precision)
    catalog = read_catalog(cfg.catalog, check_images="none")
    items, feats = eval_items(catalog, cfg.features)
    check_feature_dim(model, feats.shape[-1], f"features {cfg.features}")
    echo(f"eval: {len(items)} held-out products, checkpoint {cfg.checkpoint}")
    # Ranked by log-odds: a float32 probability rounds confident verdicts to 1.0 and ties them.
    cross = MemoisedPairScorer(cross_encoder_pair_scorer(model, feats))

    def random100(scorer: Callable[[list[str], np.ndarray], np.ndarray], threshold: float) -> dict:
        return evaluate_random100(model, items, feats, cfg.n_queries, cfg.n_candidates, cfg.seed,
                                  pair_scorer=scorer, tia_threshold=threshold)

    r100 = random100(cross, 0.0) if cfg.random100 else None
    full = evaluate_full_catalog(model, items, feats) if cfg.full else None
    metrics = flatten_metrics(r100, full)
    known = known_attributes(catalog, items) if cfg.random100 else None
    products: dict[str, float] = {}  # flat figures beyond r100 and full; the JSON report holds them too
    if r100 is not None and known is not None:
        products.update(_misses(r100, "random100", items, known))
        for d in ("t2i", "i2t"):
            echo(_miss_summary(products, "random100", d))
    if cfg.random100 and (cfg.random100_dual or cfg.random100_fused):
        summary = [f"{metrics['random100.sum_r']:.1f} (cross encoder)"]
        dual = MemoisedPairScorer(dual_encoder_pair_scorer(model, feats))
        dual_groups = random100(dual, 0.5)
        if cfg.random100_dual:
            products.update(_renamed(dual_groups, "random100_dual", items, known))
            summary.append(f"{products['random100_dual.sum_r']:.1f} (dual encoder)")
        if cfg.random100_fused:
            scale = model.logit_scale

            def fused_with(weight: float) -> dict:
                return random100(lambda t, rows: fuse_stage_scores(cross(t, rows), 2.0 * dual(t, rows) - 1.0, scale,
                                                                   weight), 0.0)

            products.update(_renamed(fused_with(cfg.dual_weight), "random100_fused", items, known))
            products["random100_fused.dual_weight"] = cfg.dual_weight
            summary.append(f"{products['random100_fused.sum_r']:.1f} (the search's fused score, dual weight "
                           f"{cfg.dual_weight:g})")
            sweep = {w: (products["random100_fused.sum_r"] if w == cfg.dual_weight else
                         float(fused_with(w)["sum_r"])) for w in sorted(set(cfg.dual_weight_sweep))}
            products.update({f"random100_fused_sweep.{w:g}.sum_r": v for w, v in sweep.items()})
            if sweep:
                best = max(sweep, key=lambda w: (sweep[w], -w))
                products["random100_fused_sweep.best_dual_weight"] = best
                echo("eval: fused SumR by dual weight: " + ", ".join(f"{w:g} -> {v:.1f}" for w, v in sweep.items())
                     + f" (best {best:g}; cross encoder alone {metrics['random100.sum_r']:.1f})")
        echo("eval: random-100 SumR " + ", ".join(summary) + ", on the same groups")
    if cfg.random100 and cfg.ceiling:
        if known is not None:
            ceiling = random100_ceiling(items, known.likelihood, cfg.n_queries, cfg.n_candidates, cfg.seed)
            products.update({f"random100_ceiling.{d}.{k}": v for d in ("t2i", "i2t") for k, v in ceiling[d].items()})
            products["random100_ceiling.sum_r"] = ceiling["sum_r"]
            echo(f"eval: random-100 SumR ceiling {ceiling['sum_r']:.1f} (the Bayes-optimal ranker on the catalog's "
                 f"attributes and what each title names)")
    if cfg.product_vectors:
        from pipelines.product_vector_eval import evaluate_product_vectors

        products.update(evaluate_product_vectors(model, cfg.catalog, cfg.features, cfg.product_vectors, echo=echo))
    if cfg.photo_search:
        try:
            products.update(evaluate_photo_search(model, cfg.catalog, cfg.features, echo=echo))
        except ValueError as err:  # a catalog of single-photo listings has no photo to hold out
            echo(f"eval: {err}; photo search not scored")
    metrics.update(products)
    if cfg.json_out is not None:
        extra = {"checkpoint": str(cfg.checkpoint), "catalog": str(cfg.catalog), "n_items": len(items),
                 "precision": cfg.precision, "seconds": round(time.perf_counter() - start, 1)}
        raw = {k: v for k, v in (("random100", r100), ("full", full)) if v is not None}
        paths = write_report({**raw, **products}, cfg.json_out, extra=extra)
        echo("eval: wrote " + ", ".join(str(p) for p in paths))
    return metrics
