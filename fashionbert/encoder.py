"""The model API everything else uses: texts and patch features in, numpy out.

:class:`FashionBert` pairs a :class:`FashionBertModel` with its tokenizer and
device. It hides tokenisation, batching, segments and dtypes so the indexer,
the search service and the evaluation never touch tensors:

* ``encode_text(texts, segment)``, ``encode_images(feats)``,
  ``encode_products(titles, feats)`` -> L2-normalised float32 vectors (ITC);
* ``score_pairs(texts, feats)`` -> TIA matching probability (the re-ranker);
* ``attention_map(text, feats)`` -> 8x8 text->patch attention (demo heatmap).

Checkpoints are HF-style directories: ``config.json``, ``model.safetensors``
and the tokenizer files side by side.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import BertModel, PreTrainedTokenizerFast

from fashionbert.configuration import SEGMENTS, FashionBertConfig
from fashionbert.modeling import FashionBertModel
from fashionbert.precision import autocast, autocast_dtype, precision_name
from fashionbert.reranking import match_probability
from fashionbert.text import load_tokenizer


class CheckpointError(FileNotFoundError):
    """A checkpoint directory is missing or incomplete."""


def _as_tensor(features: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    return t.to(device=device, dtype=torch.float32)


class FashionBert:
    """A FashionBERT model ready for inference (and the object training saves)."""

    def __init__(self, model: FashionBertModel, tokenizer: PreTrainedTokenizerFast, device: str | torch.device = "cpu",
                 precision: str = "fp32"):
        """``precision``: the trunk's matmuls in fp32 (the default: the figures of docs/results.md), or ``auto``/``bf16``
        (:mod:`fashionbert.precision`); the heads, the vectors and the scores stay float32 either way."""
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.model.to(self.device)
        self.precision = precision
        self._amp_dtype = autocast_dtype(precision, self.device)

    @property
    def config(self) -> FashionBertConfig:
        return self.model.config

    @property
    def matmul_precision(self) -> str:
        """What the trunk's matmuls run in here: ``precision`` resolved on this device (fp32, bf16 or fp16)."""
        return precision_name(self._amp_dtype)

    @property
    def logit_scale(self) -> float:
        """ITC's learnt inverse temperature: how many nats a unit of cosine is worth (the fused re-rank score's scale)."""
        return float(self.model.temperature_scale().detach())

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write config.json + model.safetensors + tokenizer files (+ ``training_config.json`` from ``extra``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        if extra is not None:
            (directory / "training_config.json").write_text(json.dumps(extra, indent=2, ensure_ascii=False, default=str))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu", precision: str = "fp32") -> FashionBert:
        directory = Path(directory)
        if not (directory / "config.json").is_file() or not (directory / "model.safetensors").is_file():
            raise CheckpointError(f"{directory} is not a FashionBERT checkpoint (needs config.json and model.safetensors)")
        model = FashionBertModel.from_pretrained(directory, local_files_only=True)
        model.eval()
        return cls(model, load_tokenizer(directory), device, precision)

    @classmethod
    def from_bert(
        cls,
        bert_directory: str | Path,
        patch_feature_dim: int,
        tokenizer: PreTrainedTokenizerFast | None = None,
        **config_overrides: object,
    ) -> tuple[FashionBert, dict[str, list[str]]]:
        """Initialise the trunk from a plain BERT folder (bert-base-chinese, MiniLM, ...).

        The image projection, patch positions and all heads start fresh; a 2-row segment table
        is widened to 3 rows with the new Q row copied from T (queries are text). Returns the
        model and a report of which weights were loaded and which were initialised.
        """
        bert_directory = Path(bert_directory)
        if not (bert_directory / "config.json").is_file():
            raise CheckpointError(f"{bert_directory} is not a BERT folder (no config.json)")
        bert = BertModel.from_pretrained(bert_directory, local_files_only=True, add_pooling_layer=True)
        tok = tokenizer if tokenizer is not None else load_tokenizer(bert_directory)
        fields = {k: v for k, v in bert.config.to_dict().items() if k in FashionBertConfig().to_dict()}
        fields.pop("model_type", None)
        fields.update(
            type_vocab_size=3, patch_feature_dim=patch_feature_dim, pad_token_id=tok.pad_token_id,
            cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id, tia_match_features=True,
        )
        fields.update(config_overrides)
        model = FashionBertModel(FashionBertConfig(**fields))
        state = bert.state_dict()
        types = state["embeddings.token_type_embeddings.weight"]
        if types.shape[0] < 3:
            rows = [types[i] if i < types.shape[0] else types[0] for i in range(3)]
            state["embeddings.token_type_embeddings.weight"] = torch.stack(rows)
        result = model.bert.load_state_dict(state, strict=False)
        model.tie_weights()
        loaded = sorted(f"bert.{k}" for k in state if k not in result.unexpected_keys)
        fresh = sorted(k for k in model.state_dict() if k not in loaded)
        return cls(model, tok), {"loaded": loaded, "initialised": fresh, "ignored": sorted(result.unexpected_keys)}

    # ------------------------------------------------------------------ inputs
    def tokenize(self, texts: Sequence[str], segment: str = "T") -> dict[str, torch.Tensor]:
        if segment not in SEGMENTS:
            raise ValueError(f"segment must be one of {sorted(SEGMENTS)}, not {segment!r}")
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.config.max_text_length,
            return_tensors="pt", return_token_type_ids=False,
        )
        ids = enc["input_ids"].to(self.device)
        return {
            "input_ids": ids,
            "attention_mask": enc["attention_mask"].to(self.device),
            "token_type_ids": torch.full_like(ids, SEGMENTS[segment]),
        }

    # ------------------------------------------------------------------ inference API
    def _batched(self, n: int, batch_size: int, step: Callable[[slice], torch.Tensor]) -> torch.Tensor | None:
        """Run ``step`` over consecutive slices of ``n`` inputs in eval mode; None when there are none."""
        self.model.eval()
        with autocast(self.device, self._amp_dtype):
            parts = [step(slice(i, i + batch_size)) for i in range(0, n, batch_size)]
        return torch.cat(parts).float().cpu() if parts else None

    def _vectors(self, result: torch.Tensor | None) -> np.ndarray:
        return result.numpy() if result is not None else np.zeros((0, self.config.itc_dim), np.float32)

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], segment: str = "Q", batch_size: int = 128) -> np.ndarray:
        return self._vectors(self._batched(
            len(texts), batch_size, lambda s: self.model.itc_embedding(self.model(**self.tokenize(texts[s], segment)))
        ))

    @torch.inference_mode()
    def encode_images(self, patch_features: np.ndarray | torch.Tensor, batch_size: int = 128) -> np.ndarray:
        return self._vectors(self._batched(
            len(patch_features), batch_size,
            lambda s: self.model.itc_embedding(self.model.encode_image_only(_as_tensor(patch_features[s], self.device))),
        ))

    def _joint(self, texts: Sequence[str], patch_features: np.ndarray | torch.Tensor, s: slice, segment: str):
        """``[CLS] text [SEP] patches`` for one slice of aligned texts and images."""
        return self.model(**self.tokenize(texts[s], segment), patch_features=_as_tensor(patch_features[s], self.device))

    @torch.inference_mode()
    def encode_products(self, titles: Sequence[str], patch_features: np.ndarray | torch.Tensor, batch_size: int = 128,
                        segment: str = "T") -> np.ndarray:
        """Joint text + image encoding: the default product vector of the index (titles, segment T),
        and with segment Q a shopper's query together with their photo."""
        self._check_pairs(titles, patch_features)
        return self._vectors(self._batched(
            len(titles), batch_size, lambda s: self.model.itc_embedding(self._joint(titles, patch_features, s, segment))
        ))

    @torch.inference_mode()
    def match_logits(self, texts: Sequence[str], patch_features: np.ndarray | torch.Tensor, batch_size: int = 128,
                     segment: str = "T") -> np.ndarray:
        """TIA log-odds (match logit minus no-match logit) of each aligned (text, image) pair.

        Why log-odds beside the probability: a confident float32 softmax rounds to exactly 1.0
        once the margin passes ~17, and a ranking by probability then ties every confident
        candidate; the log-odds keep their order (and add to other log-domain scores).
        """
        self._check_pairs(texts, patch_features)
        result = self._batched(
            len(texts), batch_size,
            lambda s: self.model.tia_logits(self._joint(texts, patch_features, s, segment)).float().diff(dim=-1)[:, 0],
        )
        return result.numpy() if result is not None else np.zeros(0, np.float32)

    def score_pairs(self, texts: Sequence[str], patch_features: np.ndarray | torch.Tensor, batch_size: int = 128, segment: str = "T") -> np.ndarray:
        """TIA probability that each text matches its image (the cross-encoder re-ranker): sigmoid of the log-odds."""
        return match_probability(self.match_logits(texts, patch_features, batch_size=batch_size, segment=segment)
                                 ).astype(np.float32)

    @torch.inference_mode()
    def attention_map(self, text: str, patch_features: np.ndarray | torch.Tensor, segment: str = "Q") -> np.ndarray:
        """8x8 map of how much the text tokens attend to each patch (last layer, heads averaged).

        Attention probabilities need the eager attention kernel; it is switched on for this call only.
        """
        self.model.eval()
        feats = _as_tensor(patch_features, self.device).reshape(1, self.config.num_patches, -1)
        previous = self.model.config._attn_implementation
        self.model.set_attn_implementation("eager")
        try:
            output = self.model(**self.tokenize([text], segment), patch_features=feats, output_attentions=True)
        finally:
            self.model.set_attn_implementation(previous)
        attn = output.attentions[-1][0].float().mean(0)  # [seq, seq], heads averaged
        t = output.text_length
        text_rows = attn[1 : t - 1]  # the words: no [CLS]/[SEP]
        if text_rows.numel() == 0:
            text_rows = attn[:1]
        weights = text_rows[:, t:].mean(0)
        weights = weights / weights.sum().clamp_min(1e-12)
        side = int(round(self.config.num_patches**0.5))
        return weights.reshape(side, side).cpu().numpy().astype(np.float32)

    @staticmethod
    def _check_pairs(texts: Sequence[str], patch_features: np.ndarray | torch.Tensor) -> None:
        if len(texts) != len(patch_features):
            raise ValueError(f"{len(texts)} texts but {len(patch_features)} images: they must pair up")
