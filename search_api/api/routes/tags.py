"""POST /api/v1/tags (JSON: a product id, or a title and/or a base64 photo) and /api/v1/tags/image (multipart)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from search_api.api.deps import ServiceDep
from search_api.errors import PayloadTooLarge, Unprocessable
from search_api.images import decode_base64
from search_api.schemas import ErrorResponse, TagsRequest, TagsResponse

router = APIRouter(prefix="/api/v1", tags=["tags"])
ERRORS = {c: {"model": ErrorResponse} for c in (404, 413, 422, 503)}


@router.post("/tags", response_model=TagsResponse, responses=ERRORS)
async def tags(request: TagsRequest, service: ServiceDep) -> dict:
    """Suggested tags of an indexed product (by id), or of a new one from its title and/or photo. 503 without a tagger."""
    if request.product_id is not None:
        if request.title is not None or request.image is not None:
            raise Unprocessable("send either product_id or title/image, not both", field="product_id", code="ambiguous_input")
        return await service.tagging.for_product(request.product_id, request.k)
    image = decode_base64(request.image, service.settings.max_image_bytes) if request.image else None
    return await service.tagging.for_input(request.title, image, request.k)


@router.post("/tags/image", response_model=TagsResponse, responses=ERRORS)
async def tags_image(
    service: ServiceDep,
    file: Annotated[UploadFile, File(description="the product photo (JPEG, PNG or WebP)")],
    title: Annotated[str | None, Form(description="optional product title, read together with the photo")] = None,
    k: Annotated[int, Form(ge=1, le=50, description="tags to return")] = 5,
) -> dict:
    """Suggested tags of a product photo upload (+ an optional title)."""
    limit = service.settings.max_image_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"file is larger than the {limit} byte limit", field="file")
    return await service.tagging.for_input(title, data, k)
