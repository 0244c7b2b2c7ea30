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
  image of another product of the same sub-category), on the batch's clean
  (unmasked) rows - see :class:`~fashionbert.pretraining.data.PretrainCollator`.
* ``itc`` - symmetric InfoNCE between text-alone and image-alone encodings
  with in-batch (hence same-sub-category) negatives; exact duplicates of a
  text are not counted as negatives.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from fashionbert.modeling import FashionBertModel
from fashionbert.text import IGNORE_INDEX

TASKS = ("mlm", "mpm", "tia", "itc")


class PretrainingTask(nn.Module):
    def __init__(self, model: FashionBertModel, tasks: Iterable[str] = TASKS):
        super().__init__()
        self.model = model
        self.tasks = tuple(tasks)
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}")

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trunk's last layer: where adaptive-grad weighting measures per-task gradient norms."""
        return list(self.model.bert.encoder.layer[-1].parameters())

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        losses: dict[str, torch.Tensor] = {}
        stats: dict[str, float] = {}
        if {"mlm", "mpm", "tia"} & set(self.tasks):
            joint = self.model(
                input_ids=batch["input_ids"],
                token_type_ids=batch["token_type_ids"],
                attention_mask=batch["attention_mask"],
                patch_features=batch["patch_features"],
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
            if "tia" in self.tasks and rows.any():
                logits = self.model.tia_logits(joint, rows).float()
                labels = batch["tia_labels"][rows]
                losses["tia"] = F.cross_entropy(logits, labels)
                stats["tia_acc"] = float((logits.argmax(-1) == labels).float().mean())
        if "itc" in self.tasks:
            losses["itc"], stats["itc_acc"] = self._itc(batch)
        return losses, stats

    def _itc(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
        text = self.model.itc_embedding(self.model(
            input_ids=batch["text_input_ids"], token_type_ids=batch["token_type_ids"], attention_mask=batch["attention_mask"],
        ))
        image = self.model.itc_embedding(self.model.encode_image_only(batch["image_features"]))
        n = len(text)
        logits = self.model.temperature_scale() * text @ image.T
        # Another row with the very same text, or the same product, is not a negative.
        not_negative = (batch["itc_same_text"] | batch["itc_same_product"]) & ~torch.eye(n, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(not_negative, float("-inf"))
        target = torch.arange(n, device=logits.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        return loss, float((logits.argmax(-1) == target).float().mean())
