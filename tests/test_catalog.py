"""Catalog reader/validator: every bad row is reported with its row number and the good rows survive."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexer.catalog import (
    CatalogSchemaError,
    CatalogValidationError,
    EmptyCatalogError,
    read_catalog,
)


def test_good_catalog_reads_every_row_and_resolves_image_paths(make_catalog):
    path = make_catalog([{"images": 2}, {"images": 3}, {"images": 1, "extra_col": "kept"}])
    cat = read_catalog(path, check_images="decode")
    assert len(cat) == 3 and cat.issues == []
    assert [len(refs) for refs in cat.images] == [2, 3, 1]
    assert all(ref.path.is_file() and ref.path.is_absolute() for refs in cat.images for ref in refs)
    assert cat.images[1][2].open().mode == "RGB"
    assert "extra_col" in cat.table.column_names  # unknown columns are carried through
    assert cat.source_rows == [0, 1, 2]


def test_missing_required_columns_are_all_named(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"product_id": ["a"], "images": [["x.jpg"]]}), path)
    with pytest.raises(CatalogSchemaError) as err:
        read_catalog(path)
    for name in ("title", "category", "sub_category"):
        assert name in str(err.value)


def test_wrong_column_types_are_named_with_expected_and_found(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(
        pa.table({
            "product_id": pa.array([1, 2]),
            "title": ["a", "b"],
            "category": ["tops", "tops"],
            "sub_category": ["shirt", "shirt"],
            "images": pa.array([[1], [2]], pa.list_(pa.int64())),
            "tags": pa.array(["x", "y"]),
        }),
        path,
    )
    with pytest.raises(CatalogSchemaError) as err:
        read_catalog(path)
    msg = str(err.value)
    assert "'product_id' must be string, found int64" in msg
    assert "'images' must be list<string>" in msg
    assert "'tags' must be list<string>, found string" in msg


def test_missing_duplicate_and_empty_rows_are_reported_and_dropped(make_catalog):
    path = make_catalog([
        {"product_id": "a"},
        {"product_id": None},
        {"product_id": "   "},
        {"product_id": "a"},
        {"product_id": "b", "title": "  "},
        {"product_id": "c", "category": None},
        {"product_id": "d"},
    ])
    cat = read_catalog(path)
    assert cat.product_ids == ["a", "d"]
    assert cat.source_rows == [0, 6]
    by_row = {issue.row: issue for issue in cat.issues}
    assert by_row[1].reason == "missing product_id" and by_row[2].reason == "missing product_id"
    assert "duplicate product_id (first seen in row 0)" in by_row[3].reason
    assert by_row[4].reason == "empty title" and by_row[4].product_id == "b"
    assert by_row[5].reason == "empty category"
    assert all(issue.dropped for issue in cat.issues)
    assert "row 3 (product_id='a')" in str(by_row[3])


def _corrupt(path):
    path.write_bytes(b"this is not a jpeg")


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [_corrupt, _truncate], ids=["corrupt", "truncated"])
def test_bad_image_is_skipped_and_row_kept_with_its_other_images(make_catalog, damage):
    path = make_catalog([{"images": 2}, {"images": 2}])
    damage(path.parent / "images" / "1_0.jpg")
    cat = read_catalog(path, check_images="decode")
    assert len(cat) == 2
    assert [ref.image_index for ref in cat.images[1]] == [1]
    (issue,) = cat.issues
    assert (issue.row, issue.image_index, issue.dropped) == (1, 0, False)
    assert "unreadable image" in issue.reason


def test_truncated_image_passes_exists_check_but_fails_decode(make_catalog):
    path = make_catalog([{"images": 1}])
    _truncate(path.parent / "images" / "0_0.jpg")
    assert read_catalog(path, check_images="exists").issues == []
    with pytest.raises(OSError):
        read_catalog(path, check_images="exists").images[0][0].open()


def test_row_without_usable_image_dropped_only_when_images_required(make_catalog):
    path = make_catalog([{"images": 1}, {"images": 1}, {"images": 0}])
    (path.parent / "images" / "1_0.jpg").unlink()
    lenient = read_catalog(path)
    assert lenient.product_ids == ["p000", "p001", "p002"]  # text-only products stay indexable
    assert lenient.images[1] == [] and "file not found" in lenient.issues[0].reason
    strict_images = read_catalog(path, require_image=True)
    assert strict_images.product_ids == ["p000"]
    reasons = {(i.row, i.reason) for i in strict_images.issues if i.dropped}
    assert reasons == {(1, "no usable image"), (2, "no images listed")}


def test_inline_image_bytes_in_hugging_face_layout(make_catalog, tmp_path):
    from tests.conftest import write_image

    good = write_image(tmp_path / "inline.jpg", seed=5).read_bytes()
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([
        ("product_id", pa.string()), ("title", pa.string()), ("category", pa.string()),
        ("sub_category", pa.string()), ("images", pa.list_(struct)),
    ])
    path = make_catalog(
        [
            {"images": [{"bytes": good, "path": None}]},
            {"images": [{"bytes": b"garbage", "path": None}, {"bytes": None, "path": "inline.jpg"}]},
        ],
        schema=schema,
    )
    cat = read_catalog(path, check_images="decode")
    assert cat.images[0][0].open().size == (96, 96)
    assert [ref.image_index for ref in cat.images[1]] == [1]  # bytes were bad, the path entry is fine
    assert cat.images[1][0].path == tmp_path / "inline.jpg"
    assert len(cat.issues) == 1 and cat.issues[0].row == 1


def test_strict_mode_fails_listing_every_issue(make_catalog):
    path = make_catalog([{"product_id": "a"}, {"product_id": "a"}, {"title": ""}])
    with pytest.raises(CatalogValidationError) as err:
        read_catalog(path, strict=True)
    assert [i.row for i in err.value.issues] == [1, 2]
    assert "2 bad row(s)" in str(err.value)


def test_empty_catalog_and_all_bad_rows_are_clear_errors(make_catalog, tmp_path):
    empty = tmp_path / "empty.parquet"
    schema = pa.schema([(n, pa.string()) for n in ("product_id", "title", "category", "sub_category")])
    pq.write_table(schema.empty_table().append_column("images", pa.array([], pa.list_(pa.string()))), empty)
    with pytest.raises(EmptyCatalogError, match="no rows"):
        read_catalog(empty)
    all_bad = make_catalog([{"title": ""}, {"title": None}], name="bad.parquet")
    with pytest.raises(EmptyCatalogError, match="none of its 2 rows"):
        read_catalog(all_bad)


def test_not_a_parquet_file_and_missing_file(tmp_path):
    bogus = tmp_path / "c.parquet"
    bogus.write_text("hello")
    with pytest.raises(CatalogSchemaError, match="not a readable Parquet"):
        read_catalog(bogus)
    with pytest.raises(FileNotFoundError):
        read_catalog(tmp_path / "nope.parquet")


def test_report_is_written_as_json_lines(make_catalog, tmp_path):
    import json

    path = make_catalog([{"product_id": "a"}, {"product_id": "a"}])
    cat = read_catalog(path)
    lines = cat.write_report(tmp_path / "r" / "issues.jsonl").read_text().splitlines()
    assert [json.loads(line)["row"] for line in lines] == [1]
