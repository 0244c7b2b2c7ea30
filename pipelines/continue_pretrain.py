"""Continue-pretraining on a new category: new quality without forgetting the old (ARCHITECTURE.md §6).

Stages, each resumable (a rerun with the same settings picks up where a
kill left it):

1. **Held-out split of the new category.** Given ``new_eval_catalog`` it is
   used as is; otherwise ``heldout_fraction`` of the new catalog's products
   (a seeded choice) is set aside and never trained on. Both halves are
   written under ``OUT/data/`` with absolute image paths.
2. **Quality before**: random-100 SumR and full-catalog Recall@10 of the
   start checkpoint on the new held-out split and, when given, the old
   categories' held-out catalog. Cached in ``OUT/eval_before.json``.
3. **Start checkpoint** (``OUT/start``): the given checkpoint, its WordPiece
   vocabulary grown by the new category's frequent unseen words
   (:mod:`fashionbert.text.vocab_extension`, new rows = sub-token means).
4. **Training**: :func:`pipelines.pretrain.pretrain` from ``OUT/start`` on
   the new products (T-I pairs, plus Q-T-I through the click log: the
   query in segment Q takes part in TIA and ITC against the clicked
   product's image), every batch mixing ``replay_fraction`` of old
   products. The old data defaults to what the checkpoint records it was
   trained on.
5. **Quality after** and the report (``report`` JSON + Markdown) with
   ``new.before.sum_r``, ``new.after.sum_r``, ``old.before.sum_r``,
   ``old.after.sum_r`` and the Recall@10 figures beside them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fashionbert.encoder import CheckpointError, FashionBert
from fashionbert.text import grow_vocabulary, is_wordpiece
from indexer.catalog import read_catalog
from indexer.embeddings import checkpoint_sha256
from pipelines.evaluate import EvalConfig, evaluate
from pipelines.pretrain import (
    TRAINING_RECORD,
    PretrainConfig,
    PretrainResult,
    pretrain,
    recorded_training_data,
    training_record,
)

Echo = Callable[[str], None]
START_DIR = "start"
BEFORE_FILE = "eval_before.json"
REPORT_KEYS = ("sum_r", "t2i_r10", "i2t_r10")


@dataclass
class ContinueConfig:
    from_checkpoint: Path
    catalog: Path  # the new category's products
    features: Path  # their patch features
    out: Path
    query_log: Path | None = None
    replay_catalogs: tuple[Path, ...] = ()  # default: the training data the checkpoint records
    replay_features: tuple[Path, ...] = ()
    replay_fraction: float = 0.2
    extend_vocabulary: bool = True
    min_word_count: int = 3
    max_new_tokens: int = 1000
    new_eval_catalog: Path | None = None  # default: hold out heldout_fraction of `catalog`
    new_eval_features: Path | None = None  # default: `features`
    heldout_fraction: float = 0.2
    old_eval_catalog: Path | None = None  # the old categories' held-out split (no "old" figures without it)
    old_eval_features: Path | None = None
    eval_queries: int = 300
    report: Path | None = None  # default: OUT/continue_report.json
    steps: int = 600
    max_minutes: float | None = 10.0
    batch_size: int = 64
    lr: float | None = None  # None: the start checkpoint's own pretraining learning rate
    warmup_steps: int = 30
    loss_weighting: str = "adaptive-grad"
    weighting_every: int = 10  # adaptive-grad: re-solve the weights every N steps
    tasks: tuple[str, ...] = ("mlm", "mpm", "tia", "itc")
    query_probability: float = 0.3  # as in pretraining; 0.5 (more Q rows) gained less on the new category (docs/results.md)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # PretrainConfig.precision: bf16 matmuls where the device has them natively
    save_every: int = 100
    training_overrides: dict = field(default_factory=dict)  # any other PretrainConfig field (tests)


@dataclass
class ContinueResult:
    checkpoint: Path
    report: dict[str, float | int | str]
    report_path: Path
    training: PretrainResult
    added_tokens: list[str]


def _file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def split_new_catalog(cfg: ContinueConfig, echo: Echo) -> tuple[Path, Path, Path]:
    """(train catalog, held-out catalog, held-out features) of the new category."""
    if cfg.new_eval_catalog is not None:
        return Path(cfg.catalog), Path(cfg.new_eval_catalog), Path(cfg.new_eval_features or cfg.features)
    if not 0.0 < cfg.heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {cfg.heldout_fraction}")
    data = Path(cfg.out) / "data"
    train_path, heldout_path = data / "new_train.parquet", data / "new_heldout.parquet"
    marker = data / "split.json"
    inputs = {"catalog": _file_sha(cfg.catalog), "fraction": cfg.heldout_fraction, "seed": cfg.seed}
    if marker.is_file() and json.loads(marker.read_text()) == inputs and train_path.is_file() and heldout_path.is_file():
        return train_path, heldout_path, Path(cfg.features)
    catalog = read_catalog(cfg.catalog, check_images="none")  # validated: bad rows reported, not trained on
    table = _absolute_images(catalog.table, Path(cfg.catalog).resolve().parent)
    n = len(table)
    n_heldout = max(1, int(round(n * cfg.heldout_fraction)))
    if n - n_heldout < 2:
        raise ValueError(f"{cfg.catalog} has {n} usable products: too few to hold {n_heldout} out and train on the rest")
    heldout = np.zeros(n, dtype=bool)
    heldout[np.random.default_rng([cfg.seed, 31]).choice(n, n_heldout, replace=False)] = True
    data.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.filter(pa.array(~heldout)), train_path)
    pq.write_table(table.filter(pa.array(heldout)), heldout_path)
    marker.write_text(json.dumps(inputs))
    echo(f"continue-pretrain: new category split {n - n_heldout} train / {n_heldout} held-out products -> {data}")
    return train_path, heldout_path, Path(cfg.features)


def _absolute_images(table: pa.Table, root: Path) -> pa.Table:
    """Image paths relative to the catalog file, made absolute so the split files can live elsewhere."""
    if "images" not in table.column_names or not pa.types.is_string(table.schema.field("images").type.value_type):
        return table  # embedded image bytes (or no images): nothing points at the old location
    rows = [[p if not p or Path(p).is_absolute() else str(root / p) for p in (row or [])]
            for row in table.column("images").to_pylist()]
    index = table.column_names.index("images")
    return table.set_column(index, table.schema.field("images"), pa.array(rows, table.schema.field("images").type))


def _evaluate(checkpoint: Path, catalog: Path, features: Path, cfg: ContinueConfig, echo: Echo) -> dict[str, float]:
    metrics = evaluate(EvalConfig(checkpoint, catalog, features, n_queries=cfg.eval_queries, seed=cfg.seed,
                                  device="cpu"), echo=echo)
    return {"sum_r": metrics["random100.sum_r"], "t2i_r10": metrics["full.t2i.recall@10"],
            "i2t_r10": metrics["full.i2t.recall@10"], "tia_accuracy": metrics.get("tia_accuracy", float("nan"))}


def _eval_sets(cfg: ContinueConfig, new_heldout: Path, new_features: Path) -> dict[str, tuple[Path, Path]]:
    sets = {"new": (new_heldout, new_features)}
    if cfg.old_eval_catalog is not None:
        if cfg.old_eval_features is None:
            raise ValueError("old_eval_catalog needs old_eval_features (its patch features)")
        sets["old"] = (Path(cfg.old_eval_catalog), Path(cfg.old_eval_features))
    return sets


def evaluate_before(cfg: ContinueConfig, sets: dict[str, tuple[Path, Path]], echo: Echo) -> dict[str, dict[str, float]]:
    """The start checkpoint's quality on each evaluation set (cached: a resumed run does not redo it)."""
    path = Path(cfg.out) / BEFORE_FILE
    inputs = {"checkpoint": checkpoint_sha256(cfg.from_checkpoint), "queries": cfg.eval_queries, "seed": cfg.seed,
              **{name: [_file_sha(c), str(f)] for name, (c, f) in sets.items()}}
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("inputs") == inputs:
            echo(f"continue-pretrain: reusing the 'before' evaluation in {path}")
            return cached["metrics"]
    metrics = {}
    for name, (catalog, features) in sets.items():
        echo(f"continue-pretrain: evaluating the start checkpoint on the {name} categories ({catalog})")
        metrics[name] = _evaluate(Path(cfg.from_checkpoint), catalog, features, cfg, echo)
    path.write_text(json.dumps({"inputs": inputs, "metrics": metrics}, indent=2))
    return metrics


def prepare_start_checkpoint(cfg: ContinueConfig, train_catalog: Path, echo: Echo) -> tuple[Path, list[str]]:
    """``OUT/start``: the checkpoint with its vocabulary grown by the new category's words."""
    start = Path(cfg.out) / START_DIR
    marker = start / "extension.json"
    inputs = {"checkpoint": checkpoint_sha256(cfg.from_checkpoint), "catalog": _file_sha(train_catalog),
              "query_log": _file_sha(cfg.query_log) if cfg.query_log else None, "extend": cfg.extend_vocabulary,
              "min_count": cfg.min_word_count, "max_new": cfg.max_new_tokens}
    if marker.is_file() and (start / "model.safetensors").is_file():
        saved = json.loads(marker.read_text())
        if saved.get("inputs") == inputs:
            return start, saved["added_tokens"]
    fb = FashionBert.from_pretrained(cfg.from_checkpoint)
    added: list[str] = []
    if cfg.extend_vocabulary and is_wordpiece(fb.tokenizer):
        texts = read_catalog(train_catalog, check_images="none").texts()
        if cfg.query_log is not None:
            texts += [q for q in pq.read_table(cfg.query_log, columns=["query"]).column("query").to_pylist() if q]
        grown, added = grow_vocabulary(fb.model, fb.tokenizer, texts, cfg.min_word_count, cfg.max_new_tokens)
        fb = FashionBert(fb.model, grown)
        echo(f"continue-pretrain: vocabulary {len(grown) - len(added)} -> {len(grown)} tokens "
             f"(+{len(added)}: {', '.join(added[:12])}{' ...' if len(added) > 12 else ''})")
    elif cfg.extend_vocabulary:
        echo(f"continue-pretrain: the tokenizer is not WordPiece ({type(fb.tokenizer).__name__}); vocabulary kept as is")
    shutil.rmtree(start, ignore_errors=True)
    fb.save_pretrained(start)
    recorded = Path(cfg.from_checkpoint) / TRAINING_RECORD
    if recorded.is_file():  # so the continued checkpoint inherits the old training data it records
        shutil.copy(recorded, start / TRAINING_RECORD)
    marker.write_text(json.dumps({"inputs": inputs, "added_tokens": added}, indent=2, ensure_ascii=False))
    return start, added


def replay_data(cfg: ContinueConfig) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    if cfg.replay_fraction <= 0:
        return (), ()
    if cfg.replay_catalogs:
        if len(cfg.replay_catalogs) != len(cfg.replay_features):
            raise ValueError("give one replay features directory per replay catalog")
        return tuple(map(Path, cfg.replay_catalogs)), tuple(map(Path, cfg.replay_features))
    recorded = recorded_training_data(cfg.from_checkpoint)
    missing = [d["catalog"] for d in recorded if not (Path(d["catalog"]).is_file() and Path(d["features"]).is_dir())]
    if not recorded or missing:
        why = "records no training data" if not recorded else f"records training data that is not here ({', '.join(missing)})"
        raise ValueError(f"{cfg.from_checkpoint} {why}: pass the old catalog and features to replay "
                         f"(--replay-catalog/--replay-features), or --replay-fraction 0")
    return tuple(Path(d["catalog"]) for d in recorded), tuple(Path(d["features"]) for d in recorded)


def _recorded_lr(checkpoint: Path) -> float | None:
    training = training_record(checkpoint).get("training", {})
    if training.get("lr") is not None:
        return float(training["lr"])
    from fashionbert.configuration import DEFAULT_LEARNING_RATES

    return DEFAULT_LEARNING_RATES.get(training.get("model_config", ""))


def build_report(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, float]:
    report: dict[str, float] = {}
    for name in before:
        for when, metrics in (("before", before[name]), ("after", after[name])):
            for key in REPORT_KEYS:
                report[f"{name}.{when}.{key}"] = round(float(metrics[key]), 4)
        report[f"{name}.sum_r_gain"] = round(after[name]["sum_r"] - before[name]["sum_r"], 2)
        if before[name]["sum_r"] > 0:
            report[f"{name}.sum_r_change_pct"] = round(100 * (after[name]["sum_r"] / before[name]["sum_r"] - 1), 2)
    return report


def report_markdown(report: dict, extra: dict) -> str:
    lines = ["| split | SumR before | SumR after | change | t2i R@10 before | after | i2t R@10 before | after |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ("new", "old"):
        if f"{name}.before.sum_r" not in report:
            continue
        g = lambda k: report[f"{name}.{k}"]  # noqa: E731
        lines.append(f"| {name} | {g('before.sum_r'):.1f} | {g('after.sum_r'):.1f} | {g('sum_r_gain'):+.1f} "
                     f"({report.get(f'{name}.sum_r_change_pct', float('nan')):+.1f} %) | {g('before.t2i_r10'):.3f} | "
                     f"{g('after.t2i_r10'):.3f} | {g('before.i2t_r10'):.3f} | {g('after.i2t_r10'):.3f} |")
    lines += ["", *(f"- {k}: {v}" for k, v in extra.items())]
    return "\n".join(lines) + "\n"


def continue_pretrain(cfg: ContinueConfig, echo: Echo = print, progress: bool = True) -> ContinueResult:
    started = time.perf_counter()
    if not (Path(cfg.from_checkpoint) / "config.json").is_file():
        raise CheckpointError(f"{cfg.from_checkpoint} is not a FashionBERT checkpoint (needs config.json and model.safetensors)")
    for label, path in (("catalog", cfg.catalog), ("query log", cfg.query_log)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{label} not found: {path}")
    if not Path(cfg.features).is_dir():
        raise FileNotFoundError(f"features directory not found: {cfg.features} (run `fashionbert features` first)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    replay_catalogs, replay_features = replay_data(cfg)
    train_catalog, heldout, heldout_features = split_new_catalog(cfg, echo)
    sets = _eval_sets(cfg, heldout, heldout_features)
    before = evaluate_before(cfg, sets, echo)
    start, added = prepare_start_checkpoint(cfg, train_catalog, echo)
    lr = cfg.lr if cfg.lr is not None else _recorded_lr(cfg.from_checkpoint)
    training_cfg = replace(PretrainConfig(
        catalog=train_catalog, features=Path(cfg.features), out=out, init_from=start, query_log=cfg.query_log,
        replay_catalogs=replay_catalogs, replay_features=replay_features, replay_fraction=cfg.replay_fraction,
        tasks=tuple(cfg.tasks), loss_weighting=cfg.loss_weighting, weighting_every=cfg.weighting_every, steps=cfg.steps, max_minutes=cfg.max_minutes,
        batch_size=cfg.batch_size, lr=lr, warmup_steps=cfg.warmup_steps, query_probability=cfg.query_probability,
        seed=cfg.seed, device=cfg.device, precision=cfg.precision, save_every=cfg.save_every,
    ), **cfg.training_overrides)
    training = pretrain(training_cfg, echo=echo, progress=progress)
    if training.stopped_by == "stop_at_step":  # tests: killed mid-run; the report waits for the resumed run
        return ContinueResult(out, {}, out, training, added)
    after = {}
    for name, (catalog, features) in sets.items():
        echo(f"continue-pretrain: evaluating the continued checkpoint on the {name} categories")
        after[name] = _evaluate(out, catalog, features, cfg, echo)
    report = build_report(before, after)
    extra = {"from_checkpoint": str(cfg.from_checkpoint), "steps_done": training.steps_done,
             "stopped_by": training.stopped_by, "training_minutes": round(training.seconds / 60, 2),
             "total_minutes": round((time.perf_counter() - started) / 60, 2), "added_tokens": len(added),
             "replay_fraction": cfg.replay_fraction, "replay_catalogs": [str(p) for p in replay_catalogs],
             "query_log": str(cfg.query_log) if cfg.query_log else None, "new_heldout": str(heldout),
             "old_heldout": str(cfg.old_eval_catalog) if cfg.old_eval_catalog else None}
    report_path = Path(cfg.report) if cfg.report is not None else out / "continue_report.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps({**report, "details": {"before": before, "after": after, **extra},
                                       "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}},
                                      indent=2, ensure_ascii=False, default=str))
    report_path.with_suffix(".md").write_text(report_markdown(report, extra))
    echo(f"continue-pretrain: wrote {report_path} and {report_path.with_suffix('.md')}")
    return ContinueResult(out, report, report_path, training, added)
