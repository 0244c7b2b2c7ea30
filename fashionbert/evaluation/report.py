"""Evaluation reports: flat JSON keys for machines, a Markdown table and a PNG of R@K curves for people.

The flat key names are the contract with dashboards and CI checks
(``random100.t2i.r1``, ``full.i2t.mrr``, ...): Rank/Recall@K are fractions in
[0, 1], ``random100.sum_r`` is on FashionBERT's 0-600 scale.

``write_report`` and ``markdown_table`` take either the flat dict from
``flatten_metrics`` or a dict holding the raw protocol results under
``"random100"`` / ``"full"`` (as returned by ``evaluate_random100`` /
``evaluate_full_catalog``). Only the raw results carry per-query ranks, so
only they give curves in the PNG; a flat dict still gets all three files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fashionbert.evaluation.protocols import DIRECTIONS, RANDOM100_KS

RAW_KEYS = ("random100", "full")
_DIR_LABEL = {"t2i": "text → image", "i2t": "image → text"}


def flatten_metrics(random100: Mapping[str, Any] | None, full: Mapping[str, Any] | None) -> dict[str, float]:
    """Headline numbers under stable dotted keys; a protocol that was not run contributes no keys.

    random-100: ``random100.{i2t,t2i}.r{1,5,10}``, ``random100.sum_r``, ``tia_accuracy``, and
    ``random100.{i2t,t2i}.top1_other_sub_category`` (the share of queries whose best-scored
    candidate is a top-up from another sub-category).
    full catalog: ``full.{t2i,i2t}.recall@K`` for each K evaluated (1, 10, 100
    by default) and ``full.{t2i,i2t}.mrr``.
    """
    flat: dict[str, float] = {}
    if random100 is not None:
        for d in ("i2t", "t2i"):
            for k in RANDOM100_KS:
                flat[f"random100.{d}.r{k}"] = float(random100[d][f"r{k}"])
            if "top1_other_sub_category" in random100[d]:
                flat[f"random100.{d}.top1_other_sub_category"] = float(random100[d]["top1_other_sub_category"])
        flat["random100.sum_r"] = float(random100["sum_r"])
        flat["tia_accuracy"] = float(random100["tia_accuracy"])
    if full is not None:
        ks = full.get("ks") or sorted(int(k.split("@")[1]) for k in full["t2i"] if k.startswith("recall@"))
        for d in DIRECTIONS:
            for k in ks:
                flat[f"full.{d}.recall@{k}"] = float(full[d][f"recall@{k}"])
            flat[f"full.{d}.mrr"] = float(full[d]["mrr"])
    return flat


def _split(metrics: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, Mapping[str, Any]]]:
    """(flat headline numbers, raw protocol results) from either accepted form of ``metrics``."""
    raw = {k: v for k, v in metrics.items() if k in RAW_KEYS and isinstance(v, Mapping)}
    flat = flatten_metrics(raw.get("random100"), raw.get("full"))
    for k, v in metrics.items():
        if k in raw:
            continue
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
            flat.setdefault(k, float(v))
        else:
            raise TypeError(f"metric {k!r} is neither a number nor a raw 'random100'/'full' result: {type(v).__name__}")
    return flat, raw


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "–"
    return "nan" if math.isnan(v) else f"{v:.{digits}f}"


def markdown_table(metrics: Mapping[str, Any]) -> str:
    """Human-readable Markdown: one table per protocol (rows = directions), then any other numbers."""
    flat, _ = _split(metrics)
    used: set[str] = set()
    lines: list[str] = []

    if any(k.startswith("random100.") for k in flat):
        title = "**random-100** (cross encoder; 1 positive + 100 same-sub-category negatives; chance R@K ≈ K/101)"
        lines += [title, ""]
        lines += ["| direction | R@1 | R@5 | R@10 | top-1 from another sub-category |", "|---|---:|---:|---:|---:|"]
        for d in DIRECTIONS:
            keys = [f"random100.{d}.r{k}" for k in RANDOM100_KS] + [f"random100.{d}.top1_other_sub_category"]
            used.update(keys)
            lines.append(f"| {_DIR_LABEL[d]} | " + " | ".join(_fmt(flat.get(k)) for k in keys) + " |")
        used.update({"random100.sum_r", "tia_accuracy"})
        lines += [
            "",
            f"SumR: {_fmt(flat.get('random100.sum_r'), 1)} / 600 (chance ≈ 31.7) · "
            f"TIA accuracy: {_fmt(flat.get('tia_accuracy'))}",
            "",
        ]

    full_keys = [k for k in flat if k.startswith("full.")]
    if full_keys:
        ks = sorted({int(k.split("@")[1]) for k in full_keys if "@" in k})
        lines += ["**full catalog** (dual encoder, exact inner-product search)", ""]
        lines += ["| direction | " + " | ".join(f"R@{k}" for k in ks) + " | MRR |"]
        lines += ["|---|" + "---:|" * (len(ks) + 1)]
        for d in DIRECTIONS:
            keys = [f"full.{d}.recall@{k}" for k in ks] + [f"full.{d}.mrr"]
            used.update(keys)
            lines.append(f"| {_DIR_LABEL[d]} | " + " | ".join(_fmt(flat.get(k)) for k in keys) + " |")
        lines.append("")

    rest = [k for k in flat if k not in used]
    if rest:
        lines += ["| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {_fmt(flat[k])} |" for k in rest]
        lines.append("")
    if not lines:
        lines = ["(no metrics)", ""]
    return "\n".join(lines)


def recall_curve(ranks: Any, max_k: int) -> np.ndarray:
    """Recall@K for K = 1..max_k from 1-based positive ranks (index 0 is K = 1)."""
    r = np.asarray(ranks, dtype=np.int64)
    if r.size == 0:
        return np.full(max_k, np.nan)
    hist = np.bincount(np.clip(r, 1, max_k + 1), minlength=max_k + 2)[1 : max_k + 1]
    return np.cumsum(hist) / r.size


def _plot(raw: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """R@K curves, both directions, one panel per protocol. Agg canvas: no display, no global pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(key, max_k) for key, max_k in (("random100", 101), ("full", 100)) if key in raw]
    fig = Figure(figsize=(5.5 * max(1, len(panels)), 4.2), dpi=100)
    FigureCanvasAgg(fig)
    if not panels:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no per-query ranks in these metrics", ha="center", va="center")
        ax.set_axis_off()
    for i, (key, max_k) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        ks = np.arange(1, max_k + 1)
        for d in DIRECTIONS:
            ranks = raw[key].get(d, {}).get("ranks")
            if ranks is not None and len(ranks):
                ax.plot(ks, recall_curve(ranks, max_k), label=f"{_DIR_LABEL[d]} (n={len(ranks)})")
        if key == "random100":
            ax.plot(ks, ks / 101, linestyle="--", color="grey", label="chance (K/101)")
            ax.set_title("random-100 (cross encoder)")
        else:
            ax.set_title(f"full catalog ({raw[key].get('n_items', '?')} items, dual encoder)")
        ax.set_xscale("log")
        ax.set_xlim(1, max_k)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("K")
        ax.set_ylabel("Recall@K")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def write_report(
    metrics: Mapping[str, Any], out_json: Path, extra: Mapping[str, Any] | None = None
) -> tuple[Path, Path, Path]:
    """Write ``out_json`` plus ``<stem>.md`` and ``<stem>.png`` beside it; returns (json, md, png).

    JSON layout: ``{"metrics": {flat keys -> float}, "extra": {...},
    "details": {"random100": raw result, "full": raw result}}`` - ``metrics``
    is exactly ``flatten_metrics`` output (plus any other numbers passed), so
    ``json.load(f)["metrics"]`` round-trips; ``details`` keeps counts,
    warnings and per-query ranks so the plot can be redrawn later.
    """
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    flat, raw = _split(metrics)
    md_path = out_json.with_suffix(".md")
    png_path = out_json.with_suffix(".png")
    payload = {"metrics": flat, "extra": dict(extra or {}), "details": {k: dict(v) for k, v in raw.items()}}
    out_json.write_text(json.dumps(payload, indent=2, default=_jsonable, allow_nan=True) + "\n", encoding="utf-8")
    header = f"# Evaluation: {out_json.stem}\n\n"
    if extra:
        header += "\n".join(f"- {k}: {v}" for k, v in extra.items()) + "\n\n"
    md_path.write_text(header + markdown_table(metrics) + f"\n![Recall@K curves]({png_path.name})\n", encoding="utf-8")
    _plot(raw, png_path)
    return out_json, md_path, png_path
