"""``Tagger``: FashionBERT trunk + tag head + vocabulary + tokenizer, saved as one directory.

The trunk reads each (title, view) pair as ONE joint ``[CLS] title [SEP] patches`` pass, so
token and patch states have already attended to each other when the head's co-attention
looks at them; the output's ``text_length`` splits the sequence back into the two parts.
A product without an image gets zero patch features with the patch mask off (no token
attends to them, the head masks them); a product without a title gets an empty text, i.e.
just ``[CLS] [SEP]``. Either way the other modality alone still yields tags.

Directory layout (self-contained, so a tagger keeps working when the pretraining run it
came from is deleted or retrained)::

    tagger_config.json   TaggerConfig (written last: its presence means the save finished)
    head.safetensors     the head's weights
    tags.json            the vocabulary with counts
    trunk/               the FashionBERT checkpoint (config.json, model.safetensors, tokenizer)
    tagger_info.json     how it was trained (catalog, features, checkpoint, budgets, history)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fashionbert.encoder import FashionBert
from fashionbert.tagging.config import CONFIG_FILE, TaggerConfig
from fashionbert.tagging.model import HeadInputs, TaggerHead
from fashionbert.tagging.vocabulary import VOCAB_FILE, TagVocabulary

HEAD_FILE = "head.safetensors"
INFO_FILE = "tagger_info.json"
TRUNK_DIR = "trunk"

Views = np.ndarray | torch.Tensor | None


class TaggerNotFoundError(FileNotFoundError):
    """The tagger directory is missing or incomplete."""


@dataclass
class ProductStates:
    """One product's trunk states without padding (what the frozen-trunk cache keeps)."""

    text: torch.Tensor  # [V, T, H]
    patches: torch.Tensor | None  # [V, P, H]; None: no image


def as_views(views: Views, max_views: int, num_patches: int, feature_dim: int) -> np.ndarray | None:
    """[V, P, D] float32 of at most ``max_views`` views, or None for a product without an image."""
    if views is None:
        return None
    arr = views.detach().cpu().numpy() if isinstance(views, torch.Tensor) else np.asarray(views)
    if arr.size == 0:
        return None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (num_patches, feature_dim):
        raise ValueError(f"patch features must be [views, {num_patches}, {feature_dim}] (the trunk's patch_feature_dim), "
                         f"got {list(arr.shape)}: were they extracted with another image encoder?")
    return arr[:max_views].astype(np.float32, copy=False)


PASSES = ("joint", "separate")


def encode_states(trunk: FashionBert, titles: Sequence[str | None], views: Sequence[Views], max_views: int,
                  passes: str = "joint") -> HeadInputs:
    """Trunk states of every (title, view) pair, padded into the head's [B, V, ...] layout.

    ``passes="joint"``: one ``[CLS] title [SEP] patches`` pass, tokens and patches have already
    attended to each other. ``"separate"``: a text-only pass and an image-only pass (the
    ``[CLS] [SEP] patches`` sequence the index's image vectors come from), so nothing crosses
    between the modalities before the head - what a late-fusion model must be fed.
    Differentiable w.r.t. the trunk (the caller picks no_grad for a frozen trunk).
    """
    if passes not in PASSES:
        raise ValueError(f"passes must be one of {PASSES}, got {passes!r}")
    if len(titles) != len(views):
        raise ValueError(f"{len(titles)} titles but {len(views)} view sets: they must pair up")
    cfg = trunk.config
    p, d, device = cfg.num_patches, cfg.patch_feature_dim, trunk.device
    texts, feats, owner, slot = [], [], [], []
    for b, (title, v) in enumerate(zip(titles, views)):
        arr = as_views(v, max_views, p, d)
        for j, f in enumerate([None] if arr is None else list(arr)):
            texts.append(" ".join((title or "").split()))
            feats.append(f)
            owner.append(b)
            slot.append(j)
    n, bsz, nv = len(texts), len(titles), max(slot) + 1 if slot else 1
    tok = trunk.tokenize(texts, "T")
    has = torch.tensor([f is not None for f in feats], dtype=torch.bool)
    patches_in = torch.zeros((n, p, d), dtype=torch.float32)
    if has.any():
        patches_in[has] = torch.from_numpy(np.stack([f for f in feats if f is not None]))
    if passes == "joint":
        out = trunk.model(**tok, patch_features=patches_in.to(device), patch_attention_mask=has.long().to(device))
        t = out.text_length
        text_hidden, patch_hidden = out.last_hidden_state[:, :t].float(), out.last_hidden_state[:, t:].float()
    else:
        text_hidden = trunk.model(**tok).last_hidden_state.float()
        t = text_hidden.shape[1]
        patch_hidden = text_hidden.new_zeros(n, p, text_hidden.shape[-1])
        if has.any():  # "[CLS] [SEP] patches": the states after the two markers
            image = trunk.model.encode_image_only(patches_in[has].to(device)).last_hidden_state[:, 2:].float()
            patch_hidden[has.to(device)] = image
    h = text_hidden.shape[-1]
    index = (torch.tensor(owner) * nv + torch.tensor(slot)).to(device)
    text = text_hidden.new_zeros(bsz * nv, t, h).index_copy(0, index, text_hidden)
    patches = text_hidden.new_zeros(bsz * nv, p, h).index_copy(0, index, patch_hidden)
    tmask = torch.zeros(bsz * nv, t, dtype=torch.bool, device=device)
    tmask[index] = tok["attention_mask"].bool()
    pmask = torch.zeros(bsz * nv, p, dtype=torch.bool, device=device)
    pmask[index] = has.to(device).unsqueeze(1).expand(n, p)
    vmask = torch.zeros(bsz * nv, dtype=torch.bool, device=device)
    vmask[index] = True
    return HeadInputs(text.view(bsz, nv, t, h), tmask.view(bsz, nv, t), patches.view(bsz, nv, p, h),
                      pmask.view(bsz, nv, p), vmask.view(bsz, nv))


def split_states(x: HeadInputs, dtype: torch.dtype = torch.float16) -> list[ProductStates]:
    """Undo the padding of :func:`encode_states` (detached, on the CPU, in ``dtype`` to halve a cache)."""
    out = []
    for b in range(x.batch_size):
        v = int(x.view_mask[b].sum())
        t = int(x.text_mask[b, 0].sum())
        has_image = bool(x.patch_mask[b, :v].any())
        out.append(ProductStates(
            x.text[b, :v, :t].detach().to("cpu", dtype).clone(),
            x.patches[b, :v].detach().to("cpu", dtype).clone() if has_image else None,
        ))
    return out


def collate_states(items: Sequence[ProductStates], num_patches: int, device: torch.device | str = "cpu") -> HeadInputs:
    """Pad cached product states into one float32 batch for the head."""
    if not items:
        raise ValueError("no products to collate")
    h = items[0].text.shape[-1]
    bsz, nv, t = len(items), max(i.text.shape[0] for i in items), max(i.text.shape[1] for i in items)
    text = torch.zeros(bsz, nv, t, h)
    patches = torch.zeros(bsz, nv, num_patches, h)
    tmask = torch.zeros(bsz, nv, t, dtype=torch.bool)
    pmask = torch.zeros(bsz, nv, num_patches, dtype=torch.bool)
    vmask = torch.zeros(bsz, nv, dtype=torch.bool)
    for b, item in enumerate(items):
        v, tl = item.text.shape[:2]
        text[b, :v, :tl] = item.text.float()
        tmask[b, :v, :tl] = True
        vmask[b, :v] = True
        if item.patches is not None:
            patches[b, :v] = item.patches.float()
            pmask[b, :v] = True
    return HeadInputs(text, tmask, patches, pmask, vmask).to(device)


def _sha256(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def tagger_version(directory: str | Path) -> str:
    """Short hash of a saved tagger's weights, vocabulary and trunk: what the API reports and caches key on."""
    directory = Path(directory)
    return _sha256([directory / HEAD_FILE, directory / VOCAB_FILE, directory / TRUNK_DIR / "model.safetensors"])[:12]


class Tagger:
    """Tags from a product's title and photos: ``predict(titles, views, k)``."""

    def __init__(self, trunk: FashionBert, head: TaggerHead, vocabulary: TagVocabulary, config: TaggerConfig,
                 info: dict[str, Any] | None = None, name: str = "tagger", version: str = ""):
        if config.num_tags != len(vocabulary):
            raise ValueError(f"the head predicts {config.num_tags} tags but the vocabulary has {len(vocabulary)}")
        self.trunk = trunk
        self.head = head.to(trunk.device)
        self.vocabulary = vocabulary
        self.config = config
        self.info = info or {}
        self.name = name
        self.version = version

    @classmethod
    def create(cls, trunk: FashionBert, vocabulary: TagVocabulary, config: TaggerConfig | None = None,
               seed: int = 0) -> Tagger:
        """A fresh head (seeded) on ``trunk`` for ``vocabulary``; sizes are filled into the config."""
        config = TaggerConfig.from_dict({**(config or TaggerConfig()).to_dict(), "hidden_size": trunk.config.hidden_size,
                                         "num_tags": len(vocabulary)})
        torch.manual_seed(seed)
        return cls(trunk, TaggerHead(config), vocabulary, config)

    @property
    def device(self) -> torch.device:
        return self.trunk.device

    @property
    def tokenizer(self):
        return self.trunk.tokenizer

    @property
    def feature_dim(self) -> int:
        return int(self.trunk.config.patch_feature_dim)

    # ------------------------------------------------------------------ inference
    def encode(self, titles: Sequence[str | None], views: Sequence[Views]) -> HeadInputs:
        return encode_states(self.trunk, titles, views, self.config.max_views, self.config.trunk_passes)

    def eval(self) -> Tagger:
        self.trunk.model.eval()
        self.head.eval()
        return self

    @torch.inference_mode()
    def scores(self, titles: Sequence[str | None], views: Sequence[Views], batch_size: int = 32) -> np.ndarray:
        """Sigmoid probability of every vocabulary tag: float32 [n_products, n_tags]."""
        self.eval()
        parts = [torch.sigmoid(self.head(self.encode(titles[i:i + batch_size], views[i:i + batch_size]))).float().cpu()
                 for i in range(0, len(titles), batch_size)]
        return torch.cat(parts).numpy() if parts else np.zeros((0, len(self.vocabulary)), np.float32)

    def predict(self, titles: Sequence[str | None], views: Sequence[Views], k: int = 5,
                batch_size: int = 32) -> list[list[tuple[str, float]]]:
        """The ``k`` best tags of each product with their probabilities, best first."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        probs = self.scores(titles, views, batch_size)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[(self.vocabulary.tags[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path, info: dict[str, Any] | None = None) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).unlink(missing_ok=True)  # an interrupted save must not look finished
        self.trunk.save_pretrained(directory / TRUNK_DIR)
        state = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(state, str(directory / HEAD_FILE))
        self.vocabulary.save(directory)
        if info is not None:
            self.info = info
        (directory / INFO_FILE).write_text(json.dumps(self.info, indent=2, ensure_ascii=False, default=str))
        self.config.save(directory)
        self.name, self.version = directory.resolve().name, tagger_version(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> Tagger:
        directory = Path(directory)
        if not directory.is_dir():
            raise TaggerNotFoundError(f"tagger directory not found: {directory} (train one with `fashionbert tags train`)")
        for name in (CONFIG_FILE, HEAD_FILE, VOCAB_FILE, f"{TRUNK_DIR}/model.safetensors"):
            if not (directory / name).is_file():
                raise TaggerNotFoundError(f"{directory} is not a complete tagger directory (no {name})")
        config = TaggerConfig.load(directory)
        vocabulary = TagVocabulary.load(directory)
        trunk = FashionBert.from_pretrained(directory / TRUNK_DIR, device=device)
        if trunk.config.hidden_size != config.hidden_size:
            raise ValueError(f"{directory}: the head expects hidden size {config.hidden_size}, the trunk has "
                             f"{trunk.config.hidden_size}")
        head = TaggerHead(config)
        head.load_state_dict(load_file(str(directory / HEAD_FILE)))
        info_path = directory / INFO_FILE
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        return cls(trunk, head, vocabulary, config, info, directory.resolve().name, tagger_version(directory)).eval()
