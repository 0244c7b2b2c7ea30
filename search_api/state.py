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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashionbert.encoder import CheckpointError
from indexer.versions import IndexDir
from search_api.engine import Engine
from search_api.errors import Conflict
from search_api.loaded_index import LoadedIndex
from search_api.settings import Settings

log = logging.getLogger(__name__)

#: ``await runner(fn, *args)`` runs ``fn(*args)`` where the service makes its model calls.
ModelCallRunner = Callable[..., Awaitable[Any]]


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
        self._reload_lock = asyncio.Lock()  # the watcher and an admin reload never load twice at once
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
            same = current is not None and current.checkpoint == Path(pinned).resolve()
            engine = current if same else Engine.load(pinned, self.settings.device, self.settings.rerank_precision)
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
        engine = Engine.load(recorded, self.settings.device, self.settings.rerank_precision)
        if index.checkpoint_sha256 and engine.sha256 != index.checkpoint_sha256:
            raise Conflict(f"{recorded} changed since {index.path.name} was built (sha256 differs): rebuild the index")
        return engine

    def _warm(self, snap: Snapshot) -> None:
        """First-inference costs (kernels, page faults) are paid here, not by a shopper.

        It must run on the thread that serves model calls: torch's OpenMP thread team belongs to
        the thread that runs the inference, and a warm-up on any other thread left every later
        encode on the model thread ~1.5x slower (the old engine's too; docs/results.md).
        """
        vec = snap.engine.encode_queries(["warm up"])
        snap.index.search("product", vec, 10)

    def _prepare(self, version_dir: Path | None = None) -> Snapshot:
        """Open ``version_dir`` (default: CURRENT) with its engine: file reading and model building,
        no inference, so it may run on any thread. Returns the live snapshot if that is the one."""
        path = version_dir or self.root.current_path()
        current = self._snapshot
        if current is not None and current.index.path == path.resolve():
            return current
        index = LoadedIndex(path.resolve())
        snap = Snapshot(self._engine_for(index, current.engine if current else None), index)
        if snap.index.has_kind("image") and snap.features_config:
            snap.engine.extractor(snap.features_config)  # build the photo CNN now, not on a shopper's upload
        return snap

    def _publish(self, snap: Snapshot) -> None:
        self._snapshot = snap  # the switch: one reference assignment
        # The index's ~1M row values are long-lived: keep them out of the cyclic GC's full
        # passes (0.4 s each at 100k products, a stall for every request in flight). The
        # previous version is still freed by reference counting once its requests finish.
        gc.freeze()
        self.last_error = None
        log.info("serving %s (%d products)", snap.index.version, snap.index.count)

    def load(self, version_dir: Path | None = None) -> Snapshot:
        """Open, warm and make live ``version_dir`` (default: CURRENT), all on the calling thread
        (blocking; the app calls it on its model thread at start-up)."""
        with self._load_lock:
            snap = self._prepare(version_dir)
            if snap is not self._snapshot:
                self._warm(snap)
                self._publish(snap)
            return snap

    # ------------------------------------------------------------------ reloading (async)
    def current_name(self) -> str | None:
        return self.root.current()

    async def reload(self, force: bool = False, run_model_call: ModelCallRunner | None = None) -> tuple[str, bool]:
        """Switch to CURRENT when it names another version (or ``force``); returns (version, changed).

        The new version is read on a worker thread while requests keep flowing on the old one; only
        its warm-up (two small inferences) goes through ``run_model_call`` - the service's model
        thread - so the encoder keeps its speed after a swap. Without one it runs on a worker thread.
        """
        async with self._reload_lock:
            name = self.current_name()
            snap = self._snapshot
            if snap is not None and name == snap.index.path.name:  # (back) on the live version: nothing is wrong
                self._failed = self.last_error = None
            if snap is not None and not force and name in (snap.index.path.name, self._failed):
                return snap.index.version, False
            before = snap.index.path if snap else None
            try:
                new = await asyncio.to_thread(self._prepare)
                if new is not self._snapshot:
                    await (run_model_call or asyncio.to_thread)(self._warm, new)
                    self._publish(new)
            except Exception as exc:
                self._failed = name
                self.last_error = f"{name}: {type(exc).__name__}: {exc}"
                raise
            self._failed = None
            return new.index.version, new.index.path != before

    async def watch(self, on_switch=None, run_model_call: ModelCallRunner | None = None) -> None:
        """Poll CURRENT forever; a broken new version is logged and the old one keeps serving."""
        poll = self.settings.reload_poll_s
        if poll <= 0:
            return
        while True:
            await asyncio.sleep(poll)
            try:
                version, changed = await self.reload(run_model_call=run_model_call)
                if changed and on_switch is not None:
                    on_switch(version)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep serving the old version; reload() recorded why
                log.exception("cannot switch to %s; still serving the previous version", self.current_name())
