"""Service settings: one typed object, read from ``FASHIONBERT_*`` environment variables.

Why pydantic-settings: ``fashionbert serve`` flags, a ``.env`` file and the container's
environment all land in the same validated object, and ``uvicorn --workers N`` (which
re-imports the app in each worker process) sees the same values through the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fashionbert.reranking import DEFAULT_DUAL_WEIGHT

RETIRED = {"rerank_weight": "rerank_dual_weight (the fused score is now log-odds + weight x logit_scale x cosine)"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FASHIONBERT_", env_file=".env", extra="ignore")

    # What to serve
    index_dir: Path = Field(description="INDEX_DIR written by `fashionbert index` (the live version is INDEX_DIR/CURRENT)")
    checkpoint: Path | None = Field(None, description="release checkpoint; default: the one the live version was built with")
    device: str = Field("cpu", description="torch device for the encoder and the photo CNN (cpu, cuda, auto)")
    tagger: Path | None = Field(None, description="tagger directory (`fashionbert tags train`) behind POST /api/v1/tags; "
                                "unset: tag suggestions answer 503")
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads for torch (default: torch's own)")

    # Cache
    redis_url: str | None = Field(None, description="redis://host:port/db; unset: an in-process LRU")
    cache_ttl_s: float = Field(300.0, ge=0, description="seconds a cached response lives (0: no caching)")
    cache_max_items: int = Field(10_000, ge=1)
    redis_timeout_s: float = Field(0.05, gt=0, description="bound on every Redis call; slower means a miss")

    # Requests
    default_k: int = Field(20, ge=1, le=100)
    max_k: int = Field(100, ge=1, le=1000)
    max_query_chars: int = Field(256, ge=1)
    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="uploads above this get 413")
    default_rerank_depth: int = Field(20, ge=1)
    max_rerank_depth: int = Field(100, ge=1)
    rerank_dual_weight: float = Field(DEFAULT_DUAL_WEIGHT, ge=0, description=(
        "weight of stage 1's logit_scale x cosine beside the cross encoder's match log-odds in the fused re-rank "
        "score (fashionbert.reranking; 0: the cross encoder's order alone)"))
    rerank_precision: Literal["fp32", "auto", "bf16"] = Field("fp32", description=(
        "the cross encoder's matmuls on re-rank: fp32, or bf16 where the device multiplies it natively (auto: a GPU, "
        "a CPU with AVX512-BF16 or AMX; 1.5x faster re-ranking there, docs/results.md) or always (bf16); the log-odds "
        "stay float32 (fashionbert.precision). Query and photo encoding stay fp32, like the index's vectors"))
    candidate_multiplier: int = Field(1, ge=1, description="stage 1 fetches max(k, depth) x this many candidates")

    # Micro-batching of the text encoder
    batch_max_size: int = Field(32, ge=1, description="1 disables micro-batching")
    batch_max_wait_ms: float = Field(0.0, ge=0, description="extra wait for batch mates when the model is idle; "
                                     "under load batches fill while the model runs, so 0 costs no throughput")

    # Operations
    admin_token: SecretStr | None = Field(None, description="bearer token of POST /api/v1/admin/reload; unset: admin disabled")
    reload_poll_s: float = Field(2.0, ge=0, description="how often INDEX_DIR/CURRENT is checked (0: only on admin reload)")
    cors_origins: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _refuse_retired(cls, data: Any) -> Any:
        """A retired setting fails loudly: ``extra="ignore"`` would otherwise drop it without a word."""
        given = set(data) if isinstance(data, dict) else set()
        given |= {name for name in RETIRED if f"FASHIONBERT_{name.upper()}" in os.environ}
        for name in sorted(given & set(RETIRED)):
            raise ValueError(f"setting {name} (FASHIONBERT_{name.upper()}) was retired: use {RETIRED[name]}")
        return data
