"""Pretraining data: products with texts and patch features, hard-negative batches, masking.

* :class:`PretrainCorpus` joins a validated catalog with its feature shards:
  one record per product with every text (titles in segment T, known user
  queries in segment Q) and every extracted image view.
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
from dataclasses import dataclass

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


class FeatureSource:
    """What the collator needs from a feature store: ``get(product_id, image_index) -> [64, D]``."""

    def get(self, product_id: str, image_index: int = 0) -> np.ndarray:  # pragma: no cover - protocol
        raise NotImplementedError


class PretrainCorpus:
    """Products usable for pretraining: at least one text and one extracted image."""

    def __init__(self, records: Sequence[PretrainRecord], features: FeatureSource):
        if not records:
            raise ValueError("no product has both a text and extracted image features")
        self.records = list(records)
        self.features = features

    @classmethod
    def from_catalog(cls, catalog, store) -> PretrainCorpus:
        """Build from an :class:`indexer.catalog.Catalog` and an :class:`indexer.feature_store.FeatureStore`.

        Alternative titles in columns named ``title_*`` (e.g. the synthetic catalog's
        ``title_en``/``title_zh``) are used as extra T texts; ``queries`` as Q texts.
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
            records.append(PretrainRecord(
                product_id=pid,
                sub_category=table.column("sub_category")[row].as_py(),
                category=table.column("category")[row].as_py(),
                titles=titles,
                queries=tuple(q.strip() for q in (queries[row] or []) if q and q.strip()),
                images=images,
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
            pool = rec.queries if use_query else rec.titles
            texts.append(pool[int(rng.integers(len(pool)))])
            segments.append(SEGMENT_Q if use_query else SEGMENT_T)
        views = [int(rec.images[int(rng.integers(len(rec.images)))]) for rec in records]
        feats = np.stack([self.corpus.features.get(rec.product_id, v) for rec, v in zip(records, views)]).astype(np.float32)

        # TIA: a negative takes the image of another row of the same sub-category when the batch has one.
        image_rows = np.arange(n)
        tia = np.ones(n, dtype=np.int64)
        for i in np.flatnonzero(rng.random(n) < self.tia_negative_fraction):
            same = [j for j in range(n) if j != i and records[j].sub_category == records[i].sub_category
                    and records[j].product_id != records[i].product_id]
            others = same or [j for j in range(n) if records[j].product_id != records[i].product_id]
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
            "itc_same_product": torch.tensor([[a.product_id == b.product_id for b in records] for a in records]),
        }
