"""Tag recommendation jobs: train a tagger, predict a catalog's tags, evaluate against baselines, ablate.

Data comes as everywhere else in the project: a catalog Parquet (``indexer.catalog``) with a
``tags`` column for training and evaluation, its patch-feature directory
(``fashionbert features``), and a FashionBERT checkpoint for the trunk. A product without
extracted features is a product without an image (the tagger reads its title alone).

Evaluation trains the two baselines on the tagger's own recorded training catalog in the
same run, so the comparison is always between methods that saw the same products.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fashionbert.encoder import FashionBert
from fashionbert.tagging import (
    LateFusionLinear,
    MostFrequentTags,
    StateCache,
    TagDataset,
    Tagger,
    TaggerConfig,
    TagVocabulary,
    TrainOptions,
    fit_tagger,
    pooled_features,
    score_metrics,
)
from fashionbert.tagging.metrics import TABLE_COLUMNS, markdown_table
from fashionbert.tagging.training import pos_weights, scores_of, training_split
from fashionbert.tagging.vocabulary import clean_tags
from indexer.catalog import read_catalog
from indexer.embeddings import checkpoint_sha256
from indexer.feature_store import FeatureStore
from indexer.features import resolve_device
from pipelines.tag_interactions import TREND_COLUMN, trend_tag_map
from pipelines.tag_views import (VIEW_WEIGHT_COLUMNS, read_view_kinds, stray_hidden_metrics, stray_positions,
                                 stray_view_weight, subset_metrics)

Echo = Callable[[str], None]
SPREAD_METRICS = ("f1@3", "map", TREND_COLUMN)  # reported with their standard deviation over seeds (when there)


# ---------------------------------------------------------------------------- data
def load_tag_data(catalog: Path, features: Path, max_views: int, *, need_tags: bool = True,
                  feature_dim: int | None = None) -> tuple[TagDataset, FeatureStore]:
    """A catalog's titles and tags with lazy access to its products' patch features."""
    cat = read_catalog(catalog, check_images="none")
    names = cat.table.column_names
    if need_tags and "tags" not in names:
        raise ValueError(f"catalog {catalog} has no 'tags' column: training and evaluating a tagger need the "
                         "merchants' tags (list<string>)")
    store = FeatureStore(features)
    if feature_dim is not None and store.feature_dim != feature_dim:
        raise ValueError(f"features in {features} are {store.feature_dim}-d but the trunk expects {feature_dim}-d patch "
                         "features: extract them with the image encoder the checkpoint was trained with")
    ids = cat.product_ids
    if not any(store.image_indices(pid) for pid in ids):
        raise ValueError(f"no product of {catalog} has features in {features}: run "
                         f"`fashionbert features --catalog {catalog} --out {features}`")
    tags = cat.table.column("tags").to_pylist() if "tags" in names else [[] for _ in ids]
    data = TagDataset(cat.table.column("title").to_pylist(), [clean_tags(t) for t in tags],
                      views=lambda i: store.views(ids[i], max_views), product_ids=ids,
                      groups=cat.table.column("sub_category").to_pylist(),
                      view_count=lambda i: store.view_count(ids[i], max_views))
    return data, store


def tagged_rows(data: TagDataset, catalog: Path) -> list[int]:
    rows = [i for i, t in enumerate(data.tags) if t]
    if not rows:
        raise ValueError(f"no product of {catalog} has tags: its 'tags' column is empty")
    return rows


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}.{k}": float(v) for k, v in metrics.items()}


def metrics_table(metrics: dict[str, float]) -> str:
    """The Markdown table of an evaluation, with the spread columns when ablations ran over seeds."""
    extra = tuple(name for name in (TREND_COLUMN, *(f"{k}_sd" for k in SPREAD_METRICS), *VIEW_WEIGHT_COLUMNS)
                  if any(key.endswith(f".{name}") for key in metrics))
    return markdown_table(metrics, TABLE_COLUMNS + extra)


def write_tag_report(metrics: dict[str, float], json_out: Path, extra: dict[str, Any]) -> tuple[Path, Path]:
    """``json_out`` ({"metrics", "extra"}, like ``fashionbert eval``) and the Markdown table beside it."""
    json_out = Path(json_out)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps({"metrics": metrics, "extra": extra}, indent=2, ensure_ascii=False, default=str) + "\n")
    md = json_out.with_suffix(".md")
    header = f"# Tag recommendation: {json_out.stem}\n\n" + "".join(f"- {k}: {v}\n" for k, v in extra.items())
    md.write_text(header + "\n" + metrics_table(metrics) + "\n", encoding="utf-8")
    return json_out, md


# ---------------------------------------------------------------------------- training
@dataclass
class TagTrainConfig:
    """A tagger's training job as recorded with it. The training defaults are TrainOptions' own (one place to change)."""

    catalog: Path
    features: Path
    checkpoint: Path
    out: Path | None = None
    max_minutes: float | None = None
    epochs: int = TrainOptions.max_epochs
    fine_tune_trunk: bool = False
    loss: str = TrainOptions.loss
    seed: int = TrainOptions.seed
    batch_size: int = TrainOptions.batch_size
    lr: float = TrainOptions.lr
    patience: int = TrainOptions.patience
    select_on: str = TrainOptions.select_on  # validation metric that picks the epoch
    val_fraction: float = TrainOptions.val_fraction
    modality_dropout: float = TrainOptions.modality_dropout
    stray_injection: float = TrainOptions.stray_injection  # design item 56; moot with one view
    stray_loss_weight: float = TrainOptions.stray_loss_weight
    device: str = "cpu"
    progress: bool = True
    head: dict[str, Any] = field(default_factory=dict)  # TaggerConfig fields: glimpses, max_views, min_tag_count, ...

    def tagger_config(self) -> TaggerConfig:
        return TaggerConfig.from_dict({**self.head, "freeze_trunk": not self.fine_tune_trunk})

    def options(self) -> TrainOptions:
        return TrainOptions(max_epochs=self.epochs, max_minutes=self.max_minutes, batch_size=self.batch_size, lr=self.lr,
                            loss=self.loss, patience=self.patience, select_on=self.select_on, val_fraction=self.val_fraction,
                            modality_dropout=self.modality_dropout, stray_injection=self.stray_injection,
                            stray_loss_weight=self.stray_loss_weight, seed=self.seed, progress=self.progress)

    def record(self) -> dict[str, Any]:
        return {k: str(Path(v).resolve()) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def from_record(cls, record: dict[str, Any], **changes: Any) -> TagTrainConfig:
        # taggers recorded before select_on chose on F1@3, and before stray injection had none
        fields_ = {"select_on": "f1@3", "stray_injection": 0.0, **record, **changes}
        for key in ("catalog", "features", "checkpoint", "out"):
            if fields_.get(key) is not None:
                fields_[key] = Path(fields_[key])
        return cls(**fields_)


@dataclass
class TagTrainSummary:
    tagger: Path
    n_train: int
    n_val: int
    n_tags: int
    epochs: int
    best_epoch: int
    best_val: dict[str, float]
    stopped_by: str
    seconds: float
    items_per_second: float

    def line(self) -> str:
        val = "".join(f", validation {name} {self.best_val[key]:.4f}" for key, name in (("map", "mAP"), ("f1@3", "F1@3"))
                      if key in self.best_val)
        return (f"tags train: {self.n_tags} tags, {self.epochs} epoch(s) (best {self.best_epoch}, stopped by "
                f"{self.stopped_by}){val}, {self.items_per_second:.1f} items/s in {self.seconds:.1f} s -> {self.tagger}")


def train_tagger(cfg: TagTrainConfig, echo: Echo = print) -> TagTrainSummary:
    """Train a tagger on ``cfg.catalog`` + ``cfg.features`` over the trunk of ``cfg.checkpoint``; save it to ``cfg.out``."""
    if cfg.out is None:
        raise ValueError("TagTrainConfig.out (the tagger directory to write) is required")
    tagger_config, options = cfg.tagger_config(), cfg.options()
    trunk = FashionBert.from_pretrained(cfg.checkpoint, device=resolve_device(cfg.device))
    data, store = load_tag_data(cfg.catalog, cfg.features, tagger_config.max_views,
                                feature_dim=trunk.config.patch_feature_dim)
    result = fit_tagger(trunk, data, tagger_config, options, echo=echo)
    info = {
        "catalog": str(Path(cfg.catalog).resolve()), "features": str(Path(cfg.features).resolve()),
        "checkpoint": str(Path(cfg.checkpoint).resolve()), "checkpoint_sha256": checkpoint_sha256(cfg.checkpoint),
        "features_info": {"config": store.info.get("config"), "feature_dim": store.feature_dim},
        "train": cfg.record(), "n_train": result.n_train, "n_val": result.n_val, "best_epoch": result.best_epoch,
        "best_val": result.best_val, "stopped_by": result.stopped_by, "seconds": round(result.seconds, 2),
        "items_per_second": round(result.items_per_second, 2), "history": result.history,
    }
    result.tagger.save_pretrained(cfg.out, info)
    return TagTrainSummary(Path(cfg.out), result.n_train, result.n_val, len(result.tagger.vocabulary), len(result.history),
                           result.best_epoch, result.best_val, result.stopped_by, result.seconds, result.items_per_second)


# ---------------------------------------------------------------------------- prediction
@dataclass
class PredictSummary:
    out: Path
    products: int
    seconds: float

    @property
    def products_per_second(self) -> float:
        return self.products / self.seconds if self.seconds > 0 else float("nan")

    def line(self) -> str:
        return f"tags predict: {self.products} products in {self.seconds:.1f} s ({self.products_per_second:.1f}/s) -> {self.out}"


def predict_tags(tagger_dir: Path, catalog: Path, features: Path, out: Path, k: int = 5, *, batch_size: int = 32,
                 device: str = "cpu", echo: Echo = print) -> PredictSummary:
    """The top-``k`` tags of every product of ``catalog``: Parquet (product_id, tags, scores), best first."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    tagger = Tagger.from_pretrained(tagger_dir, device=resolve_device(device))
    data, _ = load_tag_data(catalog, features, tagger.config.max_views, need_tags=False, feature_dim=tagger.feature_dim)
    t0 = time.perf_counter()
    probs = scores_of(tagger, data, range(len(data)), None, batch_size)
    k = min(k, probs.shape[1])
    order = probs.argsort(axis=1, kind="stable")[:, ::-1][:, :k]
    tags = [[tagger.vocabulary.tags[j] for j in row] for row in order]
    scores = [[float(p[j]) for j in row] for p, row in zip(probs, order)]
    seconds = time.perf_counter() - t0
    table = pa.table({"product_id": pa.array(data.product_ids, pa.string()), "tags": pa.array(tags, pa.list_(pa.string())),
                      "scores": pa.array(scores, pa.list_(pa.float32()))})
    meta = {"tagger": tagger.name, "tagger_version": tagger.version, "k": str(k)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(meta), out)
    summary = PredictSummary(out, len(data), seconds)
    echo(summary.line())
    return summary


# ---------------------------------------------------------------------------- evaluation
def _recorded_training(tagger: Tagger, tagger_dir: Path) -> TagTrainConfig:
    record = tagger.info.get("train")
    if not record:
        raise ValueError(f"{tagger_dir} does not record how it was trained (tagger_info.json): cannot train baselines "
                         "or ablations on its data; pass --no-baselines")
    cfg = TagTrainConfig.from_record(record, out=None, progress=False)
    for what, path in (("catalog", cfg.catalog), ("features", cfg.features)):
        if not Path(path).exists():
            raise FileNotFoundError(f"the tagger's training {what} {path} (recorded in {tagger_dir}/tagger_info.json) is "
                                    "not there any more: baselines and ablations are trained on it; pass --no-baselines")
    return cfg


def _with_trend(metrics: dict[str, float]) -> dict[str, float]:
    return metrics | trend_tag_map(metrics)


def evaluate_tagger(tagger_dir: Path, catalog: Path, features: Path, json_out: Path | None = None, *,
                    baselines: bool = True, ablations: bool = False, seeds: int = 1,
                    variants: Sequence[str] | None = None, device: str = "cpu",
                    batch_size: int = 64, echo: Echo = print) -> dict[str, float]:
    """P/R/F1/hit@1,3,5 of the tagger on a held-out catalog, beside the baselines (and the ablations)."""
    from pipelines.tag_ablations import ablation_variants, run_ablations  # it reads this module's data helpers

    t0 = time.perf_counter()
    if ablations:
        ablation_variants(variants)  # a misspelt variant fails now, not after the baselines
    tagger = Tagger.from_pretrained(tagger_dir, device=resolve_device(device))
    held, held_store = load_tag_data(catalog, features, tagger.config.max_views, feature_dim=tagger.feature_dim)
    rows = tagged_rows(held, catalog)
    truth = [held.tags[i] for i in rows]
    kinds = read_view_kinds(catalog, held, held_store, tagger.config.max_views)
    strays = stray_positions(rows, kinds)
    echo(f"tags eval: {len(rows)} held-out products with tags ({len(strays)} with a stray photo among the views read), "
         f"tagger {tagger.name} ({tagger.version})")
    # one trunk pass per product, shared by the scores and the stray products' view weights
    states = StateCache(tagger.trunk, held, tagger.config.max_views, batch_size, passes=tagger.config.trunk_passes)
    scores = scores_of(tagger, held, rows, states, batch_size)
    metrics = _prefixed("model", _with_trend(score_metrics(scores, tagger.vocabulary.tags, truth, per_tag=True))
                        | subset_metrics(scores, tagger.vocabulary.tags, truth, strays)
                        | stray_hidden_metrics(tagger, held, rows, kinds, tagger.vocabulary.tags, truth, states, batch_size)
                        | stray_view_weight(tagger, held, rows, kinds, states, batch_size=batch_size))
    train_cfg = _recorded_training(tagger, Path(tagger_dir)) if baselines or ablations else None
    if baselines and train_cfg is not None:
        train, _ = load_tag_data(train_cfg.catalog, train_cfg.features, tagger.config.max_views,
                                 feature_dim=tagger.feature_dim)
        train_rows, _ = training_split(train, train_cfg.val_fraction, train_cfg.seed)  # the tagger's own training rows
        train_tags = [train.tags[i] for i in train_rows]
        frequent = MostFrequentTags(TagVocabulary.build(train_tags, 1))
        metrics |= _prefixed("most_frequent", score_metrics(frequent.scores(len(rows)), frequent.vocabulary.tags, truth))
        y = tagger.vocabulary.encode(train_tags)
        # late fusion: separate text and image passes; joint_probe: the same linear layer on the joint pass
        for name, passes in (("late_fusion", "separate"), ("joint_probe", "joint")):
            x_train = pooled_features(tagger.trunk, train, train_rows, tagger.config.max_views, batch_size, passes)
            x_held = pooled_features(tagger.trunk, held, rows, tagger.config.max_views, batch_size, passes)
            linear = LateFusionLinear.fit(x_train, y, pos_weight=pos_weights(y, TrainOptions().max_pos_weight),
                                          seed=train_cfg.seed)
            held_scores = linear.scores(x_held)
            metrics |= _prefixed(name, _with_trend(score_metrics(held_scores, tagger.vocabulary.tags, truth, per_tag=True))
                                 | subset_metrics(held_scores, tagger.vocabulary.tags, truth, strays))
    if ablations and train_cfg is not None:
        for name, values in run_ablations(train_cfg, catalog, features, seeds=seeds, variants=variants, echo=echo).items():
            metrics |= _prefixed(f"ablation.{name}", values)
    if json_out is not None:
        extra = {"tagger": str(Path(tagger_dir).resolve()), "tagger_version": tagger.version, "catalog": str(catalog),
                 "n_products": len(rows), "seconds": round(time.perf_counter() - t0, 1)}
        paths = write_tag_report(metrics, json_out, extra)
        echo("tags eval: wrote " + ", ".join(str(p) for p in paths))
    return metrics
