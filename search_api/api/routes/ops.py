"""Health, readiness, Prometheus metrics and the admin reload."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response

from search_api.api.deps import ServiceDep
from search_api.schemas import ErrorResponse, Ready, ReloadResponse

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict:
    """Alive (the process answers); says nothing about the model or the index."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
async def readyz(request: Request) -> JSONResponse:
    """Model and index loaded (with the version and count); cache backend state. 503 while loading."""
    service = getattr(request.app.state, "service", None)
    if service is None:
        return JSONResponse({"ready": False, "status": "loading", "model": {}, "index": {}, "cache": {}}, status_code=503)
    body = await service.readiness()
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)


@router.post("/api/v1/admin/reload", response_model=ReloadResponse, responses={401: {"model": ErrorResponse},
                                                                                   409: {"model": ErrorResponse}})
async def reload(service: ServiceDep, authorization: Annotated[str | None, Header()] = None) -> dict:
    """Switch to INDEX_DIR/CURRENT now (it is also polled). Bearer token from FASHIONBERT_ADMIN_TOKEN."""
    token = authorization[7:].strip() if authorization and authorization.lower().startswith("bearer ") else None
    return await service.reload(token)
