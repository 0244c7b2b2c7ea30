"""The tagger's settings, saved as ``tagger_config.json`` beside its weights.

A plain dataclass (not a transformers ``PretrainedConfig``): the head is not a transformers
model and its config must not pretend to be one; JSON round trips are all we need. Every
architectural switch the ablations flip lives here, so a saved tagger says exactly which
parts it has and ``from_pretrained`` rebuilds the same module tree.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

CONFIG_FILE = "tagger_config.json"
LOSSES = ("bce", "focal")
# "mfb": the bilinear fusion; "concat": [image; text] -> linear, the ablation (additive: the attended image
# and text vectors can only add up); "concat_mlp": the same with a ReLU, a one-hidden-layer MLP that can
# learn interactions too (the ablation's form before stop 17; reported beside it, docs/design.md item 44).
FUSIONS = ("mfb", "concat", "concat_mlp")
GROUP_WEIGHTINGS = ("softmax", "sparsemax", "gate")  # how the high-level attention normalises its group scores


@dataclass
class TaggerConfig:
    """Architecture of :class:`~fashionbert.tagging.model.TaggerHead` and the vocabulary threshold.

    ``hidden_size`` is the trunk's (filled in from the trunk when the tagger is created);
    ``num_tags`` is the vocabulary's size (filled in when the vocabulary is built).
    """

    hidden_size: int = 256
    num_tags: int = 0
    attention_dim: int = 256  # width of the additive attention scorers (low and high level)
    mfb_k: int = 5  # MFB rank: each fused dimension is a sum of k products
    mfb_o: int = 256  # fused vector size (MFB output, or the concatenation's projection)
    glimpses: int = 2  # attention maps per modality in the low-level co-attention
    dropout: float = 0.1
    use_low_level_attention: bool = True  # False: masked means of tokens and patches
    fusion: str = "mfb"  # one of FUSIONS
    use_high_level_attention: bool = True  # False: mean over the fused groups
    # The high-level attention reads each group beside its agreement with the product's mean group, so
    # a view unlike the others (a stray photo of another product) can be told apart (design item 47).
    view_consensus: bool = True
    # one of GROUP_WEIGHTINGS; with "sparsemax" the high-level attention can give a group exactly zero weight (item 55),
    # with "gate" each group has its own sigmoid keep/drop gate and equal gates are the mean (item 56)
    group_weights: str = "softmax"
    freeze_trunk: bool = True
    min_tag_count: int = 2  # tags seen fewer times in the training catalog are not predicted
    max_views: int = 1  # image views per product read (each one joint trunk pass; the API reads as many, the first stored)
    # "joint": the head reads one [CLS] title [SEP] patches pass (tokens and patches have already met);
    # "separate": a text-only and an image-only pass, so the head's co-attention and fusion are
    # the only place the two modalities meet (docs/design.md item 36).
    trunk_passes: str = "joint"

    def __post_init__(self) -> None:
        for name in ("hidden_size", "attention_dim", "mfb_k", "mfb_o", "glimpses", "max_views"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TaggerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TaggerConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"TaggerConfig.fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if self.group_weights not in GROUP_WEIGHTINGS:
            raise ValueError(f"TaggerConfig.group_weights must be one of {', '.join(GROUP_WEIGHTINGS)}, "
                             f"got {self.group_weights!r}")
        if self.trunk_passes not in ("joint", "separate"):
            raise ValueError(f"TaggerConfig.trunk_passes must be 'joint' or 'separate', got {self.trunk_passes!r}")
        if self.min_tag_count < 1:
            raise ValueError(f"TaggerConfig.min_tag_count must be >= 1, got {self.min_tag_count}")

    @property
    def effective_glimpses(self) -> int:
        """Fused groups per view: without low-level attention every glimpse would be the same mean."""
        return self.glimpses if self.use_low_level_attention else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaggerConfig:
        data = dict(data)
        if "use_bilinear" in data:  # taggers saved before stop 17: False meant concatenation + linear + ReLU
            data.setdefault("fusion", "mfb" if data.pop("use_bilinear") else "concat_mlp")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TaggerConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TaggerConfig:
        path = Path(directory) / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a tagger directory (no {CONFIG_FILE})")
        data = json.loads(path.read_text())
        data.setdefault("view_consensus", False)  # saved before design item 47: built without it
        return cls.from_dict(data)
