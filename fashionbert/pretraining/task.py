"""FashionBERT's pretraining tasks as one module returning named losses.

Like open_clip's loss modules, :class:`PretrainingTask` takes a batch from
:class:`~fashionbert.pretraining.data.PretrainCollator` and returns a dict of
named scalar losses (only the enabled ones) plus diagnostics; combining
them (fixed or adaptive weights) is the caller's business.

* ``mlm`` - cross-entropy on whole-word-masked text tokens; the vocabulary
  projection runs only on masked positions (15 % of tokens), which saves most
  of the head's cost.
* ``mpm`` - KL(softmax(original feature) || softmax(prediction)) over the
  feature dimensions of the zeroed patches.
* ``tia`` - 2-way classification of the joint sequence (matched vs an
  image of another product of the same sub-category), on the batch's TIA rows
  - see :mod:`fashionbert.pretraining.collator`. With the collator's grid
  layout it also ranks: softmax over each text's G candidate images and each
  image's G candidate texts (the match log-odds as the score).
  With ``tia_pair_ranking`` each pair-layout negative is also ranked below the matched
  row it shares a picture or a text with (``_pair_ranking``).
  With ``tia_negatives="itc-hard"`` (ALBEF's hard-negative mining) each negative
  row's image is re-drawn from the batch with probability softmax(ITC similarity)
  to its text - the images the dual encoder finds most confusable - so the cross
  encoder learns the fine differences random-100 ranks by, not just the colour.
* ``itc`` - symmetric InfoNCE between text-alone and image-alone encodings
  with in-batch (hence same-sub-category) negatives; exact duplicates of a
  text are not counted as negatives.
* ``view`` (only when the collator drew other views, ``view_contrast_share``
  > 0; it needs ``itc``) - symmetric InfoNCE between the image-alone encoding
  of another photo of a listing and that of the row's own photo, against the
  batch's other rows (other products of mostly the same sub-category). It
  teaches the image-only encoder that every photo of a listing is one product,
  which photo search needs, without making TIA and ITC pair titles with photos
  their titles do not describe (docs/design.md item 53).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from fashionbert.modeling import FashionBertModel
from fashionbert.precision import full_precision
from fashionbert.text import IGNORE_INDEX

TASKS = ("mlm", "mpm", "tia", "itc")
TIA_NEGATIVES = ("sub-category", "itc-hard")


class PretrainingTask(nn.Module):
    def __init__(self, model: FashionBertModel, tasks: Iterable[str] = TASKS, tia_negatives: str = "sub-category",
                 tia_hard_share: float = 1.0, tia_pair_ranking: bool = False):
        super().__init__()
        self.model = model
        self.tasks = tuple(tasks)
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}")
        if tia_negatives not in TIA_NEGATIVES:
            raise ValueError(f"tia_negatives must be one of {TIA_NEGATIVES}, got {tia_negatives!r}")
        if tia_negatives == "itc-hard" and "itc" not in self.tasks:
            raise ValueError("tia_negatives='itc-hard' mines with the ITC encodings: keep the itc task on")
        if not 0.0 <= tia_hard_share <= 1.0:
            raise ValueError(f"tia_hard_share must be in [0, 1], got {tia_hard_share}")
        if tia_pair_ranking and tia_negatives == "itc-hard":
            raise ValueError("tia_pair_ranking pairs rows by the collator's pictures, which itc-hard re-draws")
        self.tia_negatives = tia_negatives
        self.tia_hard_share = tia_hard_share
        self.tia_pair_ranking = tia_pair_ranking

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trunk's last layer: where adaptive-grad weighting measures per-task gradient norms."""
        return list(self.model.bert.encoder.layer[-1].parameters())

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        losses: dict[str, torch.Tensor] = {}
        stats: dict[str, float] = {}
        single = self._single_side(batch) if "itc" in self.tasks else None
        if {"mlm", "mpm", "tia"} & set(self.tasks):
            patches = batch["patch_features"]
            if self.tia_negatives == "itc-hard" and "tia" in self.tasks and single is not None:
                if "tia_grid" in batch:
                    raise ValueError("tia_negatives='itc-hard' re-draws pair rows' images: use it without tia_grid")
                patches, stats["tia_hard_same_sub"] = self._hard_negatives(batch, *single)
            joint = self.model(
                input_ids=batch["input_ids"],
                token_type_ids=batch["token_type_ids"],
                attention_mask=batch["attention_mask"],
                patch_features=patches,
            )
            t = joint.text_length
            if "mlm" in self.tasks:
                labels = batch["mlm_labels"]
                where = labels != IGNORE_INDEX
                if where.any():
                    logits = self.model.mlm_logits(joint.last_hidden_state[:, :t][where])
                    losses["mlm"] = F.cross_entropy(logits.float(), labels[where])
                    stats["mlm_acc"] = float((logits.argmax(-1) == labels[where]).float().mean())
            if "mpm" in self.tasks:
                where = batch["mpm_mask"]
                if where.any():
                    pred = self.model.mpm_logits(joint.last_hidden_state[:, t:][where]).float()
                    target = batch["mpm_targets"][where].float()
                    losses["mpm"] = F.kl_div(
                        F.log_softmax(pred, -1), F.log_softmax(target, -1), log_target=True, reduction="batchmean"
                    )
            rows = batch["tia_rows"]
            if "tia" in self.tasks and "tia_grid" in batch:
                losses["tia"] = self._tia_grid(self.model.tia_logits(joint).float(), batch, stats)
            elif "tia" in self.tasks and rows.any():
                logits = self.model.tia_logits(joint, rows).float()
                labels = batch["tia_labels"][rows]
                losses["tia"] = F.cross_entropy(logits, labels)
                stats["tia_acc"] = float((logits.argmax(-1) == labels).float().mean())
                if self.tia_pair_ranking:
                    losses["tia"] = losses["tia"] + self._pair_ranking(logits, batch, rows, stats)
        if single is not None:
            losses["itc"], stats["itc_acc"] = self._itc(batch, *single)
            if len(batch.get("view_rows", ())):
                losses["view"], stats["view_acc"] = self._view_contrast(batch, single[1])
        return losses, stats

    @staticmethod
    def _tia_grid(logits: torch.Tensor, batch: dict[str, torch.Tensor], stats: dict[str, float]) -> torch.Tensor:
        """Ranking in both directions over each G x G group, plus the class-balanced match/no-match loss.

        The ranking score is the match log-odds (what ``score_pairs`` ranks by); the
        binary term keeps the probability itself calibrated, which the search API's
        score fusion and the TIA accuracy read.
        """
        labels = batch["tia_labels"]
        grid = (logits[:, 1] - logits[:, 0])[batch["tia_grid"]]  # [groups, text, image]
        groups, size, _ = grid.shape
        target = torch.arange(size, device=grid.device).repeat(groups)
        by_text, by_image = grid.reshape(-1, size), grid.transpose(1, 2).reshape(-1, size)
        ranking = (F.cross_entropy(by_text, target) + F.cross_entropy(by_image, target)) / 2
        balance = torch.tensor([1.0, size - 1.0], device=logits.device)  # G-1 negatives per positive
        stats["tia_acc"] = float((logits.argmax(-1) == labels).float().mean())
        stats["tia_rank_acc"] = float((by_text.argmax(-1) == target).float().mean())
        return ranking + F.cross_entropy(logits, labels, weight=balance)

    @staticmethod
    def _pair_ranking(logits: torch.Tensor, batch: dict[str, torch.Tensor], rows: torch.Tensor,
                      stats: dict[str, float]) -> torch.Tensor:
        """Each negative row ranked below its partner: the matched row it shares a picture or a text with.

        A negative row that shows a matched row's picture with a stranger's text asks which of
        the two texts belongs to the picture - the image->text question random-100 asks, which
        the binary head answers only indirectly (both texts may be consistent with the
        picture, the stranger's leaving out what the picture shows, and still the own one is
        the likelier). One that shows a matched row's text with a stranger's picture asks the
        text->image question. Softmax over the two match log-odds, ``softplus(s_neg - s_own)``;
        no extra joint rows, so a step costs the same. The collator names the partners
        (``tia_partner``, -1 for none); only pairs whose rows are both TIA's count, and the
        term is zero when the batch holds none.
        """
        idx = torch.nonzero(rows).squeeze(1)
        labels = batch["tia_labels"][idx]
        score = logits[:, 1] - logits[:, 0]
        position = torch.full_like(rows, -1, dtype=torch.long)
        position[idx] = torch.arange(len(idx), device=idx.device)
        partner = batch["tia_partner"][idx]
        source = torch.where(partner >= 0, position[partner.clamp(min=0)], -1)
        paired = (labels == 0) & (source >= 0) & (labels[source.clamp(min=0)] == 1)
        if not paired.any():
            return score.sum() * 0.0
        own, stranger = score[source[paired]], score[paired]
        stats["tia_pair_rank_acc"] = float((own > stranger).float().mean())
        return F.softplus(stranger - own).mean()

    def _single_side(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text-alone and image-alone ITC encodings of the batch's rows (unit vectors)."""
        text = self.model.itc_embedding(self.model(
            input_ids=batch["text_input_ids"], token_type_ids=batch["text_token_type_ids"],
            attention_mask=batch["text_attention_mask"],
        ))
        return text, self.model.itc_embedding(self.model.encode_image_only(batch["image_features"]))

    @staticmethod
    def _not_negative(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[n, n]: another row with the very same text, the same product or its attribute twin is not a negative."""
        not_negative = batch["itc_same_text"] | batch["itc_same_product"]
        return not_negative | batch["attribute_twins"] if "attribute_twins" in batch else not_negative

    @torch.no_grad()
    def _hard_negatives(self, batch: dict[str, torch.Tensor], text: torch.Tensor,
                        image: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The joint pass's patches with ``tia_hard_share`` of the negative rows' images re-drawn by ITC similarity.

        Drawn (not the arg-max) as in ALBEF, so a near-duplicate product does not become every
        step's negative; seeded by the batch, so a resumed run draws the same. A re-drawn image
        keeps the row's zeroed patches. Candidates are the batch's other products of the
        text's sub-category (any other product where it has none there), never an attribute
        twin (when the collator marks them): the most ITC-similar product is otherwise often
        one whose picture the text fits just as well, and a "no match" label on it is noise.
        The other negative rows, and those the collator showed another sub-category's picture,
        keep their random draw, so TIA still sees the easy mismatches its agreement features
        learn first and still checks the product type. Even so, on the 20-minute CPU budget it cost the
        cross encoder 13 SumR (docs/results.md, stop 31): an option for longer runs.
        Returns the patches and the share of mined images from the text's own sub-category.
        """
        patches = batch["patch_features"]
        negative = batch["tia_labels"] == 0
        if "tia_other_sub_rows" in batch:  # negatives shown another sub-category keep it: they teach the product type
            negative = negative & ~batch["tia_other_sub_rows"]
        negative = torch.nonzero(negative).squeeze(1)
        generator = torch.Generator().manual_seed(int(batch["negative_seed"]))
        if self.tia_hard_share < 1.0:
            negative = negative[torch.rand(len(negative), generator=generator) < self.tia_hard_share]
        if len(negative) == 0:
            return patches, float("nan")
        logits = _scaled_similarity(self.model.temperature_scale(), text, image)
        excluded = self._not_negative(batch)[negative]
        sub = batch["sub_category_ids"]
        other_sub = (sub[None, :] != sub[negative][:, None]).to(excluded.device)
        has_same_sub = (~excluded & ~other_sub).any(1, keepdim=True)
        excluded = excluded | (other_sub & has_same_sub)
        logits = logits[negative].masked_fill(excluded, float("-inf"))
        usable = torch.isfinite(logits).any(1)
        negative, logits = negative[usable], logits[usable]
        if len(negative) == 0:
            return patches, float("nan")
        chosen = torch.multinomial(logits.softmax(-1).cpu(), 1, generator=generator).squeeze(1).to(patches.device)
        patches = patches.clone()
        keep = ~batch["zeroed_patches"][negative]
        patches[negative] = batch["image_features"][chosen].to(patches.dtype) * keep.unsqueeze(-1).to(patches.dtype)
        same_sub = batch["sub_category_ids"][chosen] == batch["sub_category_ids"][negative]
        return patches, float(same_sub.float().mean())

    def _view_contrast(self, batch: dict[str, torch.Tensor], image: torch.Tensor) -> tuple[torch.Tensor, float]:
        """InfoNCE of each other view against every row's own image, and back over the viewed rows.

        A row of the same product (the batch can hold one twice) is not a negative. Shares
        ITC's temperature: both compare unit vectors of the one image-only encoder.
        """
        rows = batch["view_rows"]
        other = self.model.itc_embedding(self.model.encode_image_only(batch["view_features"]))
        scale = self.model.temperature_scale()
        k, n = len(rows), len(image)
        same = batch["itc_same_product"][rows]  # [k, n]: the viewed rows' products against every row
        own = torch.arange(n, device=image.device)[None, :] == rows[:, None]
        similarity = _scaled_similarity(scale, other, image)  # [k, n]; its viewed rows' columns, transposed, are the way back
        to_rows = similarity.masked_fill(same & ~own, float("-inf"))
        not_self = ~torch.eye(k, dtype=torch.bool, device=image.device)
        back = similarity[:, rows].T.masked_fill(same[:, rows].T & not_self, float("-inf"))
        loss = (F.cross_entropy(to_rows, rows) + F.cross_entropy(back, torch.arange(k, device=image.device))) / 2
        return loss, float((to_rows.argmax(-1) == rows).float().mean())

    def _itc(self, batch: dict[str, torch.Tensor], text: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, float]:
        n = len(text)
        logits = _scaled_similarity(self.model.temperature_scale(), text, image)
        not_negative = self._not_negative(batch) & ~torch.eye(n, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(not_negative, float("-inf"))
        target = torch.arange(n, device=logits.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        return loss, float((logits.argmax(-1) == target).float().mean())


def _scaled_similarity(scale: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``scale * a @ b.T`` for unit vectors, in fp32 even under bf16 autocast.

    bf16 keeps 8 bits of mantissa: a cosine near 0.9 would carry ~0.004 of rounding, which a
    temperature scale of up to 100 turns into ~0.4 of logit noise on the contrastive losses.
    """
    with full_precision(a):
        return scale.float() * (a.float() @ b.float().T)
