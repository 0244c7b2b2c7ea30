"""Pretraining data: products with texts and patch features, and hard-negative batches.

* :class:`PretrainCorpus` joins a validated catalog with its feature shards:
  one record per product with every text (titles in segment T, known user
  queries in segment Q) and every extracted image view.
* Continue-pretraining adds two things: a click log's queries become
  click-weighted Q texts of the products they led to (:func:`queries_from_log`),
  and a replay sample of the old training data is mixed into every batch
  (:meth:`PretrainCorpus.concat` + :class:`MixedBatchSampler`). Records keep
  the index of the corpus they came from, so two catalogs may reuse ids.
* :class:`SubCategoryBatchSampler` builds each batch from groups of products
  of the same sub-category, so in-batch ITC negatives include hard ones and
  TIA negatives ("an image of another product of the same sub-category",
  ARCHITECTURE.md §2) are always at hand inside the batch.
* :mod:`fashionbert.pretraining.collator` turns a batch of records into tensors.

Everything random is drawn from a generator seeded by (seed, step), so a
resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class PretrainRecord:
    product_id: str
    sub_category: str
    category: str
    titles: tuple[str, ...]
    queries: tuple[str, ...]
    images: tuple[int, ...]  # image indices present in the feature store
    query_weights: tuple[float, ...] = ()  # click counts of ``queries`` (empty: uniform)
    source: int = 0  # which feature store (continue-pretraining mixes two catalogs)
    # The catalog's ``attributes`` map as sorted (key, value) pairs; empty when the catalog has none.
    # Two products with the same non-empty attributes are twins: neither is the other's negative.
    attributes: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[int, str]:
        """Identity across mixed catalogs (product ids are unique only within one)."""
        return (self.source, self.product_id)


QUERY_LOG_COLUMNS = ("query", "product_id")
# Attribute keys no photo shows: two listings that differ only in these still look the same, so they stay
# attribute twins (not each other's negatives). A collection season is named in the title, never drawn.
NON_VISUAL_ATTRIBUTES = ("season",)


def queries_from_log(table, known_ids: set[str] | None = None) -> dict[str, dict[str, float]]:
    """A click log (``query``, ``product_id``, ``clicks`` or ``label``) -> {product_id: {query: clicks}}.

    Rows with a blank query, an unknown product (when ``known_ids`` is given)
    or no positive click/label are dropped; repeated (query, product) rows
    add up. Mis-clicks stay in, but with their (usually small) click counts as
    sampling weights they are drawn rarely - a log is never cleaner than that.
    """
    import pyarrow as pa

    missing = [c for c in QUERY_LOG_COLUMNS if c not in table.column_names]
    weight_column = "clicks" if "clicks" in table.column_names else "label" if "label" in table.column_names else None
    if missing or weight_column is None:
        raise ValueError(f"query log needs columns query, product_id and clicks (or label); "
                         f"it has {table.column_names}")
    for column in QUERY_LOG_COLUMNS:
        if not (pa.types.is_string(table.schema.field(column).type) or pa.types.is_large_string(table.schema.field(column).type)):
            raise ValueError(f"query log column {column!r} must be strings, not {table.schema.field(column).type}")
    if not (pa.types.is_integer(table.schema.field(weight_column).type) or pa.types.is_floating(table.schema.field(weight_column).type)):
        raise ValueError(f"query log column {weight_column!r} must be numeric, not {table.schema.field(weight_column).type}")
    out: dict[str, dict[str, float]] = {}
    for query, pid, weight in zip(*(table.column(c).to_pylist() for c in (*QUERY_LOG_COLUMNS, weight_column))):
        query = (query or "").strip()
        if not query or not pid or weight is None or weight <= 0 or (known_ids is not None and pid not in known_ids):
            continue
        per_product = out.setdefault(pid, {})
        per_product[query] = per_product.get(query, 0.0) + float(weight)
    return out


class FeatureSource:
    """What the collator needs from a feature store: ``get(product_id, image_index) -> [64, D]``."""

    def get(self, product_id: str, image_index: int = 0) -> np.ndarray:  # pragma: no cover - protocol
        raise NotImplementedError


class PretrainCorpus:
    """Products usable for pretraining: at least one text and one extracted image."""

    def __init__(self, records: Sequence[PretrainRecord], features: FeatureSource | Sequence[FeatureSource]):
        if not records:
            raise ValueError("no product has both a text and extracted image features")
        self.records = list(records)
        self.sources = list(features) if isinstance(features, (list, tuple)) else [features]

    @property
    def features(self) -> FeatureSource:
        """The first (for a single-catalog corpus: the only) feature store."""
        return self.sources[0]

    def patch_features(self, record: PretrainRecord, image_index: int) -> np.ndarray:
        return self.sources[record.source].get(record.product_id, image_index)

    @classmethod
    def concat(cls, first: PretrainCorpus, second: PretrainCorpus) -> PretrainCorpus:
        """``first``'s records, then ``second``'s (re-pointed at its own feature stores)."""
        shift = len(first.sources)
        moved = [replace(r, source=r.source + shift) for r in second.records]
        return cls(first.records + moved, first.sources + second.sources)

    @classmethod
    def from_catalog(cls, catalog, store, query_log: dict[str, dict[str, float]] | None = None,
                     non_visual_attributes: Sequence[str] = NON_VISUAL_ATTRIBUTES) -> PretrainCorpus:
        """Build from an :class:`indexer.catalog.Catalog` and an :class:`indexer.feature_store.FeatureStore`.

        Alternative titles in columns named ``title_*`` (e.g. the synthetic catalog's
        ``title_en``/``title_zh``) are used as extra T texts; ``queries`` as Q texts,
        joined by the click log's queries (:func:`queries_from_log`) weighted by their clicks;
        a catalog query missing from the log counts as one click. Records keep the
        ``attributes`` map less ``non_visual_attributes`` (what decides attribute twins).
        """
        table = catalog.table
        columns = table.column_names
        title_columns = catalog.title_columns
        values = {c: table.column(c).to_pylist() for c in title_columns}
        queries = table.column("queries").to_pylist() if "queries" in columns else [None] * len(table)
        attributes = table.column("attributes").to_pylist() if "attributes" in columns else [None] * len(table)
        records = []
        for row, pid in enumerate(table.column("product_id").to_pylist()):
            images = tuple(store.image_indices(pid))
            titles = tuple(dict.fromkeys(str(values[c][row]).strip() for c in title_columns if values[c][row]))
            if not images or not titles:
                continue
            weights = {q.strip(): 1.0 for q in (queries[row] or []) if q and q.strip()}
            if query_log:
                weights.update(query_log.get(pid, {}))  # the log's clicks replace the catalog's "one"
            records.append(PretrainRecord(
                product_id=pid,
                sub_category=table.column("sub_category")[row].as_py(),
                category=table.column("category")[row].as_py(),
                titles=titles,
                queries=tuple(weights),
                images=images,
                query_weights=tuple(weights.values()) if query_log else (),
                attributes=_attribute_pairs(attributes[row], non_visual_attributes),
            ))
        return cls(records, store)

    def __len__(self) -> int:
        return len(self.records)


def _attribute_pairs(value, skip: Sequence[str] = ()) -> tuple[tuple[str, str], ...]:
    """A catalog's ``attributes`` cell (Arrow map -> list of pairs, or a dict) as sorted string pairs."""
    if not value:
        return ()
    items = value.items() if isinstance(value, dict) else value
    return tuple(sorted((str(k), str(v)) for k, v in items if k is not None and v is not None and k not in skip))


class SubCategoryBatchSampler:
    """Deterministic epochs of batches made of same-sub-category groups.

    ``batch(step)`` is a pure function of (seed, step), which is what makes a
    killed run resumable without replaying the data loader.
    """

    def __init__(self, sub_categories: Sequence[str], batch_size: int, group_size: int = 4, seed: int = 0):
        if batch_size < 2:
            raise ValueError("batch_size must be >= 2 (contrastive and TIA negatives come from the batch)")
        self.batch_size = batch_size
        self.group_size = max(1, min(group_size, batch_size))
        self.seed = seed
        self._by_sub: dict[str, np.ndarray] = {}
        for i, sub in enumerate(sub_categories):
            self._by_sub.setdefault(sub, []).append(i)  # type: ignore[arg-type]
        self._by_sub = {k: np.asarray(v) for k, v in sorted(self._by_sub.items())}
        self.n = len(sub_categories)
        self._epoch_cache: tuple[int, list[list[int]]] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return max(1, self.n // self.batch_size)

    def _epoch(self, epoch: int) -> list[list[int]]:
        if self._epoch_cache and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        rng = np.random.default_rng([self.seed, epoch, 7])
        groups: list[list[int]] = []
        for members in self._by_sub.values():
            perm = rng.permutation(members)
            groups.extend(perm[i : i + self.group_size].tolist() for i in range(0, len(perm), self.group_size))
        order = rng.permutation(len(groups))
        flat = [i for g in order for i in groups[g]]
        batches = [flat[i : i + self.batch_size] for i in range(0, len(flat) - self.batch_size + 1, self.batch_size)]
        if not batches:  # fewer products than one batch: one (smaller) batch per epoch
            batches = [flat]
        self._epoch_cache = (epoch, batches)
        return batches

    def batch(self, step: int) -> list[int]:
        epoch, index = divmod(step, self.batches_per_epoch)
        batches = self._epoch(epoch)
        return batches[index % len(batches)]

    def __iter__(self) -> Iterator[list[int]]:
        step = 0
        while True:
            yield self.batch(step)
            step += 1


class MixedBatchSampler:
    """Batches of ``batch_size`` rows, ``replay_fraction`` of them drawn from the replay part.

    The corpus is ``new`` records (indices ``[0, n_new)``) followed by replay
    records; each part has its own :class:`SubCategoryBatchSampler`, so hard
    negatives stay within a part, and the mix is the same in every batch
    (rather than whole replay batches now and then, which would let the model
    drift between them). Like its parts, ``batch(step)`` is pure.
    """

    def __init__(self, new_sub_categories: Sequence[str], replay_sub_categories: Sequence[str], batch_size: int,
                 replay_fraction: float, group_size: int = 4, seed: int = 0):
        if not 0.0 <= replay_fraction < 1.0:
            raise ValueError(f"replay_fraction must be in [0, 1), got {replay_fraction}")
        n_replay = int(round(batch_size * replay_fraction)) if replay_sub_categories else 0
        if 0 < n_replay < 2:
            n_replay = 2  # a replay part needs two rows for its own negatives
        self.offset = len(new_sub_categories)
        self.new = SubCategoryBatchSampler(new_sub_categories, batch_size - n_replay, group_size, seed)
        self.replay = SubCategoryBatchSampler(replay_sub_categories, n_replay, group_size, seed + 1) if n_replay else None

    def batch(self, step: int) -> list[int]:
        rows = list(self.new.batch(step))
        if self.replay is not None:
            rows += [self.offset + i for i in self.replay.batch(step)]
        return rows
