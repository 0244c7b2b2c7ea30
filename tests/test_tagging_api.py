"""POST /api/v1/tags and /api/v1/tags/image through the real app on the shared tiny index and a tiny tagger."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from fashionbert.tagging import Tagger
from indexer.feature_store import FeatureStore
from search_api.app import create_app
from tests.api_fixtures import ApiIndex, api_index, api_settings, api_tagger, client, train_tiny_tagger  # noqa: F401 - fixtures
from tests.tagging_fixtures import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def tag_client(api_index: ApiIndex, api_tagger) -> Iterator[TestClient]:  # noqa: F811 - fixture
    with TestClient(create_app(api_settings(api_index, tagger=api_tagger)), raise_server_exceptions=False) as c:
        yield c


def _rows(index: ApiIndex) -> list[dict]:
    return pq.read_table(index.catalog).to_pylist()


def _photo(index: ApiIndex, row: dict, n: int = 0) -> bytes:
    return (index.data / row["images"][n]).read_bytes()


def test_tags_of_an_indexed_product_use_its_title_and_stored_first_view(tag_client, api_index, api_tagger):  # noqa: F811
    row = _rows(api_index)[0]
    r = tag_client.post("/api/v1/tags", json={"product_id": row["product_id"], "k": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tagger"] == "tagger-tiny" and len(body["tagger_version"]) == 12
    assert body["product_id"] == row["product_id"] and body["inputs"] == ["title", "image"] and body["views"] == 1
    tagger = Tagger.from_pretrained(api_tagger)
    store = FeatureStore(api_index.features)
    expected = tagger.predict([row["title"]], [store.views(row["product_id"], 1)], k=4)[0]
    assert [t["tag"] for t in body["tags"]] == [t for t, _ in expected]
    assert [t["score"] for t in body["tags"]] == pytest.approx([s for _, s in expected], abs=1e-5)


def test_a_product_without_a_usable_photo_is_tagged_from_its_title(tag_client, api_index):  # noqa: F811
    row = _rows(api_index)[5]  # every image of row 5 is corrupt
    body = tag_client.post("/api/v1/tags", json={"product_id": row["product_id"]}).json()
    assert body["inputs"] == ["title"] and len(body["tags"]) == 5 and body["views"] == 0


@pytest.fixture(scope="module")
def multi_view_tagger(api_index: ApiIndex, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """A tiny tagger that reads three photos per product (TaggerConfig.max_views = 3)."""
    return train_tiny_tagger(api_index, tmp_path_factory.mktemp("tagger3") / "tagger-3views", epochs=3, max_views=3)


def test_a_multi_view_tagger_is_served_every_view_it_was_trained_on(api_index, multi_view_tagger):  # noqa: F811
    """By id, the product's first photo comes from the index, the next ones through the photo CNN: the tags
    equal the tagger's offline prediction on the catalog's three extracted views, and differ from one view's."""
    store = FeatureStore(api_index.features)
    tagger = Tagger.from_pretrained(multi_view_tagger)
    rows = _rows(api_index)
    with TestClient(create_app(api_settings(api_index, tagger=multi_view_tagger)), raise_server_exceptions=False) as c:
        for i in (0, 1, 8):  # two, four and three photos
            row = rows[i]
            stored = store.views(row["product_id"])
            assert len(stored) >= 2
            body = c.post("/api/v1/tags", json={"product_id": row["product_id"], "k": 5}).json()
            assert body["views"] == min(3, len(stored))
            expected = tagger.predict([row["title"]], [stored[:3]], k=5)[0]
            assert [t["tag"] for t in body["tags"]] == [t for t, _ in expected]
            assert [t["score"] for t in body["tags"]] == pytest.approx([s for _, s in expected], abs=1e-3)
            one_view = tagger.predict([row["title"]], [stored[:1]], k=len(tagger.vocabulary))[0]
            served = dict((t["tag"], t["score"]) for t in body["tags"])
            assert max(abs(served[t] - dict(one_view)[t]) for t in served) > 1e-3  # the other views were read


def test_a_photo_unreadable_since_indexing_is_skipped_not_fatal(api_index, multi_view_tagger):  # noqa: F811
    row = _rows(api_index)[9]
    store = FeatureStore(api_index.features)
    stored = store.views(row["product_id"])
    assert len(stored) >= 3
    second = api_index.data / row["images"][1]
    original = second.read_bytes()
    tagger = Tagger.from_pretrained(multi_view_tagger)
    try:
        second.write_bytes(b"\xff\xd8\xff truncated since indexing")
        with TestClient(create_app(api_settings(api_index, tagger=multi_view_tagger)), raise_server_exceptions=False) as c:
            r = c.post("/api/v1/tags", json={"product_id": row["product_id"], "k": 5})
    finally:
        second.write_bytes(original)
    assert r.status_code == 200, r.text
    read = [0, 2, 3][:min(3, len(stored) - 1)]  # the stored first view, then the readable photos after it
    assert r.json()["views"] == len(read)
    expected = tagger.predict([row["title"]], [stored[read]], k=5)[0]
    assert [t["tag"] for t in r.json()["tags"]] == [t for t, _ in expected]
    assert [t["score"] for t in r.json()["tags"]] == pytest.approx([s for _, s in expected], abs=1e-3)


def test_an_upload_gets_the_tags_of_the_same_product_by_id(tag_client, api_index):  # noqa: F811
    """The upload goes through the index's own CNN: same photo + title -> the indexed product's tags."""
    row = _rows(api_index)[1]
    by_id = tag_client.post("/api/v1/tags", json={"product_id": row["product_id"], "k": 6}).json()["tags"]
    r = tag_client.post("/api/v1/tags/image", files={"file": ("p.jpg", _photo(api_index, row), "image/jpeg")},
                        data={"title": row["title"], "k": "6"})
    assert r.status_code == 200, r.text
    assert r.json()["inputs"] == ["title", "image"] and r.json()["product_id"] is None
    assert [t["tag"] for t in r.json()["tags"]] == [t["tag"] for t in by_id]
    assert [t["score"] for t in r.json()["tags"]] == pytest.approx([t["score"] for t in by_id], abs=1e-3)
    b64 = base64.b64encode(_photo(api_index, row)).decode()
    same = tag_client.post("/api/v1/tags", json={"title": row["title"], "image": b64, "k": 6}).json()
    assert same["tags"] == r.json()["tags"]


def test_title_alone_and_photo_alone_give_tags(tag_client, api_index):  # noqa: F811
    row = _rows(api_index)[2]
    title = tag_client.post("/api/v1/tags", json={"title": row["title"], "k": 3}).json()
    assert title["inputs"] == ["title"] and len(title["tags"]) == 3
    photo = tag_client.post("/api/v1/tags/image", files={"file": ("p.jpg", _photo(api_index, row), "image/jpeg")}).json()
    assert photo["inputs"] == ["image"] and len(photo["tags"]) == 5
    scores = [t["score"] for t in photo["tags"]]
    assert scores == sorted(scores, reverse=True) and all(np.isfinite(scores))


def test_bad_requests_are_4xx_with_the_error_envelope(tag_client, api_index):  # noqa: F811
    pid = _rows(api_index)[0]["product_id"]
    cases = [
        ({"product_id": "no-such-product"}, 404, "unknown_product"),
        ({}, 422, "empty_input"),
        ({"title": "   ", "image": None}, 422, "empty_input"),
        ({"product_id": pid, "title": "red dress"}, 422, "ambiguous_input"),
        ({"title": "red dress", "k": 0}, 422, "invalid_request"),
        ({"title": "red dress", "k": 51}, 422, "invalid_request"),
        ({"image": "not base64!"}, 422, "invalid_image"),
        ({"image": base64.b64encode(b"GIF89a broken").decode()}, 422, "invalid_image"),
    ]
    for body, status, code in cases:
        r = tag_client.post("/api/v1/tags", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["code"] == code, (body, r.text)
    lone_surrogate = b'{"title": "\\ud800 dress"}'  # valid JSON, but no Unicode text
    r = tag_client.post("/api/v1/tags", content=lone_surrogate, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "title", r.text
    r = tag_client.post("/api/v1/tags/image", files={"file": ("x.jpg", b"\xff\xd8\xff truncated", "image/jpeg")})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_image"
    r = tag_client.post("/api/v1/tags/image", files={"file": ("x.jpg", b"", "image/jpeg")}, data={"title": "dress"})
    assert r.status_code == 422


def test_oversize_photo_is_413(api_index, api_tagger):  # noqa: F811
    with TestClient(create_app(api_settings(api_index, tagger=api_tagger, max_image_bytes=2048)),
                    raise_server_exceptions=False) as c:
        r = c.post("/api/v1/tags/image", files={"file": ("big.jpg", b"\xff" * 4096, "image/jpeg")})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        r = c.post("/api/v1/tags", json={"image": base64.b64encode(b"\xff" * 4096).decode()})
        assert r.status_code == 413


def test_readyz_reports_the_tagger(tag_client):
    ready = tag_client.get("/readyz").json()
    assert ready["status"] == "ok"
    assert ready["tagger"]["loaded"] is True and ready["tagger"]["name"] == "tagger-tiny" and ready["tagger"]["tags"] > 5
    assert ready["tagger"]["features_match"] is True  # trained on this index's own features


def test_serve_preflight_checks_the_tagger(api_index, api_tagger, tmp_path):  # noqa: F811
    from pipelines.serve import ServeOptions, preflight

    assert preflight(api_settings(api_index, tagger=api_tagger)).endswith(f"tags by {api_tagger}")
    with pytest.raises(FileNotFoundError, match="tags train"):
        preflight(api_settings(api_index, tagger=tmp_path))
    assert ServeOptions(tagger=api_tagger).environment()["FASHIONBERT_TAGGER"] == str(api_tagger.resolve())


def test_without_a_tagger_tags_are_503_and_search_still_works(client, api_index):  # noqa: F811
    r = client.post("/api/v1/tags", json={"product_id": _rows(api_index)[0]["product_id"]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_tagger"
    assert "FASHIONBERT_TAGGER" in r.json()["error"]["message"]
    assert client.get("/readyz").json()["tagger"] == {"configured": False, "loaded": False}
    assert client.post("/api/v1/search", json={"query": "dress", "k": 2}).status_code == 200


def test_a_broken_tagger_is_503_and_a_readiness_note(api_index, tmp_path):  # noqa: F811
    with TestClient(create_app(api_settings(api_index, tagger=tmp_path / "missing")), raise_server_exceptions=False) as c:
        r = c.post("/api/v1/tags", json={"title": "red dress"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "tagger_unavailable"
        assert "tagger directory not found" in r.json()["error"]["message"]
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert ready.json()["status"].startswith("degraded: tagger unavailable") and ready.json()["tagger"]["loaded"] is False


def test_a_tagger_for_another_image_encoder_is_refused(api_index, api_tagger, tmp_path):  # noqa: F811
    """An index whose patch features have another width (e.g. ResNet-50's 2048) cannot feed this tagger."""
    import json

    from indexer.versions import IndexDir

    copy = api_index.copy(tmp_path / "idx")
    infos_path = IndexDir(copy.index_dir).current_path() / "index_infos.json"
    infos = json.loads(infos_path.read_text())
    infos["features"]["feature_dim"] = 2048
    infos["features"]["config"]["mode"] = "crop"
    infos_path.write_text(json.dumps(infos))
    with TestClient(create_app(api_settings(copy, tagger=api_tagger)), raise_server_exceptions=False) as c:
        r = c.post("/api/v1/tags", json={"title": "red dress"})
        assert r.status_code == 503 and "2048" in r.json()["error"]["message"]
        ready = c.get("/readyz").json()
        assert ready["tagger"]["usable"] is False and ready["status"].startswith("degraded: tagger unavailable")
        assert ready["tagger"]["features_match"] is False
