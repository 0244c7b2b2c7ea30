"""Shared data for the search API tests: a real tiny index built once per session.

The index is built by the real indexer from the synthetic catalog (40 products: row 5 has
only corrupt images, row 7 a corrupt first image) with a random-init tiny checkpoint: search quality is meaningless
here, behaviour is not. Tests that change the index directory work on a copy.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from indexer.job import build_index_version
from search_api.app import create_app
from search_api.settings import Settings
from tests.indexer_fixtures import job, make_checkpoint, make_synthetic


@dataclass(frozen=True)
class ApiIndex:
    data: Path
    catalog: Path
    checkpoint: Path
    index_dir: Path

    @property
    def features(self) -> Path:
        """The patch features the indexer extracted into the index directory's cache."""
        return next((self.index_dir / "cache").glob("features-*"))

    def copy(self, dest: Path) -> ApiIndex:
        """A private copy of the index directory (same catalog and checkpoint)."""
        shutil.copytree(self.index_dir, dest)
        return ApiIndex(self.data, self.catalog, self.checkpoint, dest)


@pytest.fixture(scope="session")
def api_index(tmp_path_factory: pytest.TempPathFactory) -> ApiIndex:
    root = tmp_path_factory.mktemp("api")
    catalog = make_synthetic(root / "data", n=40)
    # Row 7: its first photo is corrupt, the others are fine (the API must link and use image 1 on).
    first = pq.read_table(catalog).column("images").to_pylist()[7]
    assert len(first) >= 2
    (root / "data" / first[0]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    checkpoint = make_checkpoint(catalog, root / "ckpt")
    build_index_version(job(catalog, checkpoint, root / "idx"))
    return ApiIndex(root / "data", catalog, checkpoint, root / "idx")


def train_tiny_tagger(index: ApiIndex, out: Path, epochs: int = 6, **head: object) -> Path:
    """A tiny tagger trained (seconds) on the index's catalog, its cached features and checkpoint."""
    from pipelines.tags import TagTrainConfig, train_tagger
    from tests.tagging_fixtures import one_torch_thread

    with one_torch_thread():
        train_tagger(TagTrainConfig(catalog=index.catalog, features=index.features, checkpoint=index.checkpoint, out=out,
                                    epochs=epochs, batch_size=8, lr=3e-3, seed=0, progress=False,
                                    head={"attention_dim": 32, "mfb_o": 64, "mfb_k": 3, **head}), echo=lambda _: None)
    return out


@pytest.fixture(scope="session")
def api_tagger(api_index: ApiIndex, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny one-view tagger on the api index."""
    return train_tiny_tagger(api_index, tmp_path_factory.mktemp("tagger") / "tagger-tiny")


def api_settings(index: ApiIndex, **overrides: object) -> Settings:
    """Settings for tests: no background polling (tests reload explicitly), in-process cache."""
    return Settings(**{"index_dir": index.index_dir, "reload_poll_s": 0, "admin_token": "s3cret", **overrides})  # type: ignore[arg-type]


@pytest.fixture
def client(api_index: ApiIndex) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings(api_index)), raise_server_exceptions=False) as c:
        yield c


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """The app under a real uvicorn on a free loopback port, in a thread (real HTTP, real sockets)."""

    def __init__(self, app, timeout_s: float = 60.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.timeout_s = timeout_s

    def __enter__(self) -> LiveServer:
        import threading
        import time

        import httpx
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if not self.thread.is_alive():
                break
            time.sleep(0.1)
        self.server.should_exit = True
        raise RuntimeError(f"the server on {self.url} did not become ready")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
