"""``fashionbert serve``: the search API under uvicorn.

Flags become ``FASHIONBERT_*`` environment variables before uvicorn starts, so every worker
process (``--workers N`` re-imports the app) builds the same Settings; unset flags leave
the environment (or ``.env``) in charge. A preflight check turns the usual mistakes (no
published index, a missing checkpoint) into a one-line error before any port is opened.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from fashionbert.encoder import CheckpointError
from indexer.job import INFOS_FILE
from indexer.versions import IndexDir
from search_api.settings import Settings


@dataclass
class ServeOptions:
    index: Path | None = None
    checkpoint: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    redis_url: str | None = None
    device: str | None = None
    batch_max_size: int | None = None
    batch_max_wait_ms: float | None = None
    log_level: str = "info"
    tagger: Path | None = None  # tag recommender directory (POST /api/v1/tags)

    def environment(self) -> dict[str, str]:
        values = {
            "INDEX_DIR": self.index, "CHECKPOINT": self.checkpoint, "REDIS_URL": self.redis_url, "DEVICE": self.device,
            "BATCH_MAX_SIZE": self.batch_max_size, "BATCH_MAX_WAIT_MS": self.batch_max_wait_ms, "TAGGER": self.tagger,
        }
        return {f"FASHIONBERT_{k}": str(Path(v).resolve()) if isinstance(v, Path) else str(v)
                for k, v in values.items() if v is not None}


def preflight(settings: Settings) -> str:
    """What will be served, or a clear error about why it cannot be."""
    version = IndexDir(settings.index_dir).current_path()
    infos = json.loads((version / INFOS_FILE).read_text())
    checkpoint = settings.checkpoint or Path(infos.get("checkpoint") or "")
    if not Path(checkpoint).is_dir():
        raise CheckpointError(f"checkpoint not found: {checkpoint} (pass --checkpoint)")
    tagger = ""
    if settings.tagger is not None:
        if not (Path(settings.tagger) / "tagger_config.json").is_file():
            raise FileNotFoundError(f"tagger not found: {settings.tagger} is not a directory written by "
                                    "`fashionbert tags train` (FASHIONBERT_TAGGER)")
        tagger = f", tags by {settings.tagger}"
    return f"serving {version} ({infos.get('count')} products, {infos.get('factory')}) with checkpoint {checkpoint}{tagger}"


def run_serve(options: ServeOptions, echo=print) -> None:
    import uvicorn

    os.environ.update(options.environment())
    settings = Settings()  # type: ignore[call-arg]
    echo(preflight(settings))
    echo(f"demo page: http://{options.host}:{options.port}/   API docs: http://{options.host}:{options.port}/docs")
    uvicorn.run("search_api.app:app_from_env", factory=True, host=options.host, port=options.port,
                workers=options.workers, log_level=options.log_level)
