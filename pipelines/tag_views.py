"""What a multi-view tagger does with a product's photos, read against the synthetic ground truth.

The synthetic catalog records what each photo shows (``image_kinds``: front, garment, close-up,
stray; ``fashionbert.synthetic.drawing.VIEW_KINDS``). A stray photo, a picture of another
product, is the case the tagger's high-level attention over views exists for, so evaluation
reports two things where the column is there:

* the metrics on the products that have a stray photo among the views the tagger reads
  (``<method>.with_stray.<metric>``), beside the metrics on all products;
* the high-level attention's weight on those stray photos (``<method>.stray_view_weight``), with
  the weight the masked mean (the ablation without high-level attention) gives them,
  ``<method>.stray_view_weight_uniform``;
* the metrics on the same products with their stray photos hidden from the tagger
  (``<method>.stray_hidden.<metric>``): an oracle view filter. Its gap to ``with_stray`` is what
  strays cost that any weighting of the views could win back, so it bounds what the high-level
  attention can show on the headline metrics (a gap near zero: nothing to recover).

A real catalog has no such column, and these are then simply absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from fashionbert.synthetic.drawing import STRAY
from fashionbert.tagging import HeadInputs, StateCache, TagDataset, Tagger, score_metrics
from fashionbert.tagging.training import head_input_batches
from indexer.feature_store import FeatureStore

KINDS_COLUMN = "image_kinds"
VIEW_WEIGHT_COLUMNS = ("stray_view_weight", "stray_view_weight_uniform")


def read_view_kinds(catalog: Path, data: TagDataset, store: FeatureStore, max_views: int) -> list[list[str]] | None:
    """The kind of each view the tagger reads of every product of ``data`` (None without the column).

    The tagger reads a product's first ``max_views`` *extracted* views, so the kinds are taken at
    the extracted image indices (an image that failed to decode is skipped in both).
    """
    if KINDS_COLUMN not in pq.read_schema(catalog).names or data.product_ids is None:
        return None
    table = pq.read_table(catalog, columns=["product_id", KINDS_COLUMN])
    by_id = dict(zip(table.column("product_id").to_pylist(), table.column(KINDS_COLUMN).to_pylist()))
    kinds = []
    for pid in data.product_ids:
        listed = by_id.get(pid) or []
        kinds.append([listed[i] if i < len(listed) else "" for i in store.image_indices(pid)[:max_views]])
    return kinds


def stray_positions(rows: Sequence[int], kinds: list[list[str]] | None) -> list[int]:
    """Positions in ``rows`` of the products with a stray photo among the views read."""
    if kinds is None:
        return []
    return [i for i, r in enumerate(rows) if STRAY in kinds[r]]


def subset_metrics(scores: np.ndarray, tags: Sequence[str], truth: Sequence[Sequence[str]],
                   positions: Sequence[int]) -> dict[str, float]:
    """The tag metrics on the products at ``positions``, keyed ``with_stray.<metric>`` (empty when none)."""
    if not positions:
        return {}
    idx = list(positions)
    found = score_metrics(scores[idx], tags, [truth[i] for i in idx])
    return {f"with_stray.{k}": v for k, v in found.items()}


@torch.no_grad()
def stray_view_weight(tagger: Tagger, data: TagDataset, rows: Sequence[int], kinds: list[list[str]] | None,
                      cache: StateCache | None = None, batch_size: int = 64) -> dict[str, float]:
    """Mean share of the pooled vector that the stray photos get, beside the masked mean's share (1 / views)."""
    stray_rows = [rows[i] for i in stray_positions(rows, kinds)]
    if not stray_rows or kinds is None:
        return {}
    learnt, uniform = [], []
    for chunk, x in head_input_batches(tagger, data, stray_rows, cache, batch_size):
        weights = tagger.head.view_weights(x).float().cpu().numpy()
        for w, r in zip(weights, chunk):
            slot = kinds[r].index(STRAY)
            learnt.append(float(w[slot]))
            uniform.append(1.0 / len(kinds[r]))
    return dict(zip(VIEW_WEIGHT_COLUMNS, (float(np.mean(learnt)), float(np.mean(uniform)))))


def hide_views(x: HeadInputs, hidden: torch.Tensor) -> HeadInputs:
    """``x`` with the views marked in ``hidden`` ([B, V] bool) taken out of its view mask."""
    return replace(x, view_mask=x.view_mask & ~hidden.to(x.view_mask.device))


@torch.no_grad()
def stray_hidden_metrics(tagger: Tagger, data: TagDataset, rows: Sequence[int], kinds: list[list[str]] | None,
                         tags: Sequence[str], truth: Sequence[Sequence[str]], cache: StateCache | None = None,
                         batch_size: int = 64) -> dict[str, float]:
    """The tag metrics on the products with a stray photo, scored with their strays hidden (an oracle filter).

    Keyed ``stray_hidden.<metric>``, beside ``with_stray.<metric>`` on the same products scored as
    they are: the difference is what the strays cost that dropping them would win back. Hiding a view
    masks it out of the pooling over views (each view is its own trunk pass, so nothing of it is left).
    """
    positions = stray_positions(rows, kinds)
    if not positions or kinds is None:
        return {}
    stray_rows = [rows[i] for i in positions]
    out = []
    for chunk, x in head_input_batches(tagger, data, stray_rows, cache, batch_size):
        hidden = torch.zeros_like(x.view_mask, dtype=torch.bool)
        for b, r in enumerate(chunk):
            for slot, kind in enumerate(kinds[r]):
                hidden[b, slot] = kind == STRAY
        out.append(torch.sigmoid(tagger.head(hide_views(x, hidden))).float().cpu())
    found = score_metrics(torch.cat(out).numpy(), tags, [truth[i] for i in positions])
    return {f"stray_hidden.{k}": v for k, v in found.items()}
