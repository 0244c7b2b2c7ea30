"""The indexing job end to end: full build, publish, incremental update, faults."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashionbert.encoder import CheckpointError, FashionBert
from indexer.ann import load_index
from indexer.catalog import CatalogSchemaError, EmptyCatalogError
from indexer.embeddings import faiss_id
from indexer.features import FeatureJobConfig
from indexer.job import INFOS_FILE, IncrementalUpdateError, build_index_version, gather_vectors, update_index_version
from indexer.version_index import AnnConfig
from indexer.versions import IndexDir
from tests.indexer_fixtures import job, make_checkpoint, make_synthetic

REQUIRED_INFO_KEYS = {"version", "factory", "params", "count", "dim", "metric", "recall_at_10", "checkpoint_sha256", "build_seconds", "gpu"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    catalog = make_synthetic(root / "cat")
    ckpt = make_checkpoint(catalog, root / "ckpt")
    out = root / "index"
    summary = build_index_version(job(catalog, ckpt, out))
    return {"root": root, "catalog": catalog, "ckpt": ckpt, "out": out, "summary": summary}


def _vectors_by_id(version_dir: Path, kind: str = "product") -> dict[str, np.ndarray]:
    ids = pq.read_table(version_dir / "ids.parquet")
    vecs = gather_vectors(version_dir, ids, kinds=(kind,))[kind]
    return dict(zip(ids.column("product_id").to_pylist(), vecs))


def test_full_build_publishes_a_complete_version(data):
    out, summary = data["out"], data["summary"]
    assert IndexDir(out).current() == "v0001" == summary.version
    live = out / "v0001"
    infos = json.loads((live / INFOS_FILE).read_text())
    assert REQUIRED_INFO_KEYS <= set(infos) and infos["version"] == "v0001"
    assert infos["count"] == 24 and infos["metric"] == "inner_product" and infos["factory"] == "Flat"
    assert infos["recall_at_10"] == pytest.approx(1.0) and infos["gpu"] is False
    assert len(infos["checkpoint_sha256"]) == 64
    ids = pq.read_table(live / "ids.parquet")
    assert ids.num_rows == 24 and "merchant" in ids.column_names  # unknown columns carried through
    assert "images" not in ids.column_names and all(Path(p).is_file() for p in ids.column("image_paths").to_pylist()[0])
    # The product whose images are all corrupt is indexed from its text, marked, and absent from the image index.
    broken = ids.column("product_id").to_pylist()[5]
    row = ids.filter(pa.compute.equal(ids.column("product_id"), broken)).to_pylist()[0]
    assert row["has_image"] is False and row["num_images"] == 0
    image_index, product_index = load_index(live / "image.faiss"), load_index(live / "index.faiss")
    assert (image_index.ntotal, product_index.ntotal) == (23, 24)
    # A product's own vector finds itself first (ids are the stable hash of the product id).
    vecs = _vectors_by_id(live)
    pid = ids.column("product_id").to_pylist()[3]
    _, found = product_index.search(vecs[pid][None], 1)
    assert found[0, 0] == faiss_id(pid)
    assert set(summary.stages) == {"catalog", "features", "embed", "faiss"}
    assert summary.stages["features"].items > 60  # every readable view of 24 products


def test_vectors_are_the_models_encodings(data):
    live = data["out"] / "v0001"
    model = FashionBert.from_pretrained(data["ckpt"])
    ids = pq.read_table(live / "ids.parquet")
    title_vecs = gather_vectors(live, ids, kinds=("title",))["title"]
    np.testing.assert_allclose(title_vecs[:4], model.encode_text(ids.column("title").to_pylist()[:4], segment="T"), atol=1e-5)
    norms = np.linalg.norm(gather_vectors(live, ids, kinds=("product",))["product"], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def _changes(data, name: str = "changes.parquet") -> tuple[Path, list[str], list[str], list[str]]:
    catalog = pq.read_table(data["catalog"])
    rows = catalog.to_pylist()
    replaced = [dict(rows[0], title=rows[0]["title"] + " 新款"), dict(rows[1], title="plain white tee")]
    added = [dict(rows[2], product_id="new-0", title="green dotted dress"), dict(rows[3], product_id="new-1", title="black leather boots 2026")]
    deleted = [rows[7]["product_id"], rows[8]["product_id"]]
    upserts = [dict(r, op="upsert") for r in replaced + added]
    deletes = [{"product_id": p, "op": "delete"} for p in [*deleted, "never-indexed"]]
    schema = catalog.schema.append(pa.field("op", pa.string()))
    path = data["catalog"].parent / name
    pq.write_table(pa.Table.from_pylist(upserts + deletes, schema=schema), path)
    return path, [r["product_id"] for r in replaced], [r["product_id"] for r in added], deleted


def _merged_catalog(data, replaced_rows: list[dict], added: list[dict], deleted: list[str]) -> Path:
    rows = [r for r in pq.read_table(data["catalog"]).to_pylist() if r["product_id"] not in deleted]
    by_id = {r["product_id"]: r for r in replaced_rows}
    rows = [by_id.get(r["product_id"], r) for r in rows] + added
    path = data["catalog"].parent / "merged.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(data["catalog"])), path)
    return path


def test_incremental_update_equals_a_full_rebuild(data, tmp_path):
    changes, replaced, added, deleted = _changes(data)
    summary = update_index_version(job(None, data["ckpt"], data["out"]), changes)
    assert summary.version == "v0002" and IndexDir(data["out"]).current() == "v0002"
    infos = summary.infos
    assert (infos["added"], infos["replaced"], infos["removed"]) == (2, 2, 2)
    assert infos["missing_deletes"] == ["never-indexed"] and infos["parent"] == "v0001"
    assert summary.stages["embed"].items == 4  # only the changed products were encoded
    new = data["out"] / "v0002"
    assert (data["out"] / "v0001" / "index.faiss").is_file(), "the previous version stays intact"
    index = load_index(new / "index.faiss")
    assert index.ntotal == 24
    vecs = _vectors_by_id(new)
    assert set(added) <= set(vecs) and not set(deleted) & set(vecs)
    for pid in deleted:  # removed ids never come back
        _, found = index.search(_vectors_by_id(data["out"] / "v0001")[pid][None], 24)
        assert faiss_id(pid) not in found[0]
    # Same vectors as a full build of the merged catalog.
    rows = {r["product_id"]: r for r in pq.read_table(changes).to_pylist() if r["op"] == "upsert"}
    replaced_rows = [{k: v for k, v in rows[p].items() if k != "op"} for p in replaced]
    added_rows = [{k: v for k, v in rows[p].items() if k != "op"} for p in added]
    merged = _merged_catalog(data, replaced_rows, added_rows, deleted)
    full = build_index_version(job(merged, data["ckpt"], tmp_path / "full"))
    full_vecs = _vectors_by_id(full.directory)
    assert set(full_vecs) == set(vecs)
    for pid, v in full_vecs.items():
        np.testing.assert_allclose(vecs[pid], v, atol=1e-5, err_msg=pid)
    for pid in replaced + added:  # and the index answers with them
        _, found = index.search(vecs[pid][None], 1)
        assert found[0, 0] == faiss_id(pid)
    # The re-ranker's patch features moved with the rows too (linked for kept rows, new for upserts).
    def patches(version: Path) -> dict[str, np.ndarray]:
        return {r["product_id"]: np.load(version / "emb" / "patches" / f"part-{r['shard']:05d}.npy")[r["offset"]]
                for r in pq.read_table(version / "ids.parquet").to_pylist()}

    updated, rebuilt = patches(new), patches(full.directory)
    assert set(updated) == set(rebuilt)
    for pid, p in rebuilt.items():
        np.testing.assert_array_equal(updated[pid], p, err_msg=pid)


def test_update_across_checkpoints_is_refused(data, tmp_path):
    other = make_checkpoint(data["catalog"], tmp_path / "other", seed=1)
    changes, *_ = _changes(data, "changes2.parquet")
    before = IndexDir(data["out"]).current()
    with pytest.raises(IncrementalUpdateError, match="--rebuild"):
        update_index_version(job(None, other, data["out"]), changes)
    assert IndexDir(data["out"]).current() == before


@pytest.mark.parametrize(("factory", "rebuilt"), [("HNSW32", True), ("IVF4,Flat", False)])
def test_update_of_hnsw_rebuilds_and_ivf_updates_in_place(data, tmp_path, factory, rebuilt):
    out = tmp_path / "idx"
    cfg = job(data["catalog"], data["ckpt"], out, ann=AnnConfig(factory=factory, recall_queries=64))
    build_index_version(cfg)
    changes, _, added, deleted = _changes(data, f"changes-{factory[:4]}.parquet")
    summary = update_index_version(cfg, changes)
    info = summary.infos["indexes"]["product"]
    assert info["factory"] == factory and info["rebuilt"] is rebuilt and info["count"] == 24
    index = load_index(summary.directory / "index.faiss")
    vecs = _vectors_by_id(summary.directory)
    for pid in added:
        _, found = index.search(vecs[pid][None], 3)
        assert faiss_id(pid) in found[0]


def test_second_build_reuses_features_of_unchanged_images(data, tmp_path):
    out = tmp_path / "idx"
    build_index_version(job(data["catalog"], data["ckpt"], out))
    table = pq.read_table(data["catalog"])
    extra = table.slice(0, 1).to_pylist()[0] | {"product_id": "extra-1"}
    bigger = data["catalog"].parent / "bigger.parquet"
    pq.write_table(pa.concat_tables([table, pa.Table.from_pylist([extra], schema=table.schema)]), bigger)
    summary = build_index_version(job(bigger, data["ckpt"], out))
    assert summary.stages["features"].items == 0  # its image files are known: nothing recomputed
    assert summary.count == 25 and len(list((out / "cache").glob("features-*"))) == 1


def test_bad_inputs_are_clear_errors(data, tmp_path):
    with pytest.raises(CheckpointError):
        build_index_version(job(data["catalog"], tmp_path / "missing-ckpt", tmp_path / "o"))
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(data["catalog"]).slice(0, 0), empty)
    with pytest.raises(EmptyCatalogError):
        build_index_version(job(empty, data["ckpt"], tmp_path / "o"))
    no_title = tmp_path / "no_title.parquet"
    pq.write_table(pq.read_table(data["catalog"]).drop_columns(["title", "category"]), no_title)
    with pytest.raises(CatalogSchemaError, match="title") as err:
        build_index_version(job(no_title, data["ckpt"], tmp_path / "o"))
    assert "category" in str(err.value)
    with pytest.raises(IncrementalUpdateError, match="full build first"):
        update_index_version(job(None, data["ckpt"], tmp_path / "nothing"), tmp_path / "x.parquet")
    assert not (tmp_path / "o" / "CURRENT").exists()


def _cli(data, out: Path, catalog: Path, **popen: object) -> list[str]:
    return [
        sys.executable, "-m", "pipelines", "index", "--catalog", str(catalog), "--checkpoint", str(data["ckpt"]),
        "--out", str(out), "--shard-size", "2", "--batch-size", "1", "--device", "cpu",
    ]


def _second_catalog(data) -> Path:
    table = pq.read_table(data["catalog"])
    path = data["catalog"].parent / "nightly.parquet"
    titles = pa.array([t + " v2" for t in table.column("title").to_pylist()])
    pq.write_table(table.set_column(table.schema.get_field_index("title"), "title", titles), path)
    return path


@pytest.mark.slow
def test_killed_build_leaves_previous_version_serving_and_resumes(data, tmp_path):
    out = tmp_path / "idx"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(data, out, data["catalog"]), env=env, check=True, capture_output=True)
    assert IndexDir(out).current() == "v0001"
    nightly = _second_catalog(data)
    proc = subprocess.Popen(_cli(data, out, nightly), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not list((out / ".staging").glob("*/meta/part-00001.parquet")):
        assert proc.poll() is None, "the build finished or died before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    staging = next(p for p in (out / ".staging").iterdir() if (p / "meta").is_dir())
    finished = sorted((staging / "meta").glob("part-*.parquet"))
    assert 2 <= len(finished) < 12, "the kill must land mid-embedding"
    first_mtime = finished[0].stat().st_mtime_ns
    assert IndexDir(out).current() == "v0001" and load_index(out / "v0001" / "index.faiss").ntotal == 24
    subprocess.run(_cli(data, out, nightly), env=env, check=True, capture_output=True)
    assert IndexDir(out).current() == "v0002"
    assert (IndexDir(out).current_path() / "meta" / finished[0].name).stat().st_mtime_ns == first_mtime, "finished shards were reused"
    titles = pq.read_table(out / "v0002" / "ids.parquet").column("title").to_pylist()
    assert all(t.endswith(" v2") for t in titles)


@pytest.mark.slow
def test_disk_full_during_a_build_leaves_previous_version_serving(data, tmp_path):
    out = tmp_path / "idx"
    subprocess.run(_cli(data, out, data["catalog"]), check=True, capture_output=True)

    def small_disk() -> None:  # a real write failure: the kernel refuses files over 4 KiB (EFBIG)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    nightly = _second_catalog(data)
    failed = subprocess.run(_cli(data, out, nightly), preexec_fn=small_disk, capture_output=True, text=True)
    assert failed.returncode != 0 and "error: could not write" in failed.stderr and "disk full" in failed.stderr
    assert IndexDir(out).current() == "v0001" and load_index(out / "v0001" / "index.faiss").ntotal == 24
    assert not list(out.rglob(".*.tmp*")), "no half-written file is left behind"
    subprocess.run(_cli(data, out, nightly), check=True, capture_output=True)
    assert IndexDir(out).current() == "v0002"


def test_recall_below_target_warns(data, caplog):
    from indexer.version_index import KindIndexInfo, _warn_recall

    with caplog.at_level("WARNING"):
        _warn_recall("product", KindIndexInfo("IVF64,PQ8x8", {"nprobe": 4}, 10, 32, 0.81, 0.1))
        _warn_recall("title", KindIndexInfo("Flat", {}, 10, 32, 1.0, 0.1))
    assert len(caplog.records) == 1 and "0.810 < 0.95" in caplog.text


def test_product_vector_eval_scores_what_the_index_serves(data):
    from pipelines.product_vector_eval import evaluate_product_vectors

    features = next((data["out"] / "cache").glob("features-*"))
    model = FashionBert.from_pretrained(data["ckpt"])
    metrics = evaluate_product_vectors(model, data["catalog"], features, ("joint", "t2i"), echo=lambda s: None)
    for preset in ("joint", "t2i"):
        assert 0.0 <= metrics[f"products.{preset}.t2p.mrr"] <= 1.0
        assert metrics[f"products.{preset}.t2p.recall@100"] == 1.0  # 24 products: everything is in the top 100
    assert metrics["products.joint.t2p.mrr"] != metrics["products.t2i.t2p.mrr"]
    # Every shopper query of the catalog is scored once.
    assert metrics["products.joint.t2p.n_queries"] == sum(len(q) for q in pq.read_table(data["catalog"]).column("queries").to_pylist())


def test_index_extracts_photos_with_the_checkpoints_image_encoder(data, tmp_path):
    """`fashionbert index` without --encoder uses the CNN the checkpoint was trained on (config.json says);
    one it cannot read is refused before any photo is read."""
    import shutil

    from indexer.embeddings import FeatureDimMismatchError
    from pipelines.index import IndexOptions, job_config

    def encoder_of(checkpoint: Path, **kw: object) -> tuple[str, str]:
        cfg = job_config(IndexOptions(out=tmp_path / "o", checkpoint=checkpoint, catalog=data["catalog"], **kw))
        return cfg.feature_config.encoder, cfg.feature_config.mode

    assert encoder_of(data["ckpt"]) == ("efficientnet_lite0_multiscale", "grid")
    assert encoder_of(data["ckpt"], encoder="resnet50", mode="crop") == ("resnet50", "crop")  # asked for: as asked
    older = tmp_path / "older"  # a checkpoint saved before the encoder was recorded: the head map it was trained on
    shutil.copytree(data["ckpt"], older)
    config = json.loads((older / "config.json").read_text())
    del config["image_encoder"], config["patch_mode"]
    (older / "config.json").write_text(json.dumps(config))
    assert encoder_of(older) == ("efficientnet_lite0", "grid")
    with pytest.raises(FeatureDimMismatchError, match=r"reads 432-d patch features .* image encoder resnet50 gives 2048-d"):
        build_index_version(job(data["catalog"], data["ckpt"], tmp_path / "wrong",
                                feature_config=FeatureJobConfig(encoder="resnet50", num_workers=0)))
    assert not (tmp_path / "wrong" / "CURRENT").exists() and not list((tmp_path / "wrong").glob("**/features-*"))
