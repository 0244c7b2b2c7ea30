"""The live (model, index) pair and the zero-downtime switch to a new ``INDEX_DIR/CURRENT``.

Why a snapshot: a query vector is only comparable with index vectors of the same checkpoint,
so the model and the index are swapped together, as one reference assignment. A request
reads ``state.snapshot`` once and uses that pair to the end, so in-flight requests finish on
the old version while new ones get the new one; the old pair is freed when the last of them
returns. A version built with another checkpoint brings that checkpoint along (or is refused
when the service was pinned to a checkpoint).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from fashionbert.encoder import CheckpointError
from indexer.versions import IndexDir
from search_api.engine import Engine
from search_api.errors import Conflict
from search_api.loaded_index import LoadedIndex
from search_api.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    engine: Engine
    index: LoadedIndex

    @property
    def features_config(self) -> dict:
        return dict((self.index.infos.get("features") or {}).get("config") or {})


class ServingState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = IndexDir(settings.index_dir)
        self._snapshot: Snapshot | None = None
        self._load_lock = threading.Lock()
        self.last_error: str | None = None
        self._failed: str | None = None  # a version that failed to load: not retried until CURRENT moves or a forced reload

    @property
    def snapshot(self) -> Snapshot:
        if self._snapshot is None:
            raise RuntimeError("the service is not loaded yet")
        return self._snapshot

    @property
    def loaded(self) -> bool:
        return self._snapshot is not None

    # ------------------------------------------------------------------ loading (blocking)
    def _engine_for(self, index: LoadedIndex, current: Engine | None) -> Engine:
        if current is not None and current.sha256 == index.checkpoint_sha256:
            return current
        pinned = self.settings.checkpoint
        if pinned is not None:
            engine = current if current is not None and current.checkpoint == Path(pinned).resolve() else Engine.load(pinned, self.settings.device)
            if index.checkpoint_sha256 and engine.sha256 != index.checkpoint_sha256:
                raise Conflict(
                    f"{index.path} was built with checkpoint sha256 {index.checkpoint_sha256[:12]}, but the service is pinned "
                    f"to {pinned} (sha256 {engine.sha256[:12]}): its query vectors would not match; serve that index's "
                    f"checkpoint ({index.infos.get('checkpoint')}) or rebuild the index with this one"
                )
            return engine
        recorded = index.infos.get("checkpoint")
        if not recorded or not Path(recorded).is_dir():
            raise CheckpointError(f"{index.path} was built with checkpoint {recorded!r}, which is not there any more; "
                                  "pass --checkpoint (FASHIONBERT_CHECKPOINT) with that checkpoint")
        engine = Engine.load(recorded, self.settings.device)
        if index.checkpoint_sha256 and engine.sha256 != index.checkpoint_sha256:
            raise Conflict(f"{recorded} changed since {index.path.name} was built (sha256 differs): rebuild the index")
        return engine

    def _warm(self, snap: Snapshot) -> None:
        """First-request costs (kernels, the photo CNN, page faults) are paid here, not by a shopper."""
        vec = snap.engine.encode_queries(["warm up"])
        snap.index.search("product", vec, 10)
        if snap.index.has_kind("image") and snap.features_config:
            snap.engine.extractor(snap.features_config)

    def load(self, version_dir: Path | None = None) -> Snapshot:
        """Open ``version_dir`` (default: CURRENT) with its engine and make it live (blocking)."""
        with self._load_lock:
            path = version_dir or self.root.current_path()
            current = self._snapshot
            if current is not None and current.index.path == path.resolve():
                return current
            index = LoadedIndex(path.resolve())
            snap = Snapshot(self._engine_for(index, current.engine if current else None), index)
            self._warm(snap)
            self._snapshot = snap  # the switch: one reference assignment
            # The index's ~1M row values are long-lived: keep them out of the cyclic GC's full
            # passes (0.4 s each at 100k products, a stall for every request in flight). The
            # previous version is still freed by reference counting once its requests finish.
            gc.freeze()
            self.last_error = None
            log.info("serving %s (%d products)", index.version, index.count)
            return snap

    # ------------------------------------------------------------------ reloading (async)
    def current_name(self) -> str | None:
        return self.root.current()

    async def reload(self, force: bool = False) -> tuple[str, bool]:
        """Switch to CURRENT when it names another version (or ``force``); returns (version, changed)."""
        name = self.current_name()
        snap = self._snapshot
        if snap is not None and name == snap.index.path.name:  # (back) on the live version: nothing is wrong
            self._failed = self.last_error = None
        if snap is not None and not force and name in (snap.index.path.name, self._failed):
            return snap.index.version, False
        before = snap.index.path if snap else None
        try:
            new = await asyncio.to_thread(self.load)
        except Exception as exc:
            self._failed = name
            self.last_error = f"{name}: {type(exc).__name__}: {exc}"
            raise
        self._failed = None
        return new.index.version, new.index.path != before

    async def watch(self, on_switch=None) -> None:
        """Poll CURRENT forever; a broken new version is logged and the old one keeps serving."""
        poll = self.settings.reload_poll_s
        if poll <= 0:
            return
        while True:
            await asyncio.sleep(poll)
            try:
                version, changed = await self.reload()
                if changed and on_switch is not None:
                    on_switch(version)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep serving the old version; reload() recorded why
                log.exception("cannot switch to %s; still serving the previous version", self.current_name())
