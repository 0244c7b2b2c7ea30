"""The pretraining job: catalog + patch features -> a FashionBERT release checkpoint.

Runs in one process or under ``torchrun`` (gloo on CPU, nccl on GPU): every
rank takes its slice of each global batch and the gradients are averaged
with one ``all_reduce`` of a flat buffer before the optimizer step - what
DistributedDataParallel does, without its autograd hooks, which the
adaptive-grad weighting's extra ``autograd.grad`` passes would trip. Only
rank 0 writes state, logs and the checkpoint.

Budgets: ``steps`` and ``max_minutes``, whichever ends first; the learning
rate (linear warm-up, linear decay) reaches zero at that same end, by step or
by clock (:class:`~fashionbert.training.schedule.BudgetSchedule`), and a
resumed run spends the rest of its time budget, not a new one.
Resumable: every ``save_every`` steps the training state (weights,
optimizer, scheduler, RNG, step) is written atomically to
``OUT/train_state/``; a rerun with the same config continues from there and,
because batches are a pure function of (seed, step), reproduces the
uninterrupted run. The release checkpoint (``OUT/config.json``,
``model.safetensors``, tokenizer files, ``training_config.json``) is written
at the end, with the loss/weight log (``train_log.csv``) and its plot.

Continue-pretraining (:mod:`pipelines.continue_pretrain`) is this same loop
with three extra inputs: ``init_from`` (the checkpoint to start from),
``query_log`` (click-weighted queries as segment-Q texts) and replay data
(``replay_catalogs``/``replay_features``, mixed into every batch at
``replay_fraction``). Every checkpoint records the catalogs it was trained
on (``training_data`` in ``training_config.json``), inherited through
continue-pretraining, so the next continuation knows what to replay.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from fashionbert.configuration import DEFAULT_LEARNING_RATES, named_config
from fashionbert.encoder import FashionBert
from fashionbert.modeling import FashionBertModel
from fashionbert.pretraining import (
    DEFAULT_TIA_OTHER_SUB_SHARE,
    TASKS,
    MixedBatchSampler,
    PretrainCollator,
    PretrainCorpus,
    PretrainingTask,
    SubCategoryBatchSampler,
    queries_from_log,
)
from fashionbert.packaged import DEFAULT_TRUNKS, resolve_trunk
from fashionbert.precision import autocast, autocast_dtype, precision_name
from fashionbert.text import WholeWordMasker, grow_vocabulary, is_wordpiece, load_tokenizer, train_tokenizer
from fashionbert.training.loss_weighting import build_loss_weighting, combine
from fashionbert.training.schedule import BudgetSchedule
from indexer.catalog import read_catalog
from indexer.feature_store import FeatureStore

STATE_DIR = "train_state"
LOG_FILE = "train_log.csv"
# The view-to-view contrast's share when ITC is on (docs/design.md item 53; results.md, stops 25-27).
DEFAULT_VIEW_CONTRAST_SHARE = 0.25


TIA_PAIR_RANKINGS = ("off", "image", "both")


@dataclass
class PretrainConfig:
    catalog: Path
    features: Path
    out: Path
    model_config: str = "tiny"
    init_from: Path | None = None  # a FashionBERT checkpoint (continue-pretraining)
    bert_init: Path | str | None = None  # a plain BERT folder, or a packaged trunk's name ("minilm"), for the trunk
    tokenizer: Path | None = None
    extend_vocabulary: bool = True  # with bert_init: add the catalog's words its vocabulary lacks (e.g. Chinese)
    query_log: Path | None = None  # click log (query, product_id, clicks): more segment-Q texts
    replay_catalogs: tuple[Path, ...] = ()  # old training data mixed into every batch ...
    replay_features: tuple[Path, ...] = ()  # ... with their patch features (row-aligned with the catalogs)
    replay_fraction: float = 0.0  # share of each batch drawn from the replay data
    tasks: tuple[str, ...] = TASKS
    loss_weighting: str = "adaptive-grad"
    weighting_every: int = 10  # adaptive-grad: re-solve the weights every N steps (the gradient norms cost ~20 % a step)
    steps: int = 2000
    max_minutes: float | None = None
    batch_size: int = 64
    group_size: int = 4
    grad_accum: int = 1
    lr: float | None = None  # None: the named config's default (DEFAULT_LEARNING_RATES)
    weight_decay: float = 0.01
    warmup_steps: int = 100
    clip_norm: float = 1.0
    query_probability: float = 0.3
    mpm_probability: float = 0.1
    tia_negative_fraction: float = 0.5
    # of the pair rows' negatives: another sub-category's image (a --tia-grid group's negatives are its own)
    tia_other_sub_share: float = DEFAULT_TIA_OTHER_SUB_SHARE
    clean_fraction: float = 0.0  # rows left unmasked for TIA; 0 = FashionBERT's single corrupted pass
    tia_clean_only: bool = True  # with clean_fraction > 0: TIA scores the clean rows only (False: every row)
    tia_negatives: str = "sub-category"  # or "itc-hard": negatives drawn by ITC similarity (ALBEF)
    tia_hard_share: float = 1.0  # itc-hard: share of the negative rows re-drawn; the rest keep a random one
    # rank each TIA negative below the matched row it shares a side with: "off"; "image" (today's negatives,
    # those that show a matched row's picture); "both" (every negative partners a matched row, half by its
    # picture, half by its text: PretrainCollator(tia_partnered=True))
    tia_pair_ranking: str = "off"
    attribute_twins: bool = False  # products with the same catalog attributes are not each other's negatives
    tia_grid: int = 0  # G >= 2: TIA ranks each text against G same-sub-category images and back (collator's grid)
    main_view_share: float = 1.0  # rows showing the listing's main photo; the rest draw any view (docs/design.md item 49)
    # rows that also contrast another photo of their listing (item 53); None: 0.25 when itc is on, else 0
    view_contrast_share: float | None = None
    seed: int = 0
    device: str = "auto"
    # matmuls in bf16 where the device has it natively (a GPU; a CPU with AVX512-BF16/AMX), else fp32
    # (fashionbert/precision.py); the record stores what ran; a resume may change it
    precision: str = "auto"
    save_every: int = 200
    log_every: int = 10
    vocab_size: int = 8000
    user_words: tuple[str, ...] = field(default_factory=tuple)
    model_overrides: dict = field(default_factory=dict)  # e.g. a smaller trunk in tests
    stop_at_step: int | None = None  # stop (as if killed) right after this step's state save; tests only

    def resolved(self) -> PretrainConfig:
        """This config with its automatic defaults decided, so the training record holds what ran.

        The view-to-view contrast is matched beside ITC's image side (same temperature, same
        image-only encoder), so a run without ITC cannot have it: the default follows the tasks,
        while an explicit share with ITC off stays an error (``pretrain``).
        """
        if self.view_contrast_share is not None:
            return self
        return replace(self, view_contrast_share=DEFAULT_VIEW_CONTRAST_SHARE if "itc" in self.tasks else 0.0)

    def fingerprint(self) -> dict:
        """What must match for a resume to be a true continuation."""
        d = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        for k in ("max_minutes", "device", "precision", "save_every", "log_every", "steps", "stop_at_step"):
            d.pop(k)
        if not self.clean_fraction:  # no clean rows: TIA scores every row either way, and a state saved
            d.pop("tia_clean_only")  # before the setting existed still resumes
        if self.tia_pair_ranking == "off":  # changes no step: a state saved before the option existed resumes
            d.pop("tia_pair_ranking")
        return d


@dataclass
class PretrainResult:
    checkpoint: Path
    steps_done: int
    resumed_from: int
    seconds: float
    samples_per_second: float
    last_losses: dict[str, float]
    last_weights: dict[str, float]
    stopped_by: str
    precision: str = "fp32"  # what the matmuls ran in (PretrainConfig.precision resolved on the device)


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _dist_setup(device_name: str) -> tuple[_Dist, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return _Dist(rank, world), torch.device("cuda", local)
    return _Dist(rank, world), torch.device("cpu" if device_name == "auto" else device_name)


def _all_reduce_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Average gradients over ranks in one collective; a missing grad counts as zero on that rank."""
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def trunk_source(cfg: PretrainConfig) -> Path | None:
    """The BERT folder the trunk starts from: ``bert_init`` (a path or a packaged name), else the
    named config's packaged default (``small`` -> MiniLM-L6), unless continuing from a checkpoint."""
    if cfg.init_from is not None:
        return None
    source = cfg.bert_init if cfg.bert_init is not None else DEFAULT_TRUNKS.get(cfg.model_config)
    return resolve_trunk(source) if source is not None else None


def _tokenizer(cfg: PretrainConfig, catalog_texts: Callable[[], list[str]], echo: Callable[[str], None]):
    if cfg.tokenizer is not None:
        return load_tokenizer(cfg.tokenizer)
    if cfg.init_from is not None:
        return load_tokenizer(cfg.init_from)
    if (trunk := trunk_source(cfg)) is not None:
        return load_tokenizer(trunk)
    texts = catalog_texts()
    echo(f"pretrain: no tokenizer given, training a WordPiece vocabulary on {len(texts)} catalog texts")
    return train_tokenizer(texts, vocab_size=cfg.vocab_size)


def training_data(cfg: PretrainConfig) -> list[dict[str, str]]:
    """Every (catalog, features) pair the weights have seen: the start checkpoint's, then this run's."""
    seen = recorded_training_data(cfg.init_from) if cfg.init_from is not None else []
    this = {"catalog": str(Path(cfg.catalog).resolve()), "features": str(Path(cfg.features).resolve())}
    return [d for d in seen if d != this] + [this]


TRAINING_RECORD = "training_config.json"


def training_record(checkpoint: Path) -> dict:
    """What a release checkpoint recorded about its training (``{}`` when it recorded nothing)."""
    path = Path(checkpoint) / TRAINING_RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def recorded_training_data(checkpoint: Path) -> list[dict[str, str]]:
    """The ``training_data`` a checkpoint recorded (older checkpoints: their one catalog, if recorded)."""
    info = training_record(checkpoint)
    if "training_data" in info:
        return list(info["training_data"])
    training = info.get("training", {})
    if info.get("catalog") and training.get("features"):
        return [{"catalog": info["catalog"], "features": str(Path(training["features"]).resolve())}]
    return []


def build_corpus(cfg: PretrainConfig, catalog, store: FeatureStore, echo: Callable[[str], None]):
    """The training corpus and its batch sampler: the catalog (+ click log), mixed with replay data when asked."""
    log = None
    if cfg.query_log is not None:
        import pyarrow.parquet as pq

        if not Path(cfg.query_log).is_file():
            raise FileNotFoundError(f"query log not found: {cfg.query_log}")
        log = queries_from_log(pq.read_table(cfg.query_log), set(catalog.product_ids))
        echo(f"pretrain: query log {cfg.query_log}: {sum(len(v) for v in log.values())} (query, product) pairs "
             f"for {len(log)} products")
    corpus = PretrainCorpus.from_catalog(catalog, store, query_log=log)
    subs = [r.sub_category for r in corpus.records]
    if cfg.replay_fraction <= 0 or not cfg.replay_catalogs:
        return corpus, SubCategoryBatchSampler(subs, cfg.batch_size, cfg.group_size, cfg.seed)
    if len(cfg.replay_catalogs) != len(cfg.replay_features):
        raise ValueError("replay_catalogs and replay_features must pair up")
    n_new = len(corpus)
    for cat_path, feat_path in zip(cfg.replay_catalogs, cfg.replay_features):
        replay_store = FeatureStore(feat_path)
        if replay_store.feature_dim != store.feature_dim:
            raise ValueError(f"replay features {feat_path} are {replay_store.feature_dim}-d but {cfg.features} are "
                             f"{store.feature_dim}-d: extract both with the same image encoder")
        replay = PretrainCorpus.from_catalog(read_catalog(cat_path, check_images="none"), replay_store)
        corpus = PretrainCorpus.concat(corpus, replay)
    echo(f"pretrain: {n_new} new products, {len(corpus) - n_new} replay products "
         f"({cfg.replay_fraction:.0%} of every batch)")
    replay_subs = [r.sub_category for r in corpus.records[n_new:]]
    return corpus, MixedBatchSampler(subs, replay_subs, cfg.batch_size, cfg.replay_fraction, cfg.group_size, cfg.seed)


def image_fields(feature_info: dict) -> dict[str, str]:
    """The image encoder and patch mode the features were made with, for the model's config.

    Recorded so that the indexer and the search API extract a catalog's and a shopper's photos
    with the CNN the checkpoint was trained on, without being told.
    """
    made_with = feature_info.get("config") or {}
    return {key: made_with[source] for key, source in (("image_encoder", "encoder"), ("patch_mode", "mode"))
            if made_with.get(source)}


def build_model(cfg: PretrainConfig, tokenizer, store: FeatureStore, catalog_texts: Callable[[], list[str]],
                echo: Callable[[str], None]) -> tuple[FashionBertModel, Any]:
    """The model and the tokenizer it reads (grown when a packaged vocabulary lacks the catalog's words)."""
    feature_dim = store.feature_dim
    overrides = {**image_fields(store.info), **cfg.model_overrides}
    if cfg.init_from is not None:
        model = FashionBert.from_pretrained(cfg.init_from).model
        if model.config.patch_feature_dim != feature_dim:
            made_with = overrides.get("image_encoder", "another image encoder")
            raise ValueError(f"{cfg.init_from} expects {model.config.patch_feature_dim}-d patch features "
                             f"({model.config.image_encoder}), got {feature_dim}-d ({made_with}) from {cfg.features}")
        return model, tokenizer
    if (trunk := trunk_source(cfg)) is not None:
        fb, report = FashionBert.from_bert(trunk, feature_dim, tokenizer, **overrides)
        echo(f"pretrain: trunk from {trunk}: {len(report['loaded'])} tensors loaded, "
             f"{len(report['initialised'])} initialised ({', '.join(sorted({k.split('.')[0] for k in report['initialised']}))})")
        if cfg.extend_vocabulary and cfg.tokenizer is None and is_wordpiece(tokenizer):
            # An English vocabulary maps every Chinese character to [UNK]: the catalog's missing words
            # become whole tokens, starting from the mean of the pieces (or [UNK]) they replace.
            tokenizer, added = grow_vocabulary(fb.model, tokenizer, catalog_texts())
            if added:
                echo(f"pretrain: vocabulary +{len(added)} catalog words ({', '.join(added[:10])}"
                     f"{' ...' if len(added) > 10 else ''})")
        return fb.model, tokenizer
    return FashionBertModel(named_config(cfg.model_config, tokenizer, feature_dim, **overrides)), tokenizer


def _save_state(out: Path, step: int, model, optimizer, scheduler, weighting, cfg: PretrainConfig) -> None:
    tmp = out / f".{STATE_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "weighting": weighting.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "fingerprint": cfg.fingerprint(),
    }, tmp / "state.pt")
    final = out / STATE_DIR
    old = out / f".{STATE_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)  # the swap is two renames; a kill between them leaves .old, used below
    shutil.rmtree(old, ignore_errors=True)


def _load_state(out: Path) -> dict | None:
    for name in (STATE_DIR, f".{STATE_DIR}.old"):
        path = out / name / "state.pt"
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=False)
    return None


def _differences(recorded: dict, now: dict) -> str:
    """``key: recorded -> now`` for each setting a resume would change (a default may have moved since)."""
    keys = sorted(k for k in recorded.keys() | now.keys() if recorded.get(k) != now.get(k))
    return ", ".join(f"{k}: {recorded.get(k)!r} -> {now.get(k)!r}" for k in keys)


def pretrain(cfg: PretrainConfig, echo: Callable[[str], None] = print, progress: bool = True) -> PretrainResult:
    start = time.perf_counter()
    cfg = cfg.resolved()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _seed_all(cfg.seed)
    ddp, device = _dist_setup(cfg.device)
    amp_dtype = autocast_dtype(cfg.precision, device)  # an unknown precision fails here, before any data is read
    if not ddp.main:
        echo = lambda _msg: None  # noqa: E731 - one voice per job

    catalog = read_catalog(cfg.catalog, check_images="none")
    store = FeatureStore(cfg.features)
    corpus, sampler = build_corpus(cfg, catalog, store, echo)
    tokenizer = _tokenizer(cfg, catalog.texts, echo)
    model, tokenizer = build_model(cfg, tokenizer, store, catalog.texts, echo)
    model = model.to(device)
    model.train()
    # fp16 (a GPU without bf16) needs its losses scaled so small gradients survive; bf16 and fp32 do not
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    echo(f"pretrain: {precision_name(amp_dtype)} matmuls on {device}")
    if cfg.tia_grid and cfg.tia_negatives != "sub-category":
        raise ValueError("--tia-grid draws its negatives from each group's sub-category; drop --tia-negatives")
    if cfg.tia_grid and cfg.attribute_twins:
        raise ValueError("--tia-grid ranks every image of a group, twins included; drop --attribute-twins")
    if cfg.tia_hard_share < 1.0 and cfg.tia_negatives != "itc-hard":
        raise ValueError("--tia-hard-share is the share of ITC-mined negatives: it needs --tia-negatives itc-hard")
    if cfg.view_contrast_share and "itc" not in cfg.tasks:
        raise ValueError("--view-contrast-share contrasts image-only encodings beside ITC's: keep the itc task on")
    if cfg.tia_pair_ranking not in TIA_PAIR_RANKINGS:
        raise ValueError(f"--tia-pair-ranking must be one of {TIA_PAIR_RANKINGS}, got {cfg.tia_pair_ranking!r}")
    if cfg.tia_grid and cfg.tia_pair_ranking != "off":
        raise ValueError("--tia-grid already ranks every text and image of its groups; drop --tia-pair-ranking")
    task = PretrainingTask(model, cfg.tasks, cfg.tia_negatives, cfg.tia_hard_share, cfg.tia_pair_ranking != "off")
    weighting = build_loss_weighting(
        cfg.loss_weighting, **({"every": cfg.weighting_every * cfg.grad_accum} if cfg.loss_weighting == "adaptive-grad" else {}))
    masker = WholeWordMasker(tokenizer, user_words=cfg.user_words, seed=cfg.seed)
    collator = PretrainCollator(
        corpus, masker, max_text_length=model.config.max_text_length, num_patches=model.config.num_patches,
        mpm_probability=cfg.mpm_probability, tia_negative_fraction=cfg.tia_negative_fraction,
        query_probability=cfg.query_probability, clean_fraction=cfg.clean_fraction, tia_grid=cfg.tia_grid,
        tia_clean_only=cfg.tia_clean_only,
        seed=cfg.seed, main_view_share=cfg.main_view_share, view_contrast_share=cfg.view_contrast_share,
        attribute_twins=cfg.attribute_twins, tia_other_sub_share=cfg.tia_other_sub_share,
        tia_partnered=cfg.tia_pair_ranking == "both",
    )
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embeddings" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embeddings" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr if cfg.lr is not None else DEFAULT_LEARNING_RATES.get(cfg.model_config, 5e-4),
    )
    scheduler = BudgetSchedule(optimizer, cfg.steps, cfg.warmup_steps,
                               cfg.max_minutes * 60 if cfg.max_minutes else None, started=start)

    step = 0
    if ddp.world > 1:
        dist.barrier()  # every rank sees the same saved state
    state = _load_state(out)
    if state is not None:
        if state["fingerprint"] != cfg.fingerprint():
            raise ValueError(f"{out} holds a training run with another configuration ({_differences(state['fingerprint'], cfg.fingerprint())}); "
                             f"pass the recorded values to resume it, or choose another --out or delete {out / STATE_DIR}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "weighting" in state:
            weighting.load_state_dict(state["weighting"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        step = int(state["step"])
        echo(f"pretrain: resuming from step {step}")
    resumed_from = step
    log_path = out / LOG_FILE
    log_rows = _read_log(log_path, up_to_step=step)

    shared = task.shared_parameters()
    losses_f: dict[str, float] = {}
    weights_f: dict[str, float] = {}
    stopped_by = "steps"
    samples = 0
    loop_start = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    with tqdm(total=cfg.steps, initial=step, unit="step", desc="pretrain", disable=not (progress and ddp.main)) as bar:
        while step < cfg.steps:
            elapsed = scheduler.elapsed()
            if ddp.world > 1:  # every rank must stop at the same step and decay its learning rate alike
                agreed = torch.tensor([elapsed], dtype=torch.float64, device=device)
                dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
                elapsed = float(agreed.item())
            if scheduler.out_of_time(elapsed):
                stopped_by = "max_minutes"
                break
            optimizer.zero_grad(set_to_none=True)
            losses_f, stats = {}, {}
            for micro in range(cfg.grad_accum):
                global_step = step * cfg.grad_accum + micro
                batch = collator(sampler.batch(global_step)[ddp.rank :: ddp.world], global_step)
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                with autocast(device, amp_dtype):
                    losses, stats = task(batch)
                weights = weighting(losses, shared if cfg.loss_weighting == "adaptive-grad" else None)
                scaler.scale(combine(losses, weights) / cfg.grad_accum).backward()
                for k, v in losses.items():
                    losses_f[k] = losses_f.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
                weights_f = {k: float(v) for k, v in weights.items()}
                samples += len(batch["tia_labels"]) * ddp.world
            if ddp.world > 1:
                _all_reduce_gradients(params, ddp.world)
            scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm))
            scaler.step(optimizer)
            scaler.update()
            scheduler.step(elapsed)
            step += 1
            rate = samples / max(1e-9, time.perf_counter() - loop_start)
            row = {"step": step, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm, "samples_per_s": rate,
                   **{f"loss.{k}": v for k, v in losses_f.items()}, **{f"w.{k}": v for k, v in weights_f.items()},
                   **{f"stat.{k}": v for k, v in stats.items()}}
            log_rows.append(row)
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                bar.set_postfix({**{k: f"{v:.3f}" for k, v in losses_f.items()},
                                 **{f"w_{k}": f"{v:.2f}" for k, v in weights_f.items()}, "samples/s": f"{rate:.1f}"})
            if ddp.main and (step % cfg.save_every == 0 or step == cfg.stop_at_step):
                _save_state(out, step, model, optimizer, scheduler, weighting, cfg)
                _write_log(log_path, log_rows)
            if step == cfg.stop_at_step:
                return PretrainResult(out, step, resumed_from, time.perf_counter() - start, 0.0, losses_f, weights_f, "stop_at_step",
                                     precision_name(amp_dtype))
    if ddp.world > 1:  # the all-reduce keeps replicas identical; check it rather than trust it
        checksum = torch.stack([p.detach().double().sum() for p in params]).sum().reshape(1)
        gathered = [torch.zeros_like(checksum) for _ in range(ddp.world)]
        dist.all_gather(gathered, checksum)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError(f"model replicas diverged across ranks: {[float(g) for g in gathered]}")
    if ddp.main:
        if step > resumed_from:
            _save_state(out, step, model, optimizer, scheduler, weighting, cfg)
        _write_log(log_path, log_rows)
        _plot_log(log_rows, out / "train_log.png")
        extra = {"training": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
                 "steps_done": step, "stopped_by": stopped_by, "precision_used": precision_name(amp_dtype), "world_size": ddp.world,
                 "catalog": str(Path(cfg.catalog).resolve()), "features_info": store.info,
                 "training_data": training_data(cfg)}
        FashionBert(model.eval().cpu(), tokenizer).save_pretrained(out, extra=extra)
    if ddp.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    seconds = time.perf_counter() - start
    return PretrainResult(out, step, resumed_from, seconds, samples / max(1e-9, time.perf_counter() - loop_start),
                          losses_f, weights_f, stopped_by, precision_name(amp_dtype))


def _read_log(path: Path, up_to_step: int) -> list[dict]:
    if not path.is_file() or up_to_step == 0:
        return []
    with path.open() as fh:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh) if int(float(row["step"])) <= up_to_step]


def _write_log(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _plot_log(rows: list[dict], path: Path) -> None:
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (ax_loss, ax_w) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted({k for r in rows for k in r if k.startswith("loss.")}):
        ax_loss.plot(steps, [r.get(key, np.nan) for r in rows], label=key[5:])
    for key in sorted({k for r in rows for k in r if k.startswith("w.")}):
        ax_w.plot(steps, [r.get(key, np.nan) for r in rows], label=key[2:])
    ax_loss.set(title="losses", xlabel="step", yscale="log")
    ax_w.set(title="loss weights ω", xlabel="step")
    ax_loss.legend()
    ax_w.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
