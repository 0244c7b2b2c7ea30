"""Property-based fuzzing of the search API from its own OpenAPI schema (schemathesis 4).

For every operation of the app's OpenAPI document (search JSON, search/image multipart,
product, similar, attention, categories, admin reload, healthz, readyz) schemathesis
generates requests from the schema: its examples, boundary "coverage" cases and random
Hypothesis cases, each valid and invalid (wrong types, missing or extra fields, bad content
types, methods the path does not have). They go in-process over ASGI to the real app on the
real tiny index of ``tests/api_fixtures.py``, and every response must

* not be a 5xx (``not_a_server_error``). A crash anywhere in ``search_api`` fails too: the app
  answers it with a JSON 500 and Starlette re-raises it, which the in-process transport
  passes on to the test as the exception itself, with a curl line to reproduce it;
* when it is a 4xx, be JSON of the form ``{"error": {"code": str, "message": str,
  "field": str | null}}`` (``error_body_is_json``), the one error shape clients parse;
* conform to the schema's declared content types and response schemas (the routes that
  return pre-serialised JSON bytes declare a ``response_model``, so they are checked too).

Generated values rarely reach the interesting code: a random product id answers 404, a
random upload is no picture, a random bearer token is 401. So a case is also sent, with every
other generated value kept, on a real product id; with a real catalog photo in place of the
generated one (the corrupt one included); and, for the admin reload, with the right token.

Deterministic: a fixed schemathesis seed (each operation's Hypothesis seed derives from it)
and no example database, so CI sends exactly the same requests every run.
"""

from __future__ import annotations

import base64
import re
import zlib

import pyarrow.parquet as pq
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from search_api.app import create_app
from search_api.settings import Settings
from tests.api_fixtures import ApiIndex, api_index, api_settings, api_tagger  # noqa: F401 - fixtures

SEED = 20240611
ADMIN_TOKEN = "s3cret"  # api_settings' token
OPERATIONS = {
    "POST /api/v1/search", "POST /api/v1/search/image", "GET /api/v1/products/{product_id}",
    "GET /api/v1/products/{product_id}/similar", "GET /api/v1/products/{product_id}/attention",
    "GET /api/v1/categories", "POST /api/v1/admin/reload", "GET /healthz", "GET /readyz",
    "POST /api/v1/tags", "POST /api/v1/tags/image",
}
FUZZ_SETTINGS = settings(
    max_examples=40,  # random (fuzzing-phase) cases per operation, besides the schema's examples and coverage cases
    deadline=None,  # model calls on a shared 2-core CPU: timings say nothing here
    database=None,  # no replay of locally saved failures: a checkout runs what CI runs
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def error_body_is_json(ctx, response, case) -> None:
    """A 4xx is ``{"error": {"code": str, "message": str, "field": str | null}}`` (JSON)."""
    if not 400 <= response.status_code < 500:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.startswith("application/json"), f"{response.status_code} with content-type {content_type!r}"
    try:
        body = response.json()
    except ValueError as exc:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.content[:200]!r}") from exc
    assert isinstance(body, dict) and set(body) == {"error"}, f"not an error envelope: {body!r}"
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message", "field"}, f"bad error object: {error!r}"
    assert isinstance(error["code"], str) and error["code"], f"bad error code: {error!r}"
    assert isinstance(error["message"], str) and error["message"], f"bad error message: {error!r}"
    assert error["field"] is None or isinstance(error["field"], str), f"bad error field: {error!r}"
    return None


# Not `status_code_conformance`: it fails for reasons that are no bug. schemathesis probes each path
# with methods the schema does not declare (TRACE ...), and the right answer, 405, is in no operation's
# `responses`; FastAPI answers a JSON body that is not UTF-8 with 400 "There was an error parsing the
# body", undeclared as well. Both are client errors in the error envelope, which `error_body_is_json`
# checks; every status is covered by `not_a_server_error` (no 5xx) and that check (4xx shape).
CHECKS = [not_a_server_error, error_body_is_json, content_type_conformance, response_schema_conformance]

# pytest makes its tests from the schema at import time, before the session's index exists. The
# OpenAPI document does not depend on settings, so it comes from an app that is never started (the
# index path is never opened); every request goes to ``fuzz_app``, the real one (``case.call(app=)``).
# (schemathesis.pytest.from_fixture would load it from a fixture instead, but its subtests rename the
# pytest node through ``Node._nodeid``, which pytest 9.2 no longer has.)
schema = schemathesis.openapi.from_dict(
    create_app(Settings(index_dir="/nonexistent")).openapi(),  # type: ignore[call-arg]
    config=schemathesis.Config(seed=SEED),  # explicit: no schemathesis.toml is discovered
)


@pytest.fixture(scope="module")
def fuzz_app(api_index: ApiIndex, api_tagger):  # noqa: F811 - fixture
    # schemathesis' ASGI transport starts the app's lifespan (model + index load) on a test's first
    # request, and its pytest plugin ends it when that test ends: each operation gets a fresh service.
    # With a tagger: without one POST /api/v1/tags is a (correct) 503, which the no-5xx check refuses.
    app = create_app(api_settings(api_index, tagger=api_tagger))
    ready = schema["/readyz"]["GET"].Case().call(app=app)
    assert ready.status_code == 200, ready.text
    return app


@pytest.fixture(scope="module")
def catalog(api_index: ApiIndex) -> dict[str, list]:
    """Real product ids and first photos (one product's photos are corrupt files: a 422, not a 500)."""
    rows = pq.read_table(api_index.catalog, columns=["product_id", "images"]).to_pylist()
    return {"ids": [r["product_id"] for r in rows], "photos": [(api_index.data / r["images"][0]).read_bytes() for r in rows]}


def _send(case, app) -> int:
    response = case.call(app=app)
    case.validate_response(response, checks=CHECKS)
    return response.status_code


def _variant(case, **changes):
    """The same request with some parts replaced (path parameters, headers or body)."""
    parts = dict(path_parameters=dict(case.path_parameters), query=dict(case.query), headers=case.headers.copy(),
                 body=case.body, media_type=case.media_type)
    return case.operation.Case(method=case.method, **{**parts, **changes})


def _pick(case, items: list):
    """One of ``items``, chosen by the case itself (a replayed or shrunk case chooses the same)."""
    # No body is NOT_SET, whose repr carries a memory address: it would change the choice between runs.
    body = case.body if isinstance(case.body, (dict, list, str, bytes, int, float, bool, type(None))) else None
    return items[zlib.crc32(repr((case.method, case.path_parameters, case.query, body)).encode()) % len(items)]


def fuzz(case, fuzz_app, catalog) -> None:
    _send(case, fuzz_app)

    if "product_id" in case.path_parameters:
        _send(_variant(case, path_parameters={**case.path_parameters, "product_id": _pick(case, catalog["ids"])}), fuzz_app)

    if case.path == "/api/v1/search" and isinstance(case.body, dict):
        photo = base64.b64encode(_pick(case, catalog["photos"])).decode()
        _send(_variant(case, body={**case.body, "image": photo}), fuzz_app)

    if case.path in ("/api/v1/search/image", "/api/v1/tags/image") and isinstance(case.body, dict):
        _send(_variant(case, body={**case.body, "file": _pick(case, catalog["photos"])}), fuzz_app)

    if case.path == "/api/v1/tags" and isinstance(case.body, dict):
        _send(_variant(case, body={"product_id": _pick(case, catalog["ids"]), "k": case.body.get("k", 5)}), fuzz_app)
        photo = base64.b64encode(_pick(case, catalog["photos"])).decode()
        _send(_variant(case, body={**case.body, "product_id": None, "image": photo}), fuzz_app)

    if case.path == "/api/v1/admin/reload":
        headers = case.headers.copy()  # case-insensitive: replaces a generated `authorization`
        headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        status = _send(_variant(case, headers=headers), fuzz_app)
        if case.method.upper() == "POST":
            assert status == 200  # the live version again: changed=false, never a 409


# One test per operation, named after it (test_fuzz_post_api_v1_search, ...), so pytest's ids tell
# them apart (under pytest 9.2 the ids schemathesis gives one test's operations all coincide).
for _result in schema.get_all_operations():
    _operation = _result.ok()
    _name = "test_fuzz_" + re.sub(r"[^a-z0-9]+", "_", f"{_operation.method} {_operation.path}".lower()).strip("_")
    globals()[_name] = FUZZ_SETTINGS(schema.include(method=_operation.method, path=_operation.path).parametrize()(fuzz))


def test_every_operation_is_fuzzed():
    """A new or renamed route is noticed here (and then fuzzed by the loop above)."""
    assert {r.ok().label for r in schema.get_all_operations()} == OPERATIONS


def test_a_lone_surrogate_in_the_query_is_a_422(fuzz_app):
    """JSON may escape an unpaired surrogate ("\\ud800"), which is no Unicode text; Hypothesis never
    generates one, so this request is spelled out (it was a 500: the tokenizer cannot encode it)."""
    for body in ({"query": "\ud800"}, {"query": "red \udfff dress", "rerank": False}):
        case = schema["/api/v1/search"]["POST"].Case(body=body, media_type="application/json")
        assert _send(case, fuzz_app) == 422
