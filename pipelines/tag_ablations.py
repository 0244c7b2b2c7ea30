"""Tag ablations: retrain the full tagger and each variant on the same data, seeds and budget; their held-out metrics.

A variant changes the head (keys of :class:`~fashionbert.tagging.TaggerConfig`) or the training
(keys of :class:`~fashionbert.tagging.TrainOptions`, e.g. the injected strays of design item 56).
With a frozen trunk the states of every (product, variant) are computed once and shared by all
runs, so each run's budget is spent on training alone. Called by ``fashionbert tags eval --ablations``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from fashionbert.encoder import FashionBert
from fashionbert.tagging import StateCache, TaggerConfig, TrainOptions, fit_tagger, score_metrics
from fashionbert.tagging.dataset import FULL, STRAY, VARIANTS
from fashionbert.tagging.training import scores_of
from indexer.features import resolve_device
from pipelines.tag_interactions import TREND_COLUMN
from pipelines.tag_views import read_view_kinds, stray_hidden_metrics, stray_positions, stray_view_weight, subset_metrics
from pipelines.tags import SPREAD_METRICS, TagTrainConfig, _with_trend, load_tag_data, tagged_rows, write_tag_report

Echo = Callable[[str], None]
# concat_mlp_fusion is not an ablation of a part but a second reading of "concatenation instead": with a
# hidden ReLU the concatenation is an MLP that can learn interactions, so it tells MFB's product apart
# from mere depth (docs/design.md item 44).
ABLATIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_low_level_attention": {"use_low_level_attention": False},
    "concat_fusion": {"fusion": "concat"},
    "concat_mlp_fusion": {"fusion": "concat_mlp"},
    "no_high_level_attention": {"use_high_level_attention": False},
    "no_view_consensus": {"view_consensus": False},  # high-level attention scoring each group alone (item 47)
    "sparse_group_weights": {"group_weights": "sparsemax"},  # not an ablation: a weighting that can drop a view (item 55)
    "gated_group_weights": {"group_weights": "gate"},  # nor this: per-view sigmoid gates, the mean when all are open (item 56)
    # ablations of the training, not of the head (TrainOptions fields): without the injected strays, and with
    # them but no loss on their weight (the tag loss alone teaches the attention; design item 56)
    "no_stray_injection": {"stray_injection": 0.0},
    "no_stray_loss": {"stray_loss_weight": 0.0},
    "stray_rows_without_tag_loss": {"stray_tag_loss": False},  # not an ablation: the swapped rows teach only the attention
}
TRAINING_FIELDS = frozenset(f.name for f in fields(TrainOptions))  # ablation keys that change the training, not the head


def ablation_variants(names: Sequence[str] | None = None) -> list[str]:
    """The ablation variants to run, in ``ABLATIONS`` order; ``full`` always, as the reference row.

    Why a selection: every variant costs a training run per seed (~3 min each on a 2-core CPU), and a
    question about one part needs only that part's row beside ``full``.
    """
    if names is None:
        return list(ABLATIONS)
    unknown = sorted(set(names) - set(ABLATIONS))
    if unknown:
        raise ValueError(f"unknown ablation variant(s) {', '.join(unknown)}; choose from {', '.join(ABLATIONS)}")
    return [name for name in ABLATIONS if name == "full" or name in names]


def _same_training(a: TrainOptions, b: TrainOptions, max_views: int) -> bool:
    """Whether two option sets train a tagger reading ``max_views`` views the same way.

    Injection is moot below two views, and the stray loss weight without injected strays.
    """
    def effective(o: TrainOptions) -> TrainOptions:
        share = o.injected_share(max_views)
        return replace(o, stray_injection=share, stray_loss_weight=o.stray_loss_weight if share > 0 else 0.0,
                       stray_tag_loss=o.stray_tag_loss or share == 0)
    return effective(a) == effective(b)


def run_ablations(cfg: TagTrainConfig, heldout_catalog: Path, heldout_features: Path, *, out_dir: Path | None = None,
                  json_out: Path | None = None, seeds: int = 1, variants: Sequence[str] | None = None,
                  echo: Echo = print) -> dict[str, dict[str, float]]:
    """Train the full tagger and each ablation with the same data, seed and budget; their held-out metrics.

    ``variants`` picks names of ``ABLATIONS`` (``full`` is always run); None runs them all.

    ``seeds`` > 1 trains every variant with seeds ``cfg.seed .. cfg.seed + seeds - 1`` (each seed also
    draws its own validation split) and reports the mean of each metric with the standard deviation of
    F1@3 and mAP.

    With a frozen trunk the states of every (product, modality variant) are computed once, before
    any run, and shared: every variant's ``max_minutes`` is then spent on training alone.
    """
    names = ablation_variants(variants)
    base, options = cfg.tagger_config(), cfg.options()
    device = resolve_device(cfg.device)
    trunk = FashionBert.from_pretrained(cfg.checkpoint, device=device)
    train, _ = load_tag_data(cfg.catalog, cfg.features, base.max_views, feature_dim=trunk.config.patch_feature_dim)
    held, held_store = load_tag_data(heldout_catalog, heldout_features, base.max_views,
                                     feature_dim=trunk.config.patch_feature_dim)
    rows = tagged_rows(held, heldout_catalog)
    truth = [held.tags[i] for i in rows]
    kinds = read_view_kinds(heldout_catalog, held, held_store, base.max_views)
    strays = stray_positions(rows, kinds)
    cache = held_cache = None
    if base.freeze_trunk:
        echo("tags ablations: computing the frozen trunk's states once for all runs")
        cache = StateCache(trunk, train, base.max_views, passes=base.trunk_passes)
        cache.warm(tagged_rows(train, cfg.catalog), (VARIANTS if options.modality_dropout > 0 else (FULL,))
                   + ((STRAY,) if options.injected_share(base.max_views) > 0 else ()))
        held_cache = StateCache(trunk, held, base.max_views, passes=base.trunk_passes)
        held_cache.warm(rows)
    table: dict[str, dict[str, float]] = {}
    for name in names:
        head_changes = {k: v for k, v in ABLATIONS[name].items() if k not in TRAINING_FIELDS}
        training_changes = {k: v for k, v in ABLATIONS[name].items() if k in TRAINING_FIELDS}
        config = TaggerConfig.from_dict({**base.to_dict(), **head_changes})
        if name != "full" and config == base and _same_training(replace(options, **training_changes), options,
                                                                 base.max_views):
            echo(f"tags ablations: {name} skipped: it trains exactly as full does here")
            continue
        runs = []
        for seed in range(cfg.seed, cfg.seed + seeds):
            run_trunk = trunk if base.freeze_trunk else FashionBert.from_pretrained(cfg.checkpoint, device=device)
            label = name if seeds == 1 else f"{name} seed {seed}"
            result = fit_tagger(run_trunk, train, config, replace(options, seed=seed, **training_changes),
                                echo=lambda m, n=label: echo(f"[{n}] {m}"), cache=cache)
            scores = scores_of(result.tagger, held, rows, held_cache)
            tags = result.tagger.vocabulary.tags
            runs.append({**_with_trend(score_metrics(scores, tags, truth, per_tag=True)),
                         **subset_metrics(scores, tags, truth, strays),
                         **stray_hidden_metrics(result.tagger, held, rows, kinds, tags, truth, held_cache),
                         **stray_view_weight(result.tagger, held, rows, kinds, held_cache),
                         "best_epoch": float(result.best_epoch),
                         "epochs": float(len(result.history)), "seconds": round(result.seconds, 2),
                         "parameters": float(sum(p.numel() for p in result.tagger.head.parameters()))})
            stray = (f", with a stray photo F1@3 {runs[-1]['with_stray.f1@3']:.4f} (hidden: "
                     f"{runs[-1]['stray_hidden.f1@3']:.4f}), stray weight "
                     f"{runs[-1]['stray_view_weight']:.3f}" if "with_stray.f1@3" in runs[-1] else "")
            trend = f", trend-tag mAP {runs[-1][TREND_COLUMN]:.4f}" if TREND_COLUMN in runs[-1] else ""
            echo(f"tags ablations: {label}: F1@3 {runs[-1]['f1@3']:.4f}{trend}{stray} ({len(result.history)} epochs, "
                 f"{result.seconds:.1f} s)")
            if out_dir is not None and seed == cfg.seed:
                result.tagger.save_pretrained(Path(out_dir) / name, {"train": cfg.record(), "ablation": name})
        table[name] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        if seeds > 1:  # differences between the variants are only worth reading beside their spread
            table[name] |= {f"{k}_sd": float(np.std([r[k] for r in runs], ddof=1)) for k in SPREAD_METRICS + tuple(
                f"{subset}.{m}" for subset in ("with_stray", "stray_hidden") for m in SPREAD_METRICS) if k in runs[0]}
            table[name]["seeds"] = float(seeds)
            trend = (f", trend-tag mAP {table[name][TREND_COLUMN]:.4f} ± {table[name][TREND_COLUMN + '_sd']:.4f}"
                     if TREND_COLUMN in table[name] else "")
            echo(f"tags ablations: {name}: mean F1@3 {table[name]['f1@3']:.4f} ± {table[name]['f1@3_sd']:.4f}, "
                 f"mAP {table[name]['map']:.4f} ± {table[name]['map_sd']:.4f}{trend} over {seeds} seeds")
    if json_out is not None:
        flat = {f"{name}.{k}": v for name, values in table.items() for k, v in values.items()}
        write_tag_report(flat, json_out, {"catalog": str(cfg.catalog), "heldout": str(heldout_catalog), "seed": cfg.seed,
                                          "seeds": seeds, "max_minutes": cfg.max_minutes, "epochs": cfg.epochs})
    return table
