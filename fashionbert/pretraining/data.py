"""Pretraining data: products with texts and patch features, hard-negative batches, masking.

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
* :class:`PretrainCollator` draws, for each row, a text and an image view,
  swaps in a same-group negative image for a fraction of rows (TIA label 0),
  and splits the rows at random into clean ones (scored by TIA) and
  corrupted ones: whole-word-masked text (MLM) and ~10 % zeroed patches
  (MPM), scored on matched rows. ``clean_fraction=0`` (the default) is
  FashionBERT's original single corrupted pass with TIA on every row; 0.5
  learned TIA more slowly in a 20-minute CPU budget (docs/results.md).

Everything random is drawn from a generator seeded by (seed, step), so a
resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from fashionbert.configuration import SEGMENT_Q, SEGMENT_T
from fashionbert.text import IGNORE_INDEX, WholeWordMasker


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

    @property
    def key(self) -> tuple[int, str]:
        """Identity across mixed catalogs (product ids are unique only within one)."""
        return (self.source, self.product_id)


QUERY_LOG_COLUMNS = ("query", "product_id")


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
    def from_catalog(cls, catalog, store, query_log: dict[str, dict[str, float]] | None = None) -> PretrainCorpus:
        """Build from an :class:`indexer.catalog.Catalog` and an :class:`indexer.feature_store.FeatureStore`.

        Alternative titles in columns named ``title_*`` (e.g. the synthetic catalog's
        ``title_en``/``title_zh``) are used as extra T texts; ``queries`` as Q texts,
        joined by the click log's queries (:func:`queries_from_log`) weighted by their clicks;
        a catalog query missing from the log counts as one click.
        """
        table = catalog.table
        columns = table.column_names
        title_columns = catalog.title_columns
        values = {c: table.column(c).to_pylist() for c in title_columns}
        queries = table.column("queries").to_pylist() if "queries" in columns else [None] * len(table)
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
            ))
        return cls(records, store)

    def __len__(self) -> int:
        return len(self.records)


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


class PretrainCollator:
    """Turns a list of record indices into the tensors of one pretraining step."""

    def __init__(
        self,
        corpus: PretrainCorpus,
        masker: WholeWordMasker,
        max_text_length: int = 48,
        num_patches: int = 64,
        mpm_probability: float = 0.1,
        tia_negative_fraction: float = 0.5,
        query_probability: float = 0.3,
        clean_fraction: float = 0.0,
        seed: int = 0,
    ):
        self.corpus = corpus
        self.masker = masker
        self.tokenizer = masker.tokenizer
        self.max_text_length = max_text_length
        self.num_patches = num_patches
        self.n_masked_patches = max(1, int(round(mpm_probability * num_patches)))
        self.tia_negative_fraction = tia_negative_fraction
        self.query_probability = query_probability
        if not 0.0 <= clean_fraction <= 1.0:
            raise ValueError("clean_fraction must be in [0, 1]")
        self.clean_fraction = clean_fraction
        self.seed = seed
        self._encoded: dict[str, tuple[list[int], list[int | None]]] = {}

    def _encode(self, text: str) -> tuple[list[int], list[int | None]]:
        hit = self._encoded.get(text)
        if hit is None:
            hit = self._encoded[text] = self.masker.encode(text, self.max_text_length)
        return hit

    def _pad(self, rows: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)

    def __call__(self, indices: Sequence[int], step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step, 11])
        records = [self.corpus.records[i] for i in indices]
        n = len(records)
        texts, segments = [], []
        for rec in records:
            use_query = rec.queries and rng.random() < self.query_probability
            if use_query and rec.query_weights:
                w = np.asarray(rec.query_weights, dtype=np.float64)
                texts.append(rec.queries[int(rng.choice(len(w), p=w / w.sum()))])
            else:
                pool = rec.queries if use_query else rec.titles
                texts.append(pool[int(rng.integers(len(pool)))])
            segments.append(SEGMENT_Q if use_query else SEGMENT_T)
        views = [int(rec.images[int(rng.integers(len(rec.images)))]) for rec in records]
        feats = np.stack([self.corpus.patch_features(rec, v) for rec, v in zip(records, views)]).astype(np.float32)

        # TIA: a negative takes the image of another row of the same sub-category when the batch has one.
        image_rows = np.arange(n)
        tia = np.ones(n, dtype=np.int64)
        for i in np.flatnonzero(rng.random(n) < self.tia_negative_fraction):
            same = [j for j in range(n) if j != i and records[j].sub_category == records[i].sub_category
                    and records[j].key != records[i].key]
            others = same or [j for j in range(n) if records[j].key != records[i].key]
            if others:
                image_rows[i] = others[int(rng.integers(len(others)))]
                tia[i] = 0

        # Rows are split at random (independently of the TIA label) into clean rows, which TIA scores,
        # and corrupted rows (masked words, zeroed patches), which MLM/MPM score when matched. TIA on
        # corrupted rows would learn from texts whose telling word ("red") is [MASK]ed away, and
        # corrupting only matched rows would leak the label (no [MASK] => negative).
        clean = rng.random(n) < self.clean_fraction
        encoded = [self._encode(t) for t in texts]
        ids = [list(e[0]) for e in encoded]
        masked, labels = [], []
        for (tok_ids, word_ids), matched, is_clean in zip(encoded, tia, clean):
            if is_clean:
                masked.append(list(tok_ids))
                labels.append([IGNORE_INDEX] * len(tok_ids))
                continue
            m_ids, m_labels = self.masker.mask_encoded(tok_ids, word_ids, rng)
            masked.append(m_ids)
            labels.append(m_labels if matched else [IGNORE_INDEX] * len(m_labels))
        pad = self.tokenizer.pad_token_id
        attention = [[1] * len(r) for r in ids]
        joint_feats = feats[image_rows].copy()
        zeroed = np.zeros((n, self.num_patches), dtype=bool)
        for i in np.flatnonzero(~clean):
            zeroed[i, rng.choice(self.num_patches, self.n_masked_patches, replace=False)] = True
        joint_feats[zeroed] = 0.0
        patch_mask = zeroed & (tia == 1)[:, None]  # MPM loss only where text and image match
        seg = torch.tensor(segments, dtype=torch.long)
        text_ids = self._pad(ids, pad)
        sub_ids: dict[str, int] = {}
        return {
            "input_ids": self._pad(masked, pad),
            "text_input_ids": text_ids,
            "attention_mask": self._pad(attention, 0),
            "token_type_ids": seg[:, None].expand_as(text_ids).clone(),
            "mlm_labels": self._pad(labels, IGNORE_INDEX),
            "patch_features": torch.from_numpy(joint_feats),
            "image_features": torch.from_numpy(feats),
            "mpm_mask": torch.from_numpy(patch_mask),
            "zeroed_patches": torch.from_numpy(zeroed),
            "mpm_targets": torch.from_numpy(feats[image_rows]),
            "tia_labels": torch.from_numpy(tia),
            "tia_rows": torch.from_numpy(clean if self.clean_fraction > 0 else np.ones(n, dtype=bool)),
            "itc_same_text": torch.tensor([[a == b for b in texts] for a in texts]),
            "itc_same_product": torch.tensor([[a.key == b.key for b in records] for a in records]),
            "sub_category_ids": torch.tensor([sub_ids.setdefault(r.sub_category, len(sub_ids)) for r in records]),
            # Drawn last, so that adding it changed none of the draws above: seeds the task's negative mining.
            "negative_seed": torch.tensor(int(rng.integers(2**31 - 1))),
        }
