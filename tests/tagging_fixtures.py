"""Shared data for the tagging tests: a small synthetic train/held-out pair with features and a tiny checkpoint.

Built once per session from the real generator, feature job and checkpoint writer (the indexer
fixtures' helpers). One image per product at a 16-px cell keeps the CNN pass to seconds; row 5
of the train split has only corrupt images, so training also sees a product without features.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fashionbert.synthetic import generate_catalog
from indexer.catalog import read_catalog
from indexer.features import FeatureJobConfig, extract_catalog_features
from tests.indexer_fixtures import make_checkpoint, make_synthetic

@contextmanager
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for the tagging tests' tiny models (restored after).

    Their matrices are too small to gain from a second thread, and on a 2-core machine shared with
    other jobs OpenMP's synchronisation between two threads made the same tiny training run 20-70x
    slower (1.1 s on one thread, 19-80 s on two) while the other core was busy.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


TAG_FEATURES = FeatureJobConfig(batch_size=16, shard_size=64, num_workers=0, max_images_per_product=1, cell_size=16)


@dataclass(frozen=True)
class TagData:
    train_catalog: Path
    train_features: Path
    test_catalog: Path
    test_features: Path
    checkpoint: Path


@pytest.fixture(scope="session")
def tag_data(tmp_path_factory: pytest.TempPathFactory) -> TagData:
    root = tmp_path_factory.mktemp("tagging")
    with one_torch_thread():
        train = make_synthetic(root / "train", n=100, seed=3)
        test = generate_catalog(root / "test", 30, seed=5, split="test", workers=1, progress=False).catalog_path
        for catalog in (train, test):
            extract_catalog_features(read_catalog(catalog, require_image=True), catalog.parent / "features", TAG_FEATURES,
                                     progress=False)
        checkpoint = make_checkpoint(train, root / "ckpt")
    return TagData(train, train.parent / "features", test, test.parent / "features", checkpoint)
