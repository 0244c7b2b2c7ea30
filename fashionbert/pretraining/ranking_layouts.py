"""The joint-pass layouts that let TIA rank: the grid and the partnered pairs.

Split out of :mod:`fashionbert.pretraining.collator` (which keeps FashionBERT's pair rows and
everything every layout shares) so each module stays small; :class:`RankingLayouts` is a
mixin of :class:`~fashionbert.pretraining.collator.PretrainCollator` and reads its state
(masker, zeroing, the shared tensor builder, the negative draw).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fashionbert.pretraining.data import PretrainRecord
from fashionbert.text import IGNORE_INDEX


class RankingLayouts:
    """``_partnered_rows`` (``tia_partnered``) and ``_grid_rows`` (``tia_grid``) for PretrainCollator."""

    def _partnered_rows(self, records: list[PretrainRecord], encoded, segments: list[int], feats: np.ndarray,
                        rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Pair rows whose every negative shares a picture or a text with a matched row (its partner).

        As in ``_pair_rows`` a share of the rows are negatives, their partner drawn from the
        matched rows of the same sub-category (another one for ``tia_other_sub_share`` of
        them); then half show the partner's picture with their own text (the task ranks the
        two texts for that picture: image->text) and half the partner's text with their own
        picture (two pictures for that text: text->image). The shared side is the partner's
        very tokens or patches, [MASK]s and zeroed patches included, so the two rows differ
        only by what is ranked (as in the grid). Unlike the grid every record still brings
        its own text or picture, so a step reads as many products as before.
        """
        n = len(records)
        negative = rng.random(n) < self.tia_negative_fraction
        matched = np.flatnonzero(~negative)
        text_of, image_of, partner = np.arange(n), np.arange(n), np.full(n, -1)
        other_sub = np.zeros(n, dtype=bool)
        for i in np.flatnonzero(negative):
            source, other_sub[i] = self._negative_source(records, i, matched.tolist(), rng)
            if source is not None:
                partner[i] = source
                if rng.random() < 0.5:
                    image_of[i] = partner[i]
                else:
                    text_of[i] = partner[i]
        tia = (partner < 0).astype(np.int64)
        own_masks = {int(r): self.masker.mask_encoded(*encoded[r], rng) for r in np.unique(text_of)}
        masked = [own_masks[int(text_of[r])][0] for r in range(n)]
        labels = [own_masks[r][1] if tia[r] else [IGNORE_INDEX] * len(own_masks[int(text_of[r])][1]) for r in range(n)]
        zeroed = self._zeroed(n, np.arange(n), rng)[image_of]
        patches = feats[image_of].copy()
        patches[zeroed] = 0.0
        joint = self._joint_tensors(masked, labels, [segments[int(t)] for t in text_of], patches, feats[image_of],
                                    zeroed, tia)
        joint["tia_rows"] = torch.ones(n, dtype=torch.bool)
        joint["tia_other_sub_rows"] = torch.from_numpy(other_sub)
        joint["tia_partner"] = torch.from_numpy(partner)
        return joint

    def grid_groups(self, records: Sequence[PretrainRecord]) -> list[list[int]]:
        """Groups of ``tia_grid`` distinct records (batch positions), one sub-category each where possible.

        The sampler already lays batches out as same-sub-category runs; a sub-category's
        remainder is topped up with other remainders (so a small catalog still forms
        groups), and as many groups as fit G x G rows into the batch size (at least one)
        are taken evenly spaced over the batch. Fewer distinct records than G: one group
        of all of them.
        """
        by_sub: dict[str, list[int]] = {}
        seen: set[tuple[int, str]] = set()
        for i, rec in enumerate(records):
            if rec.key not in seen:
                seen.add(rec.key)
                by_sub.setdefault(rec.sub_category, []).append(i)
        size = min(self.tia_grid, len(seen))
        if size < 2:
            return []
        full, rest = [], []
        for members in by_sub.values():
            cut = len(members) - len(members) % size
            full.extend(members[k:k + size] for k in range(0, cut, size))
            rest.extend(members[cut:])
        full.extend(rest[k:k + size] for k in range(0, len(rest) - size + 1, size))
        wanted = min(len(full), max(1, len(records) // (size * size)))
        # evenly spaced over the batch, so a mixed batch (new + replay rows) keeps its mix in the joint pass
        return [full[int(i)] for i in np.linspace(0, len(full) - 1, wanted).round()] if wanted else []

    def _grid_rows(self, records: list[PretrainRecord], encoded, segments: list[int], feats: np.ndarray,
                   rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Every text of a group against every image of it; ``tia_grid`` holds the row of (group, text, image)."""
        groups = self.grid_groups(records)
        if not groups:  # one distinct product in the batch: nothing to rank against
            return self._pair_rows(records, encoded, segments, feats, rng)
        members = sorted({i for g in groups for i in g})
        masks = {i: self.masker.mask_encoded(*encoded[i], rng) for i in members}
        zeroed_of = dict(zip(members, self._zeroed(len(members), np.arange(len(members)), rng)))
        masked, labels, row_segments, image_of, tia = [], [], [], [], []
        for group in groups:
            for a in group:
                for b in group:
                    masked.append(masks[a][0])
                    labels.append(masks[a][1] if a == b else [IGNORE_INDEX] * len(masks[a][1]))
                    row_segments.append(segments[a])
                    image_of.append(b)
                    tia.append(int(a == b))
        zeroed = np.stack([zeroed_of[b] for b in image_of])
        patches = feats[image_of].copy()
        patches[zeroed] = 0.0
        joint = self._joint_tensors(masked, labels, row_segments, patches, feats[image_of], zeroed,
                                    np.asarray(tia, dtype=np.int64))
        size = len(groups[0])
        joint["tia_rows"] = torch.ones(len(tia), dtype=torch.bool)
        joint["tia_grid"] = torch.arange(len(tia)).reshape(len(groups), size, size)
        return joint
