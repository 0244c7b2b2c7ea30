"""POST /api/v1/search (JSON, optional base64 photo) and /api/v1/search/image (multipart upload)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from search_api.api.deps import ServiceDep
from search_api.errors import PayloadTooLarge
from search_api.schemas import ErrorResponse, SearchRequest, SearchResponse

router = APIRouter(prefix="/api/v1", tags=["search"])
ERRORS = {c: {"model": ErrorResponse} for c in (404, 413, 422)}


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


@router.post("/search", response_model=SearchResponse, responses=ERRORS)
async def search(request: SearchRequest, service: ServiceDep) -> Response:
    """Text and/or photo search: stage 1 FAISS over the live index, stage 2 cross-encoder re-rank."""
    return _json(await service.search(request))


@router.post("/search/image", response_model=SearchResponse, responses=ERRORS)
async def search_image(
    service: ServiceDep,
    file: Annotated[UploadFile, File(description="the shopper's photo (JPEG, PNG or WebP)")],
    query: Annotated[str | None, Form(description="optional text, combined with the photo")] = None,
    k: Annotated[int, Form(ge=1, le=100)] = 20,
    category: Annotated[str | None, Form()] = None,
    rerank: Annotated[bool, Form()] = True,
    rerank_depth: Annotated[int | None, Form(ge=1, le=200)] = None,
) -> Response:
    """Photo search by upload (what the demo page uses); with ``query`` both are combined."""
    limit = service.settings.max_image_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"file is larger than the {limit} byte limit", field="file")
    return _json(await service.search_with(query, data, k=k, category=category, rerank=rerank, rerank_depth=rerank_depth))
