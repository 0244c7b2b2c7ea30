"""The patch-feature job: shard layout, bad images, resume after an interruption or a real kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fashionbert.vision import BACKBONES, DEFAULT_IMAGE_ENCODER
from indexer.catalog import read_catalog
from indexer.feature_store import FeatureStore, FeatureStoreError
from indexer.features import FeatureDirMismatchError, FeatureJobConfig, extract_catalog_features

FAST = FeatureJobConfig(batch_size=3, shard_size=4, num_workers=0)


def _shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("part-*"))}


@pytest.fixture
def catalog_with_bad_image(make_catalog):
    path = make_catalog([{"images": 2} for _ in range(5)])
    (path.parent / "images" / "2_1.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return read_catalog(path, require_image=True)


def test_shards_are_row_aligned_fp16_and_bad_images_recorded(catalog_with_bad_image, tmp_path):
    result = extract_catalog_features(catalog_with_bad_image, tmp_path / "f", FAST, progress=False)
    assert (result.num_shards, result.computed_shards, result.skipped_shards) == (3, 3, 0)
    assert len(result.bad_images) == 1
    bad = result.bad_images[0]
    assert (bad["row"], bad["product_id"], bad["image_index"]) == (2, "p002", 1)
    first = np.load(tmp_path / "f" / "part-00000.npy")
    meta = pq.read_table(tmp_path / "f" / "part-00000.parquet")
    assert first.dtype == np.float16 and first.shape == (4, 64, BACKBONES[DEFAULT_IMAGE_ENCODER])
    assert meta.column("product_id").to_pylist() == ["p000", "p000", "p001", "p001"]
    assert meta.column("image_index").to_pylist() == [0, 1, 0, 1]

    store = FeatureStore(tmp_path / "f")
    assert len(store) == 9 and store.feature_dim == BACKBONES[DEFAULT_IMAGE_ENCODER]
    assert ("p002", 1) not in store and store.image_indices("p002") == [0]
    assert np.array_equal(store.get("p001", 1), first[3])
    assert store.bad_images() == result.bad_images
    assert store.info["weights"].startswith("ImageNet")


def test_interrupted_run_resumes_to_identical_output(catalog_with_bad_image, tmp_path):
    full = extract_catalog_features(catalog_with_bad_image, tmp_path / "full", FAST, progress=False)
    partial = extract_catalog_features(catalog_with_bad_image, tmp_path / "resumed", FAST, progress=False, stop_after_shards=1)
    assert partial.computed_shards == 1 and len(list((tmp_path / "resumed").glob("part-*.npy"))) == 1
    resumed = extract_catalog_features(catalog_with_bad_image, tmp_path / "resumed", FAST, progress=False)
    assert (resumed.computed_shards, resumed.skipped_shards) == (2, 1)
    assert _shard_bytes(tmp_path / "resumed") == _shard_bytes(tmp_path / "full")
    assert full.computed_shards == 3
    again = extract_catalog_features(catalog_with_bad_image, tmp_path / "full", FAST, progress=False)
    assert (again.computed_shards, again.num_images) == (0, 0)


def test_batch_size_does_not_change_the_numbers(catalog_with_bad_image, tmp_path):
    a = tmp_path / "a"
    extract_catalog_features(catalog_with_bad_image, a, FAST, progress=False)
    b = tmp_path / "b"
    extract_catalog_features(catalog_with_bad_image, b, FeatureJobConfig(batch_size=1, shard_size=4, num_workers=0), progress=False)
    for name in ("part-00000.npy", "part-00001.npy"):
        np.testing.assert_allclose(np.load(a / name).astype(np.float32), np.load(b / name).astype(np.float32), atol=2e-2)


def test_other_config_or_changed_images_are_not_silently_reused(catalog_with_bad_image, make_catalog, tmp_path):
    out = tmp_path / "f"
    extract_catalog_features(catalog_with_bad_image, out, FAST, progress=False)
    crop = FeatureJobConfig(mode="crop", crop_size=32, batch_size=3, shard_size=4, num_workers=0)
    with pytest.raises(FeatureDirMismatchError, match="--overwrite"):
        extract_catalog_features(catalog_with_bad_image, out, crop, progress=False)
    # An edited image changes the plan fingerprint: the old shards are stale.
    from tests.conftest import write_image

    ref = catalog_with_bad_image.images[0][0]
    time.sleep(0.01)
    write_image(ref.path, seed=999)
    changed = read_catalog(ref.path.parent.parent / "catalog.parquet", require_image=True)
    with pytest.raises(FeatureDirMismatchError):
        extract_catalog_features(changed, out, FAST, progress=False)
    redone = extract_catalog_features(changed, out, FAST, progress=False, overwrite=True)
    assert redone.computed_shards == 3


def test_feature_store_on_a_directory_without_features(tmp_path):
    with pytest.raises(FeatureStoreError, match="fashionbert features"):
        FeatureStore(tmp_path)


def test_killed_process_resumes_to_identical_output(make_catalog, tmp_path):
    """SIGKILL the real CLI mid-run, rerun it, and compare with an uninterrupted run."""
    path = make_catalog([{"images": 2} for _ in range(10)])
    args = [
        sys.executable, "-m", "pipelines", "features", "--catalog", str(path), "--mode", "crop",
        "--crop-size", "64", "--shard-size", "2", "--batch-size", "1", "--workers", "0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "part-00001.npy").exists():
        assert proc.poll() is None, "the job finished or died before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list(killed.glob("part-*.npy")))
    assert 2 <= finished < 10, "the kill must land mid-run"
    subprocess.run([*args, "--out", str(killed)], env=env, check=True, capture_output=True)
    assert not list(killed.glob(".*tmp*")), "temp files of the killed run are cleaned up on resume"
    subprocess.run([*args, "--out", str(tmp_path / "clean")], env=env, check=True, capture_output=True)
    assert _shard_bytes(killed) == _shard_bytes(tmp_path / "clean")
    assert len(_shard_bytes(killed)) == 20
