"""One pretraining step's tensors from a batch of corpus records.

Every row of the batch draws a text (a title in segment T, or a known query in
segment Q) and an image view (the main one by preference); those feed ITC's single-side passes. The joint
pass (MLM, MPM, TIA) is laid out in one of three ways:

* ``pairs`` (``tia_grid=0``, FashionBERT's): one joint row per record; a
  fraction of rows swap in another same-sub-category record's image (TIA label
  0). Rows are split at random into clean ones (scored by TIA) and corrupted
  ones: whole-word-masked text (MLM) and ~10 % zeroed patches (MPM), scored on
  matched rows. ``clean_fraction=0`` (the default) is the original single
  corrupted pass with TIA on every row. With ``clean_fraction`` > 0, TIA scores
  the clean rows only (``tia_clean_only``, the default) or every row
  (``tia_clean_only=False``): then a share of TIA's rows read the whole title,
  as the evaluation and the search do, while MLM and MPM keep the others.
* ``grid`` (``tia_grid=G``): groups of G records of one sub-category, every
  text of a group against every image of it - G x G joint rows, the diagonal
  matched. TIA then gets a ranking signal in both directions (each text
  against G images, each image against G texts), which is what the random-100
  protocol measures, instead of one random negative per text. A text keeps one
  mask and an image one set of zeroed patches across its row or column, so the
  candidates of a ranking differ only by what is ranked. The joint pass keeps
  the batch's size (as many G x G groups as fit), so a step costs the same.

* ``partnered`` (``tia_partnered=True``): pairs as above, but every negative row
  shares a side with a matched row (its ``tia_partner``): the partner's picture with its
  own text, or the partner's text with its own picture, so the task can rank the two.

With ``view_contrast_share`` > 0 a share of the rows also get another photo of
their listing (``view_rows``, ``view_features``) for the task's view-to-view
contrast, which keeps photo search able to match any view to the listing when
TIA and ITC read only main photos (docs/design.md item 53).

Everything random is drawn from a generator seeded by (seed, step), so a
resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fashionbert.configuration import SEGMENT_Q, SEGMENT_T
from fashionbert.pretraining.data import PretrainCorpus, PretrainRecord
from fashionbert.pretraining.ranking_layouts import RankingLayouts
from fashionbert.text import IGNORE_INDEX, WholeWordMasker

# Share of TIA's negative rows that show another sub-category's picture (PretrainCollator._pair_rows):
# the cross encoder then checks the product type too. 0.3 won 9.6 random-100 SumR over FashionBERT's
# same-sub-category-only negatives on the same seed (stop 33); 0.5 won another 4.6 and 5.2 over 0.3 on
# two seeds, each paired on one machine (stops 34 and 35; docs/results.md, docs/design.md item 59).
DEFAULT_TIA_OTHER_SUB_SHARE = 0.5


class PretrainCollator(RankingLayouts):
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
        tia_clean_only: bool = True,
        tia_grid: int = 0,
        seed: int = 0,
        main_view_share: float = 1.0,
        view_contrast_share: float = 0.0,
        attribute_twins: bool = False,
        tia_other_sub_share: float = DEFAULT_TIA_OTHER_SUB_SHARE,
        tia_partnered: bool = False,
    ):
        self.corpus = corpus
        self.masker = masker
        self.tokenizer = masker.tokenizer
        self.max_text_length = max_text_length
        self.num_patches = num_patches
        self.n_masked_patches = max(1, int(round(mpm_probability * num_patches)))
        self.tia_negative_fraction = tia_negative_fraction
        if not 0.0 <= tia_other_sub_share <= 1.0:
            raise ValueError("tia_other_sub_share must be in [0, 1]")
        self.tia_other_sub_share = tia_other_sub_share
        self.query_probability = query_probability
        if not 0.0 <= clean_fraction <= 1.0:
            raise ValueError("clean_fraction must be in [0, 1]")
        if not 0.0 <= main_view_share <= 1.0:
            raise ValueError("main_view_share must be in [0, 1]")
        self.main_view_share = main_view_share
        if not 0.0 <= view_contrast_share <= 1.0:
            raise ValueError("view_contrast_share must be in [0, 1]")
        self.view_contrast_share = view_contrast_share
        if tia_grid == 1 or tia_grid < 0:
            raise ValueError(f"tia_grid must be 0 (pairs) or a group size >= 2, got {tia_grid}")
        if tia_grid and clean_fraction:
            raise ValueError("tia_grid ranks corrupted rows (FashionBERT's single pass): it needs clean_fraction=0")
        if tia_partnered and (tia_grid or clean_fraction):
            raise ValueError("tia_partnered lays out pair rows of one corrupted pass: it needs tia_grid=0, clean_fraction=0")
        self.tia_partnered = tia_partnered
        self.clean_fraction = clean_fraction
        self.tia_clean_only = tia_clean_only
        self.tia_grid = tia_grid
        self.seed = seed
        # Catalog attribute twins (same sub-category, same non-empty ``attributes``) are nobody's negative.
        # Off by default: on the synthetic catalog it changed neither encoder (docs/results.md, stop 31).
        self.attribute_twins = attribute_twins
        self._encoded: dict[str, tuple[list[int], list[int | None]]] = {}

    def _encode(self, text: str) -> tuple[list[int], list[int | None]]:
        hit = self._encoded.get(text)
        if hit is None:
            hit = self._encoded[text] = self.masker.encode(text, self.max_text_length)
        return hit

    def _pad(self, rows: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)

    def _twins(self, a: PretrainRecord, b: PretrainRecord) -> bool:
        """Two listings the catalog cannot tell apart: a title of one fits the other's picture."""
        return (self.attribute_twins and bool(a.attributes) and a.attributes == b.attributes
                and a.sub_category == b.sub_category)

    def _draw_texts(self, records: list[PretrainRecord], rng: np.random.Generator) -> tuple[list[str], list[int]]:
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
        return texts, segments

    def _view(self, rec: PretrainRecord, rng: np.random.Generator) -> int:
        """The record's main (first) image with probability ``main_view_share``, else any of its views.

        Why not every view alike: a listing's title describes its main photo, while the other
        views include fabric close-ups (no cut to see) and now and then another product's photo;
        drawn uniformly, about a third of the pairs TIA and ITC learn from could not confirm
        their title (docs/design.md item 49). The default share is 1: the other views reach the
        photo search through the view-to-view contrast (``view_contrast_share``, item 53), which
        pairs them with their listing's photos, not with a title they do not show.
        """
        if len(rec.images) == 1 or rng.random() < self.main_view_share:
            return int(rec.images[0])
        return int(rec.images[int(rng.integers(len(rec.images)))])

    def _zeroed(self, n: int, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """[n, patches] mask with ``n_masked_patches`` drawn without replacement in each of ``rows``."""
        zeroed = np.zeros((n, self.num_patches), dtype=bool)
        for i in rows:
            zeroed[i, rng.choice(self.num_patches, self.n_masked_patches, replace=False)] = True
        return zeroed

    def __call__(self, indices: Sequence[int], step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step, 11])
        records = [self.corpus.records[i] for i in indices]
        texts, segments = self._draw_texts(records, rng)
        views = [self._view(rec, rng) for rec in records]
        feats = np.stack([self.corpus.patch_features(rec, v) for rec, v in zip(records, views)]).astype(np.float32)
        encoded = [self._encode(t) for t in texts]
        if self.tia_grid:
            joint = self._grid_rows(records, encoded, segments, feats, rng)
        elif self.tia_partnered:
            joint = self._partnered_rows(records, encoded, segments, feats, rng)
        else:
            joint = self._pair_rows(records, encoded, segments, feats, rng)

        pad = self.tokenizer.pad_token_id
        text_ids = self._pad([list(e[0]) for e in encoded], pad)
        seg = torch.tensor(segments, dtype=torch.long)
        sub_ids: dict[str, int] = {}
        step_tensors = {
            **joint,
            # The single-side (ITC) passes: every record's own text and image.
            "text_input_ids": text_ids,
            "text_attention_mask": self._pad([[1] * len(e[0]) for e in encoded], 0),
            "text_token_type_ids": seg[:, None].expand_as(text_ids).clone(),
            "image_features": torch.from_numpy(feats),
            "itc_same_text": torch.tensor([[a == b for b in texts] for a in texts]),
            "itc_same_product": torch.tensor([[a.key == b.key for b in records] for a in records]),
            # Products the catalog cannot tell apart (same sub-category and every attribute): not negatives.
            "attribute_twins": (torch.tensor([[self._twins(a, b) for b in records] for a in records])
                                if self.attribute_twins else torch.zeros(len(records), len(records), dtype=torch.bool)),
            "sub_category_ids": torch.tensor([sub_ids.setdefault(r.sub_category, len(sub_ids)) for r in records]),
            # Drawn last, so that adding it changed none of the draws above: seeds the task's negative mining.
            "negative_seed": torch.tensor(int(rng.integers(2**31 - 1))),
        }
        if self.view_contrast_share > 0:  # drawn after everything else: a share of 0 leaves every draw as it was
            step_tensors.update(self._other_views(records, views, feats.shape[1:], rng))
        return step_tensors

    def _other_views(self, records: list[PretrainRecord], views: list[int], patch_shape: tuple[int, ...],
                     rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Another photo of ``view_contrast_share`` of the rows, for the view-to-view contrast.

        ``view_rows`` holds the batch rows that got one and ``view_features`` its patches: a
        different view of the same listing than the row's own image, drawn uniformly (close-ups
        included: photo search must still find the product from them). Rows whose listing has
        one photo are skipped, so the share is of the rows that can take part.
        """
        chosen = rng.random(len(records)) < self.view_contrast_share
        rows, feats = [], []
        for i, (rec, own) in enumerate(zip(records, views)):
            others = [int(v) for v in rec.images if int(v) != own]
            if chosen[i] and others:
                rows.append(i)
                feats.append(self.corpus.patch_features(rec, others[int(rng.integers(len(others)))]))
        return {
            "view_rows": torch.tensor(rows, dtype=torch.long),
            "view_features": torch.from_numpy(
                np.stack(feats).astype(np.float32) if feats else np.zeros((0, *patch_shape), np.float32)),
        }

    def _joint_tensors(self, masked: list[list[int]], labels: list[list[int]], segments: list[int],
                       patches: np.ndarray, targets: np.ndarray, zeroed: np.ndarray,
                       tia: np.ndarray) -> dict[str, torch.Tensor]:
        masked_ids = self._pad(masked, self.tokenizer.pad_token_id)
        return {
            "input_ids": masked_ids,
            "attention_mask": self._pad([[1] * len(r) for r in masked], 0),
            "token_type_ids": torch.tensor(segments, dtype=torch.long)[:, None].expand_as(masked_ids).clone(),
            "mlm_labels": self._pad(labels, IGNORE_INDEX),
            "patch_features": torch.from_numpy(patches),
            "mpm_mask": torch.from_numpy(zeroed & (tia == 1)[:, None]),  # MPM only where text and image match
            "zeroed_patches": torch.from_numpy(zeroed),
            "mpm_targets": torch.from_numpy(targets),
            "tia_labels": torch.from_numpy(tia),
        }

    def _negative_source(self, records: list[PretrainRecord], i: int, candidates: Sequence[int],
                         rng: np.random.Generator) -> tuple[int | None, bool]:
        """The batch row whose picture (or text) row ``i``'s negative borrows, and whether it is another sub-category's.

        A same-sub-category row (FashionBERT's), except for ``tia_other_sub_share`` of the
        draws, which take another sub-category's where the batch has one; never the same
        product or an attribute twin. None when no candidate is left.
        """
        distinct = [j for j in candidates if records[j].key != records[i].key and not self._twins(records[i], records[j])]
        same_sub = [j for j in distinct if records[j].sub_category == records[i].sub_category]
        outside_drawn = False
        # Drawn only when the option is on, so a share of 0 leaves every other draw as it was.
        if self.tia_other_sub_share > 0 and rng.random() < self.tia_other_sub_share:
            outside = [j for j in distinct if records[j].sub_category != records[i].sub_category]
            others, outside_drawn = outside or same_sub, bool(outside)
        else:
            others = same_sub or distinct
        if not others:
            return None, False
        return int(others[int(rng.integers(len(others)))]), outside_drawn

    def _pair_rows(self, records: list[PretrainRecord], encoded, segments: list[int], feats: np.ndarray,
                   rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """One joint row per record; a share of them with another record's image (TIA label 0).

        The negative image is a same-sub-category record's (FashionBERT's), except for
        ``tia_other_sub_share`` of the negative rows, which take one from another sub-category.
        Why both: same-sub-category negatives teach the fine attributes (colour, print,
        neckline), but a cross encoder that never saw another sub-category's picture as a
        "no match" does not learn to check the product type at all: it ranked a tote or a
        t-shirt first for "jeans" on one text query in ten of random-100, whose groups are
        topped up from other sub-categories (docs/results.md, stop 33), and the search
        re-ranks candidates of any sub-category too.
        """
        n = len(records)
        image_rows = np.arange(n)
        tia = np.ones(n, dtype=np.int64)
        other_sub = np.zeros(n, dtype=bool)
        for i in np.flatnonzero(rng.random(n) < self.tia_negative_fraction):
            source, other_sub[i] = self._negative_source(records, i, range(n), rng)
            if source is not None:
                image_rows[i] = source
                tia[i] = 0

        # Clean rows are drawn independently of the TIA label: TIA on corrupted rows learns from texts
        # whose telling word ("red") is [MASK]ed away, and corrupting only matched rows would leak the
        # label (no [MASK] => negative). Independent of the label, TIA may score both kinds of row.
        clean = rng.random(n) < self.clean_fraction
        masked, labels = [], []
        for (tok_ids, word_ids), matched, is_clean in zip(encoded, tia, clean):
            if is_clean:
                masked.append(list(tok_ids))
                labels.append([IGNORE_INDEX] * len(tok_ids))
                continue
            m_ids, m_labels = self.masker.mask_encoded(tok_ids, word_ids, rng)
            masked.append(m_ids)
            labels.append(m_labels if matched else [IGNORE_INDEX] * len(m_labels))
        patches = feats[image_rows].copy()
        zeroed = self._zeroed(n, np.flatnonzero(~clean), rng)
        patches[zeroed] = 0.0
        joint = self._joint_tensors(masked, labels, segments, patches, feats[image_rows], zeroed, tia)
        scored_by_tia = clean if self.clean_fraction > 0 and self.tia_clean_only else np.ones(n, dtype=bool)
        joint["tia_rows"] = torch.from_numpy(scored_by_tia)
        joint["tia_other_sub_rows"] = torch.from_numpy(other_sub)  # ITC mining keeps these rows' product-type lesson
        # a negative row showing a matched row's picture: the pair the task's ranking compares (-1: none)
        partner = np.where((tia == 0) & (tia[image_rows] == 1), image_rows, -1)
        joint["tia_partner"] = torch.from_numpy(partner)
        return joint
