"""Tag suggestions for the search API (``POST /api/v1/tags``): a loaded tagger + the live index.

Why here and not in the routes: the same rules (which input wins, what is an empty request,
how features are made) serve the JSON and the multipart route. Why on the model thread: the
tagger is torch work like the encoder; one model thread keeps calls from fighting over cores
and keeps them off the event loop.

A product named by id is tagged from its catalog title and as many of its photos as the tagger
was trained to read (``TaggerConfig.max_views``): the first from the index's stored patch
features (no CNN pass), the others through the index's own photo CNN from their image files, so
a tagger trained on four views is served four views, not one. An uploaded photo goes through the
same CNN (``Engine.photo_features``), so its features match the ones the tagger was trained on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from search_api.errors import ApiError, NotFound, Unavailable, Unprocessable
from search_api.images import open_image
from search_api.loaded_index import LoadedIndex
from search_api.metrics import Metrics
from search_api.settings import Settings
from search_api.state import ServingState, Snapshot

log = logging.getLogger(__name__)
RunBlocking = Callable[..., Awaitable[Any]]
MAX_TITLE_CHARS = 1000
FEATURE_KEYS = ("encoder", "mode", "weights_path", "cell_size", "crop_size")  # what changes a patch feature's values


class TaggingService:
    def __init__(self, settings: Settings, state: ServingState, run_on_model_thread: RunBlocking, metrics: Metrics):
        self.settings = settings
        self.state = state
        self.run = run_on_model_thread
        self.metrics = metrics
        self.tagger = None  # fashionbert.tagging.Tagger once loaded
        self.error: str | None = None

    # ------------------------------------------------------------------ loading (blocking)
    def load(self) -> None:
        """Load the configured tagger; a broken one is recorded (503 + /readyz note), never fatal for search."""
        path = self.settings.tagger
        if path is None:
            return
        try:
            from fashionbert.tagging import Tagger
            from indexer.features import resolve_device

            tagger = Tagger.from_pretrained(path, device=resolve_device(self.settings.device))
            tagger.predict(["warm up"], [None], k=1)  # first-call costs are paid here, not by a merchant
            self.tagger, self.error = tagger, None
            log.info("tagger %s (%s) loaded: %d tags", tagger.name, tagger.version, len(tagger.vocabulary))
        except Exception as exc:  # noqa: BLE001 - search keeps serving; /readyz and 503s say why
            self.tagger, self.error = None, f"{type(exc).__name__}: {exc}"
            log.error("cannot load the tagger at %s: %s", path, self.error)

    def _incompatibility(self, index: LoadedIndex) -> str | None:
        """Why the loaded tagger cannot read this index's patch features (None when it can)."""
        dim = (index.infos.get("features") or {}).get("feature_dim")
        if self.tagger is not None and dim is not None and int(dim) != self.tagger.feature_dim:
            return (f"the tagger reads {self.tagger.feature_dim}-d patch features but index {index.version} has {dim}-d "
                    "ones (another image encoder): train a tagger on features of this index's encoder")
        return None

    def features_match(self, index: LoadedIndex) -> bool | None:
        """Whether the tagger was trained on patch features made like this index's (None: unknown).

        Same width but another CNN setting (mode, cell size, weights) still runs, worse: reported, not refused."""
        trained = ((self.tagger.info if self.tagger is not None else {}).get("features_info") or {}).get("config") or {}
        served = (index.infos.get("features") or {}).get("config") or {}
        if not trained or not served:
            return None
        return all(trained.get(k) == served.get(k) for k in FEATURE_KEYS)

    def status(self) -> dict[str, Any]:
        """What /readyz reports about the tagger."""
        if self.settings.tagger is None:
            return {"configured": False, "loaded": False}
        out: dict[str, Any] = {"configured": True, "loaded": self.tagger is not None, "path": str(self.settings.tagger)}
        if self.tagger is not None:
            out.update(name=self.tagger.name, version=self.tagger.version, tags=len(self.tagger.vocabulary))
            if self.state.loaded:
                index = self.state.snapshot.index
                out["features_match"] = self.features_match(index)
                problem = self._incompatibility(index)
                if problem:
                    out.update(usable=False, error=problem)
        else:
            out["error"] = self.error
        return out

    def problem(self) -> str | None:
        """A line for /readyz's status when a configured tagger cannot answer."""
        status = self.status()
        if status["configured"] and (not status["loaded"] or status.get("usable") is False):
            return f"degraded: tagger unavailable ({status.get('error')})"
        return None

    # ------------------------------------------------------------------ requests
    def _require(self, snap: Snapshot):
        if self.settings.tagger is None:
            raise Unavailable("tag suggestions are off: no tagger is configured (set FASHIONBERT_TAGGER to a directory "
                              "written by `fashionbert tags train`)", code="no_tagger")
        if self.tagger is None:
            raise Unavailable(f"the tagger at {self.settings.tagger} could not be loaded: {self.error}",
                              code="tagger_unavailable")
        problem = self._incompatibility(snap.index)
        if problem:
            raise Unavailable(problem, code="tagger_unavailable")
        return self.tagger

    @staticmethod
    def _clean_title(title: str | None) -> str | None:
        if title is None:
            return None
        title = " ".join(title.split())
        if not title.isascii() and any("\ud800" <= c <= "\udfff" for c in title):
            raise Unprocessable("title contains an unpaired UTF-16 surrogate (not valid Unicode text)", field="title")
        if len(title) > MAX_TITLE_CHARS:
            raise Unprocessable(f"title is {len(title)} characters; the limit is {MAX_TITLE_CHARS}", field="title")
        return title or None

    def _body(self, tagger, predictions: list[tuple[str, float]], product_id: str | None, used: list[str],
              views: int, t0: float) -> dict[str, Any]:
        return {"tags": [{"tag": t, "score": round(s, 6)} for t, s in predictions], "tagger": tagger.name,
                "tagger_version": tagger.version, "product_id": product_id, "inputs": used, "views": views,
                "timings_ms": {"total": round((time.perf_counter() - t0) * 1000, 3)}}

    async def for_product(self, product_id: str, k: int) -> dict[str, Any]:
        """Tags of an indexed product: its catalog title + up to ``max_views`` of its photos."""
        t0 = time.perf_counter()
        snap = self.state.snapshot
        tagger = self._require(snap)
        row = snap.index.row(product_id)
        if row is None:
            raise NotFound(f"no product {product_id!r} in index {snap.index.version}", field="product_id",
                           code="unknown_product")
        title = snap.index.value("title", row)
        has_image = bool(snap.index.has_image[row])
        more_views = np.zeros((0, 0, 0), np.float32)
        if has_image and tagger.config.max_views > 1:
            more_views = await self._more_views(snap, row, tagger.config.max_views - 1)
        with self.metrics.stage("tags"):
            predictions = await self.run(_tags_of_row, tagger, snap.index, row, title, has_image, more_views, k)
        return self._body(tagger, predictions, product_id, ["title", *(["image"] if has_image else [])],
                          (1 + len(more_views)) if has_image else 0, t0)

    async def _more_views(self, snap: Snapshot, row: int, limit: int) -> np.ndarray:
        """Patch features of a product's photos after the first (at most ``limit``), made as the catalog's were.

        The index stores the first view's patches only (the re-ranker's; a copy of every view would
        multiply its size by the photo count), so the others go through the photo CNN here. A photo
        that cannot be read now (deleted, corrupt since indexing, inline bytes) is skipped with a
        warning: the product is still tagged from its title and the photos that can be read.
        """
        no_views = np.zeros((0, 0, 0), np.float32)
        if not snap.features_config:  # no photo CNN to make them with: nothing to read the files for
            return no_views
        paths = [p for p in (snap.index.image_path(row, n) for n in snap.index.image_views(row)[1:]) if p is not None]
        pictures = await asyncio.to_thread(_readable_pictures, paths, limit)
        if not pictures:
            return no_views
        with self.metrics.stage("features"):
            views = await self.run(snap.engine.photo_features, pictures, snap.features_config)
        # Stored patches are float16 (the feature store's precision): round these the same way, so a
        # product's tags do not depend on which of its views came from the store.
        return views.astype(np.float16).astype(np.float32)

    async def for_input(self, title: str | None, image: bytes | None, k: int) -> dict[str, Any]:
        """Tags of a product that is not indexed yet: a title, a photo, or both."""
        t0 = time.perf_counter()
        snap = self.state.snapshot
        title = self._clean_title(title)
        if title is None and image is None:
            raise Unprocessable("send a product_id, or a non-empty title and/or an image", field="title", code="empty_input")
        tagger = self._require(snap)
        views = None
        if image is not None:
            picture = await asyncio.to_thread(open_image, image, self.settings.max_image_bytes)
            with self.metrics.stage("features"):
                views = await self.run(snap.engine.photo_features, [picture], snap.features_config)
        with self.metrics.stage("tags"):
            predictions = await self.run(_tags_of_input, tagger, title, views, k)
        return self._body(tagger, predictions, None, [*(["title"] if title else []), *(["image"] if image else [])],
                          0 if views is None else len(views), t0)


def _readable_pictures(paths: list[Path], limit: int) -> list[Image.Image]:
    """The first ``limit`` photos among ``paths`` that decode, in order; the others are logged and left out.

    Catalog photos were accepted by the indexer whatever their size, so the upload byte limit does
    not apply; the decoder's guards (pixel limit, full decode) do.
    """
    pictures: list[Image.Image] = []
    for path in paths:
        if len(pictures) == limit:
            break
        try:
            data = path.read_bytes()
            pictures.append(open_image(data, max(len(data), 1)))
        except (OSError, ApiError) as exc:
            log.warning("tags: skipping unreadable product photo %s: %s", path, exc)
    return pictures


def _tags_of_row(tagger, index: LoadedIndex, row: int, title: str, has_image: bool, more_views: np.ndarray,
                 k: int) -> list[tuple[str, float]]:
    views = index.patches(np.array([row])) if has_image else None  # memory-mapped read: model-thread work
    if views is not None and len(more_views):
        views = np.concatenate([views, more_views])
    return tagger.predict([title], [views], k=k)[0]


def _tags_of_input(tagger, title: str | None, views: np.ndarray | None, k: int) -> list[tuple[str, float]]:
    return tagger.predict([title or ""], [views], k=k)[0]
