"""Products: details, similar items, the query->patch attention map, categories."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from search_api.api.deps import ServiceDep
from search_api.schemas import AttentionMap, Categories, ErrorResponse, Product, SearchResponse

router = APIRouter(prefix="/api/v1", tags=["products"])
ERRORS = {c: {"model": ErrorResponse} for c in (404, 422)}


@router.get("/products/{product_id}", response_model=Product, responses=ERRORS)
async def product(product_id: str, service: ServiceDep) -> dict:
    return service.product(product_id)


@router.get("/products/{product_id}/similar", response_model=SearchResponse, responses=ERRORS)
async def similar(
    product_id: str,
    service: ServiceDep,
    k: Annotated[int, Query(ge=1, le=100)] = 10,
    by: Annotated[Literal["product", "image", "title"], Query(description="which vectors to compare")] = "product",
) -> Response:
    """Products nearest to this one (itself excluded): joint vectors, image-only or title-only."""
    return Response(await service.similar(product_id, k, by), media_type="application/json")


@router.get("/products/{product_id}/attention", response_model=AttentionMap, responses=ERRORS)
async def attention(product_id: str, service: ServiceDep,
                    query: Annotated[str, Query(max_length=1000, description="the shopper's text")]) -> dict:
    """8x8 map of how much the query's words attend to each patch of the product photo."""
    return await service.attention(product_id, query)


@router.get("/categories", response_model=Categories)
async def categories(service: ServiceDep) -> dict:
    return service.categories()
