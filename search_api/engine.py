"""The model side of serving: one checkpoint's encoder and the photo CNN of the index's features.

Every method here blocks (torch); the service runs them on its single model thread, never
on the event loop. Nothing here knows about HTTP.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fashionbert.encoder import FashionBert
from fashionbert.vision import load_image_tensor
from indexer.features import FeatureJobConfig, build_extractor
from indexer.job import load_checkpoint


class Engine:
    """Encoder + photo feature extractor of one checkpoint."""

    def __init__(self, model: FashionBert, checkpoint: Path, sha256: str, device: torch.device,
                 rerank_precision: str = "fp32"):
        self.model = model
        # The same weights behind a second front: re-ranking scores 20-100 pairs at once, where bf16 matmuls pay
        # (on a bf16 CPU: 1.5x the pairs/s), while a single query's encoding is too small to (and its vector must
        # match the index's fp32 ones).
        self.reranker = FashionBert(model.model, model.tokenizer, model.device, rerank_precision)
        self.checkpoint = checkpoint
        self.sha256 = sha256
        self.device = device
        self._extractors: dict[str, torch.nn.Module] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, checkpoint: str | Path, device: str = "cpu", rerank_precision: str = "fp32") -> Engine:
        model, sha = load_checkpoint(Path(checkpoint), device)
        return cls(model, Path(checkpoint).resolve(), sha, model.device, rerank_precision)

    # ------------------------------------------------------------------ photos
    def extractor(self, features_config: dict) -> torch.nn.Module:
        """The CNN the index's features were made with (built once per configuration)."""
        key = json.dumps(features_config, sort_keys=True)
        with self._lock:
            if key not in self._extractors:
                known = {k: v for k, v in features_config.items() if k in FeatureJobConfig.__dataclass_fields__}
                self._extractors[key] = build_extractor(FeatureJobConfig(**known), self.device)[0]
            return self._extractors[key]

    def photo_features(self, images: list[Image.Image], features_config: dict) -> np.ndarray:
        """float32 [n, 64, D] patch features of shoppers' photos, made exactly as the catalog's were."""
        extractor = self.extractor(features_config)
        batch = torch.stack([load_image_tensor(im, extractor.image_size) for im in images]).to(self.device)
        with torch.inference_mode():
            return extractor(batch).float().cpu().numpy()

    # ------------------------------------------------------------------ encoder
    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.model.encode_text(texts, segment="Q")

    def encode_photos(self, patches: np.ndarray) -> np.ndarray:
        return self.model.encode_images(patches)

    def encode_query_with_photo(self, text: str, patches: np.ndarray) -> np.ndarray:
        """A query and a photo together: one joint [CLS] query [SEP] patches pass (segment Q),
        the same shape as the joint product vectors of the index."""
        return self.model.encode_products([text], patches[:1], segment="Q")

    def rerank(self, text: str, patches: np.ndarray) -> np.ndarray:
        """Cross-encoder (TIA) match log-odds of the query against each candidate's photo."""
        if len(patches) == 0:
            return np.zeros(0, np.float32)
        return self.reranker.match_logits([text] * len(patches), patches, segment="Q")

    @property
    def logit_scale(self) -> float:
        """The checkpoint's ITC inverse temperature: the cosine's weight in the fused re-rank score."""
        return self.model.logit_scale

    def attention(self, text: str, patches: np.ndarray) -> np.ndarray:
        return self.model.attention_map(text, patches, segment="Q")

    def normalise_query(self, text: str) -> str:
        """The query as the tokenizer sees it (its normaliser: case, accents, width), so two
        spellings the model cannot tell apart share a cache entry."""
        text = " ".join(text.split())
        backend = getattr(self.model.tokenizer, "backend_tokenizer", None)
        normalizer = getattr(backend, "normalizer", None)
        return normalizer.normalize_str(text) if normalizer is not None else text
