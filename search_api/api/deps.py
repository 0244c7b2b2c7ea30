"""Route dependencies: the one SearchService of the app (created in the lifespan)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from search_api.errors import Unavailable
from search_api.service import SearchService


def get_service(request: Request) -> SearchService:
    service = getattr(request.app.state, "service", None)
    if service is None or not service.state.loaded:
        raise Unavailable("the service is still loading its model and index", code="loading")
    return service


ServiceDep = Annotated[SearchService, Depends(get_service)]
