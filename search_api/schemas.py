"""Request and response bodies of the HTTP API (the OpenAPI schema is generated from these)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SearchRequest(BaseModel):
    """Text, photo (base64) or both. Limits that depend on settings are checked by the service."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"query": "red floral summer dress", "k": 10}, {"query": "黑色 皮革 手提包", "category": "bags", "rerank": False}],
    })

    query: str | None = Field(None, description="shopper's text, Chinese or English")
    image: str | None = Field(None, description="a photo as base64 (JPEG/PNG/WebP); with a query, both are combined")
    k: int = Field(20, ge=1, le=100, description="results to return")
    category: str | None = Field(None, description="only products of this category (see GET /api/v1/categories)")
    rerank: bool = Field(True, description="re-rank the top `rerank_depth` with the cross encoder (needs a text query)")
    rerank_depth: int | None = Field(None, ge=1, le=200, description="candidates re-ranked (default from settings)")


class Product(BaseModel):
    product_id: str
    title: str
    category: str
    sub_category: str | None = None
    price: float | None = None
    image_url: str | None = Field(None, description="the first image, served by GET /images/{product_id}/0")
    image_urls: list[str] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict, description="every other catalog column")


class Hit(Product):
    rank: int
    score: float = Field(description="the score the results are ordered by (fused when re-ranked)")
    retrieval_score: float = Field(description="stage 1: cosine similarity of the query and product vectors")
    rerank_score: float | None = Field(None, description="stage 2: the cross encoder's match probability")


class SearchResponse(BaseModel):
    results: list[Hit]
    index_version: str
    cached: bool = False
    reranked: bool = False
    query: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict, description="per stage: encode, faiss, rerank, cache, total")


class Category(BaseModel):
    name: str
    count: int


class Categories(BaseModel):
    categories: list[Category]
    index_version: str


class AttentionMap(BaseModel):
    product_id: str
    query: str
    image_url: str
    grid: int
    weights: list[list[float]] = Field(description="grid x grid, row-major, sums to 1: how much the query attends to each patch")


class TagsRequest(BaseModel):
    """A product by id (tagged from its catalog title and its photos, as many as the tagger reads), or a title and/or a photo."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"product_id": "tr-000001"}, {"title": "red floral summer dress", "k": 8}],
    })

    product_id: str | None = Field(None, description="an indexed product; excludes title and image")
    title: str | None = Field(None, description="a product title (Chinese or English)")
    image: str | None = Field(None, description="a product photo as base64 (JPEG/PNG/WebP)")
    k: int = Field(5, ge=1, le=50, description="tags to return")


class SuggestedTag(BaseModel):
    tag: str
    score: float = Field(description="the tagger's probability that the tag applies")


class TagsResponse(BaseModel):
    tags: list[SuggestedTag] = Field(description="best first")
    tagger: str = Field(description="the tagger directory's name")
    tagger_version: str = Field(description="hash of the tagger's weights and vocabulary")
    product_id: str | None = None
    inputs: list[str] = Field(default_factory=list, description="what the tags were read from: title, image")
    views: int = Field(0, description="product photos read: by id, up to the tagger's max_views of the indexed ones")
    timings_ms: dict[str, float] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Ready(BaseModel):
    ready: bool
    status: str = Field(description="ok, or degraded: ... (still serving)")
    model: dict[str, Any]
    index: dict[str, Any]
    cache: dict[str, Any]
    tagger: dict[str, Any] = Field(default_factory=dict, description="configured, loaded, name, version, tags (or the error)")


class ReloadResponse(BaseModel):
    index_version: str
    changed: bool
