"""The demo page (plain HTML + JS, no build step) and catalog images."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from search_api.api.deps import ServiceDep

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
router = APIRouter(include_in_schema=False)


@router.get("/")
async def demo_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/images/{product_id}/{n}")
async def image(product_id: str, n: int, service: ServiceDep) -> FileResponse:
    """A catalog image by (product, position): only files the index lists under the catalog's root."""
    return FileResponse(service.image_file(product_id, n), headers={"Cache-Control": "public, max-age=3600"})
