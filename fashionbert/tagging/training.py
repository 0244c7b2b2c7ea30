"""Training a :class:`~fashionbert.tagging.tagger.Tagger`: one function, no CLI, progress through ``echo``.

Choices and why:

* **Frozen trunk by default, with a state cache.** The pretrained trunk already aligns words
  and patches; the head is small. A frozen trunk's states of a (product, variant) never
  change, so each is computed once and reused by every later epoch (float16, CPU): on a
  CPU the trunk is >95 % of a step, so epochs after the first cost almost nothing.
  ``freeze_trunk=False`` fine-tunes it (lower learning rate, no cache).
* **Modality dropout.** A share of the training rows loses its image or its title each
  epoch (re-drawn per epoch), so a product with only one of them at inference is not out of
  distribution. Variants are cached like full rows.
* **Injected strays** (``stray_injection``; a quarter of the rows of a multi-view tagger): a
  share of the rows is read with one photo swapped for another product's
  (``fashionbert.tagging.dataset``), and a loss on that photo's view weight, -log(1 - w),
  teaches the high-level attention to drop it. The catalog never says which of its photos are
  strays; an injected one's slot is known.
* **BCE with pos_weight** = (negatives / positives) of each tag on the training split, clamped
  to [1, max_pos_weight]: rare tags are up-weighted, common ones never down-weighted. Focal loss
  (Lin et al. 2017) is the alternative for heavier imbalance.
* **Early stopping on validation mAP** (a seeded 10 % split) with patience; the best epoch's
  weights are restored. mAP rather than F1@3, the headline metric: F1@3 only moves when a tag
  enters or leaves a product's top three, so an epoch that learns a tag the model is still
  unsure of (ranked fourth behind three confident true tags) looks no better, and on ~200
  validation products it is noisy; per-tag AP sees every tag's whole ranking
  (``select_on="f1@3"`` restores the old rule; docs/design.md item 44). ``max_minutes`` and
  ``max_epochs`` bound the run (wall clock includes the cache's trunk passes).
* **Deterministic for a seed**: the split, shuffles and modality dropout draw from one seeded
  generator; the head's init and dropout from the seeded global RNG.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fashionbert.encoder import FashionBert
from fashionbert.tagging.config import LOSSES, TaggerConfig
from fashionbert.tagging.dataset import FULL, NO_IMAGE, NO_TITLE, STRAY, TagDataset
from fashionbert.tagging.metrics import score_metrics
from fashionbert.tagging.model import HeadInputs
from fashionbert.tagging.tagger import ProductStates, Tagger, collate_states, encode_states, split_states
from fashionbert.tagging.vocabulary import TagVocabulary, clean_tags

Echo = Callable[[str], None]
SELECTION_METRICS = ("map", "f1@3")


@dataclass
class TrainOptions:
    max_epochs: int = 60
    max_minutes: float | None = None
    batch_size: int = 32
    lr: float = 1e-3
    trunk_lr: float = 5e-5  # only with TaggerConfig.freeze_trunk = False
    weight_decay: float = 0.01
    loss: str = "bce"  # bce | focal
    focal_gamma: float = 2.0
    max_pos_weight: float = 10.0
    val_fraction: float = 0.1
    # epochs without a better validation score before stopping: it is noisy on small catalogs, and the stray loss
    # holds validation mAP flat for ~10 epochs while the scorer learns (a patience of 10 stopped those runs early)
    patience: int = 20
    select_on: str = "map"  # the validation metric that picks the epoch: one of SELECTION_METRICS
    modality_dropout: float = 0.3  # share of training rows per epoch without one modality (half image, half title)
    # share of the other rows per epoch read with an injected stray photo (fashionbert.tagging.dataset; rows with
    # two views read), and the weight of the loss that teaches the high-level attention to drop it (design item 56).
    # On by default: with four views read it lifts F1@3 on the products that have a stray (docs/results.md, stop 29);
    # a tagger reading one view is untouched (injected_share)
    stray_injection: float = 0.25
    stray_loss_weight: float = 1.0
    # whether a row read with an injected stray also feeds the tag loss (its tags are the host's, but a quarter of
    # its photos is another product's); False leaves those rows to the stray loss alone
    stray_tag_loss: bool = True
    seed: int = 0
    encode_batch_size: int = 64
    progress: bool = True

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.modality_dropout <= 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1], got {self.modality_dropout}")
        if not 0.0 <= self.stray_injection <= 1.0:
            raise ValueError(f"stray_injection must be in [0, 1], got {self.stray_injection}")
        if self.stray_loss_weight < 0:
            raise ValueError(f"stray_loss_weight must be >= 0, got {self.stray_loss_weight}")
        if self.select_on not in SELECTION_METRICS:
            raise ValueError(f"select_on must be one of {', '.join(SELECTION_METRICS)}, not {self.select_on!r}")
        if self.max_epochs < 1 or self.batch_size < 1:
            raise ValueError("max_epochs and batch_size must be >= 1")

    def injected_share(self, max_views: int) -> float:
        """The share of rows read with an injected stray by a tagger reading ``max_views`` views.

        0 below two views: a stray needs another view beside it to be told from, and a tagger
        reading one view has no view weights to teach; its training then draws exactly what it
        drew before injection existed, so single-view taggers reproduce.
        """
        return self.stray_injection if max_views >= 2 else 0.0


@dataclass
class FitResult:
    tagger: Tagger
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_val: dict[str, float] = field(default_factory=dict)
    stopped_by: str = "epochs"  # epochs | time | early_stopping
    seconds: float = 0.0
    items_per_second: float = 0.0
    n_train: int = 0
    n_val: int = 0


class StateCache:
    """Frozen-trunk states per (row, variant) of one dataset, computed on first use."""

    def __init__(self, trunk: FashionBert, data: TagDataset, max_views: int, batch_size: int = 64, passes: str = "joint"):
        self.trunk, self.data, self.max_views, self.batch_size, self.passes = trunk, data, max_views, batch_size, passes
        self._states: dict[tuple[int, str], ProductStates] = {}

    def __len__(self) -> int:
        return len(self._states)

    def warm(self, rows: Sequence[int], variants: Sequence[str] = (FULL,)) -> None:
        """Compute every (row, variant) now (e.g. so budgets compared across runs exclude it).

        The ``stray`` variant is computed for the rows that have a stray plan.
        """
        for variant in variants:
            chosen = [r for r in rows if variant != STRAY or self.data.stray_plan(r, self.max_views) is not None]
            if chosen:
                self.batch(chosen, [variant] * len(chosen))

    @torch.no_grad()
    def _fill(self, keys: list[tuple[int, str]]) -> None:
        self.trunk.model.eval()
        for i in range(0, len(keys), self.batch_size):
            chunk = keys[i:i + self.batch_size]
            titles, views = self.data.inputs([r for r, _ in chunk], [v for _, v in chunk], self.max_views)
            for key, states in zip(chunk, split_states(encode_states(self.trunk, titles, views, self.max_views, self.passes))):
                self._states[key] = states

    def batch(self, rows: Sequence[int], variants: Sequence[str]) -> HeadInputs:
        keys = list(zip(rows, variants))
        missing = list(dict.fromkeys(k for k in keys if k not in self._states))
        if missing:
            self._fill(missing)
        return collate_states([self._states[k] for k in keys], self.trunk.config.num_patches, self.trunk.device)


def pos_weights(targets: np.ndarray, max_weight: float) -> torch.Tensor:
    """(negatives / positives) per tag, clamped to [1, max_weight]."""
    pos = targets.sum(0)
    neg = len(targets) - pos
    return torch.tensor(np.clip(neg / np.maximum(pos, 1.0), 1.0, max_weight), dtype=torch.float32)


def tag_loss(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None, kind: str = "bce",
             gamma: float = 2.0) -> torch.Tensor:
    """Mean BCE-with-logits (pos_weight per tag), or its focal version (1 - p_t)^gamma * BCE."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
    if kind == "focal":
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        bce = (1 - p_t).pow(gamma) * bce
    return bce.mean()


def split_rows(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, validation) row split; no validation for tiny sets or fraction 0."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(round(n * val_fraction))) if val_fraction > 0 and n >= 10 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


def training_split(data: TagDataset, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """The rows of ``data`` a tagger is fitted on and the rows it selects its epoch on.

    The baselines it is compared with are fitted on the same training rows: a baseline that
    also saw the validation rows would have 10 % more data than the model it is measured against.
    """
    usable = [i for i, t in enumerate(data.tags) if clean_tags(t)]
    if len(usable) < 2:
        raise ValueError(f"only {len(usable)} product(s) have tags: a tagger needs a catalog whose 'tags' column is filled")
    train_rows, val_rows = split_rows(len(usable), val_fraction, seed)
    return [usable[i] for i in train_rows], [usable[i] for i in val_rows]


def head_input_batches(tagger: Tagger, data: TagDataset, rows: Sequence[int], cache: StateCache | None,
                       batch_size: int = 64) -> Iterator[tuple[list[int], HeadInputs]]:
    """``rows`` in chunks with their head inputs (full inputs), from the cache when the trunk is frozen.

    Puts the tagger in eval mode; callers score under ``torch.no_grad()``.
    """
    tagger.eval()
    for i in range(0, len(rows), batch_size):
        chunk = list(rows[i:i + batch_size])
        yield chunk, cache.batch(chunk, [FULL] * len(chunk)) if cache is not None else tagger.encode(*data.inputs(chunk))


def scores_of(tagger: Tagger, data: TagDataset, rows: Sequence[int], cache: StateCache | None,
              batch_size: int = 64) -> np.ndarray:
    """Sigmoid scores of ``rows`` (full inputs), from the cache when the trunk is frozen."""
    with torch.no_grad():
        out = [torch.sigmoid(tagger.head(x)).float().cpu()
               for _, x in head_input_batches(tagger, data, rows, cache, batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(tagger.vocabulary)), np.float32)


def _variants(n: int, share: float, gen: torch.Generator) -> list[str]:
    draw = torch.rand(n, generator=gen).tolist()
    return [NO_IMAGE if u < share / 2 else NO_TITLE if u < share else FULL for u in draw]


def _inject_strays(rows: Sequence[int], variants: list[str], share: float, data: TagDataset, max_views: int,
                   gen: torch.Generator) -> list[str]:
    """``variants`` with a ``share`` of the full rows that have a stray plan turned into ``stray`` rows.

    Draws from ``gen`` only when ``share`` > 0, so runs without injection keep their old random stream.
    """
    if share <= 0:
        return variants
    draw = torch.rand(len(rows), generator=gen).tolist()
    return [STRAY if v == FULL and u < share and data.stray_plan(r, max_views) is not None else v
            for r, v, u in zip(rows, variants, draw)]


def stray_loss(view_weights: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Mean -log(1 - w) of the injected strays' view weights ``w`` ([N] slots of [N, V] weights).

    Zero when the attention drops a stray entirely, growing without bound as it keeps all of it;
    the tag loss alone only asks that the stray not change the top tags.
    """
    share = view_weights.gather(1, slots.unsqueeze(1)).squeeze(1)
    return -torch.log1p(-share.clamp(max=1.0 - 1e-6)).mean()


def fit_tagger(trunk: FashionBert, data: TagDataset, config: TaggerConfig = TaggerConfig(),
               options: TrainOptions = TrainOptions(), echo: Echo = print, cache: StateCache | None = None) -> FitResult:
    """Train a tagger head (and optionally the trunk) on ``data``; returns the best epoch's tagger.

    ``cache`` may be shared between runs on the same trunk and data (the ablations do).
    """
    t0 = time.perf_counter()
    train_rows, val_rows = training_split(data, options.val_fraction, options.seed)
    vocabulary = TagVocabulary.build([data.tags[i] for i in sorted(train_rows + val_rows)], config.min_tag_count)
    tagger = Tagger.create(trunk, vocabulary, config, seed=options.seed)
    frozen = tagger.config.freeze_trunk
    for p in trunk.model.parameters():
        p.requires_grad_(not frozen)
    if frozen and cache is None:
        cache = StateCache(trunk, data, tagger.config.max_views, options.encode_batch_size, tagger.config.trunk_passes)
    if not frozen:
        cache = None
    targets = torch.from_numpy(vocabulary.encode(data.tags))
    pos_weight = pos_weights(targets[train_rows].numpy(), options.max_pos_weight).to(tagger.device)
    groups = [{"params": list(tagger.head.parameters()), "lr": options.lr}]
    if not frozen:
        groups.append({"params": list(trunk.model.parameters()), "lr": options.trunk_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=options.weight_decay)
    gen = torch.Generator().manual_seed(options.seed)
    # without the high-level attention every view weighs the same: there is nothing for the stray loss to teach
    teach_strays = options.stray_loss_weight > 0 and tagger.config.use_high_level_attention
    injection = options.injected_share(tagger.config.max_views)
    echo(f"tagger: {len(train_rows)} train / {len(val_rows)} validation products, {len(vocabulary)} tags "
         f"(min count {config.min_tag_count}), trunk {'frozen (cached states)' if frozen else 'fine-tuned'}, "
         f"loss {options.loss}"
         + (f", injected strays on {injection:.0%} of the rows ("
            + (f"stray loss weight {options.stray_loss_weight:g})" if teach_strays else "no stray loss)")
            if injection > 0 else ""))

    result = FitResult(tagger, n_train=len(train_rows), n_val=len(val_rows))
    best_state: dict[str, Any] | None = None
    best_score, bad_epochs, items = -1.0, 0, 0
    deadline = t0 + options.max_minutes * 60 if options.max_minutes is not None else None
    for epoch in range(1, options.max_epochs + 1):
        e0, losses, seen = time.perf_counter(), [], 0
        order = [train_rows[i] for i in torch.randperm(len(train_rows), generator=gen).tolist()]
        variants = _inject_strays(order, _variants(len(order), options.modality_dropout, gen), injection,
                                  data, tagger.config.max_views, gen)
        tagger.head.train()
        if not frozen:
            trunk.model.train()
        out_of_time = False
        with tqdm(total=len(order), unit="item", desc=f"tagger epoch {epoch}", disable=not options.progress,
                  leave=False) as bar:
            for i in range(0, len(order), options.batch_size):
                rows, var = order[i:i + options.batch_size], variants[i:i + options.batch_size]
                x = (cache.batch(rows, var) if cache is not None
                     else tagger.encode(*data.inputs(rows, var, tagger.config.max_views)))
                swapped = [b for b, v in enumerate(var) if v == STRAY]
                injected = swapped if teach_strays else []
                # the stray loss reads the scorer-only view weights: a second, cheap pass over the fused groups
                logits, view_weights = tagger.head.logits_and_view_weights(x, scorer_only=bool(injected))
                tagged = (list(range(len(rows))) if options.stray_tag_loss
                          else [b for b, v in enumerate(var) if v != STRAY])
                loss = (tag_loss(logits[tagged], targets[[rows[b] for b in tagged]].to(tagger.device), pos_weight,
                                 options.loss, options.focal_gamma) if tagged else logits.sum() * 0.0)
                if injected:
                    slots = torch.tensor([data.stray_plan(rows[b], tagger.config.max_views).slot for b in injected],
                                         device=view_weights.device)
                    loss = loss + options.stray_loss_weight * stray_loss(view_weights[injected], slots)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                seen += len(rows)
                bar.update(len(rows))
                if deadline is not None and time.perf_counter() > deadline:
                    out_of_time = True
                    break
        items += seen
        record: dict[str, Any] = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
                                  "items": seen, "items_per_second": seen / max(time.perf_counter() - e0, 1e-9)}
        if val_rows:
            scores = scores_of(tagger, data, val_rows, cache, options.encode_batch_size)
            record["val"] = score_metrics(scores, vocabulary.tags, [data.tags[r] for r in val_rows])
            score = record["val"][options.select_on]
        else:
            score = float(epoch)  # nothing to select on: the last epoch is the best
        improved = score > best_score + 1e-9
        if improved:
            best_score, bad_epochs, result.best_epoch = score, 0, epoch
            result.best_val = dict(record.get("val", {}))
            best_state = {"head": copy.deepcopy(tagger.head.state_dict()),
                          "trunk": None if frozen else copy.deepcopy(trunk.model.state_dict())}
        else:
            bad_epochs += 1
        result.history.append(record)
        val_text = f", val mAP {record['val']['map']:.4f} f1@3 {record['val']['f1@3']:.4f}" if "val" in record else ""
        echo(f"tagger: epoch {epoch} loss {record['loss']:.4f}{val_text}{' (best)' if improved else ''}, "
             f"{record['items_per_second']:.0f} items/s")
        if out_of_time:
            result.stopped_by = "time"
            break
        if val_rows and bad_epochs >= options.patience:
            result.stopped_by = "early_stopping"
            break
    if best_state is not None:
        tagger.head.load_state_dict(best_state["head"])
        if best_state["trunk"] is not None:
            trunk.model.load_state_dict(best_state["trunk"])
    for p in trunk.model.parameters():
        p.requires_grad_(False)
    tagger.eval()
    result.seconds = time.perf_counter() - t0
    result.items_per_second = items / max(result.seconds, 1e-9)
    return result
