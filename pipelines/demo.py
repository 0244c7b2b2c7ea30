"""The README's main job on the embedded default data, end to end.

synthetic train/test catalogs -> a WordPiece tokenizer trained on the train
catalog's text -> patch features for both splits -> the ``tiny`` model
pretrained for a bounded time -> evaluation on the held-out split -> the
tag recommender trained on the train split (bounded by ``tagger_minutes``)
and evaluated on the held-out one -> the search index of the train catalog
-> the API and demo page with tag suggestions (unless
``serve=False``). Every stage reuses what an earlier run left (same inputs,
same settings), so a second run starts serving in seconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fashionbert.text import load_tokenizer, train_tokenizer
from fashionbert.vision import DEFAULT_IMAGE_ENCODER
from indexer.catalog import read_catalog
from indexer.features import FeatureJobConfig, FeatureJobResult, extract_catalog_features
from pipelines import demo_stages as stages

SYNTH_PARAMS_FILE = "synth_params.json"
TOKENIZER_SOURCE_FILE = "trained_on.json"


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = Path("fashionbert-demo")
    train_products: int = 2000
    test_products: int = 500
    seed: int = 0
    encoder: str = DEFAULT_IMAGE_ENCODER
    mode: str = "grid"
    workers: int | None = None
    feature_workers: int = 2
    shard_size: int = 1024
    minutes: float = 10.0  # pretraining budget
    steps: int = 2000  # pretraining step cap (the time budget usually ends it first on a CPU)
    batch_size: int = 64
    eval_queries: int = 300  # random-100 queries per direction (1,000 in the paper's protocol)
    serve: bool = True
    host: str = "127.0.0.1"
    port: int = 8000
    model_overrides: dict = field(default_factory=dict)  # a smaller trunk in tests
    tagger_minutes: float = 2.0  # tag recommender training budget
    tagger_epochs: int = 60


@dataclass
class DemoResult:
    catalogs: dict[str, Path] = field(default_factory=dict)
    features: dict[str, FeatureJobResult] = field(default_factory=dict)
    tokenizer: Path | None = None
    checkpoint: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    index_dir: Path | None = None
    tagger: Path | None = None
    tag_metrics: dict[str, float] = field(default_factory=dict)
    examples: list[tuple[str, list[str]]] = field(default_factory=list)

    def summary(self) -> str:
        lines = ["demo: done", f"  tokenizer: {self.tokenizer}", f"  checkpoint: {self.checkpoint}",
                 f"  tagger: {self.tagger}", f"  index: {self.index_dir}"]
        for split, path in self.catalogs.items():
            f = self.features[split]
            lines.append(f"  {split}: catalog {path}")
            lines.append(
                f"  {split}: features {f.out_dir} ({f.num_shards} shard(s), "
                f"{len(f.bad_images)} bad image(s), weights: {f.weights})"
            )
        return "\n".join(lines)


def ensure_synthetic_catalog(
    out_dir: Path, products: int, seed: int, split: str, workers: int | None, echo: Callable[[str], None]
) -> Path:
    """Generate the catalog unless ``out_dir`` already holds one made with the same parameters."""
    from fashionbert.synthetic import generate_catalog

    params = {"products": products, "seed": seed, "split": split}
    marker = out_dir / SYNTH_PARAMS_FILE
    catalog = out_dir / "catalog.parquet"
    if catalog.is_file() and marker.is_file() and json.loads(marker.read_text()) == params:
        echo(f"synth {split}: reusing {catalog}")
        return catalog
    result = generate_catalog(out_dir, products, seed=seed, split=split, workers=workers)  # type: ignore[arg-type]
    marker.write_text(json.dumps(params))
    echo(f"synth {split}: {result.n_products} products, {result.n_images} images in {result.seconds:.1f} s -> {catalog}")
    return result.catalog_path


def ensure_tokenizer(out_dir: Path, catalog_path: Path, echo: Callable[[str], None], vocab_size: int = 8000) -> Path:
    """Train a WordPiece tokenizer on the catalog's text unless one trained on this exact file exists."""
    source = {"catalog_sha256": hashlib.sha256(catalog_path.read_bytes()).hexdigest(), "vocab_size": vocab_size}
    marker = out_dir / TOKENIZER_SOURCE_FILE
    if marker.is_file() and json.loads(marker.read_text()) == source:
        tokenizer = load_tokenizer(out_dir)
        echo(f"tokenizer: reusing {out_dir} ({len(tokenizer)} tokens)")
        return out_dir
    texts = read_catalog(catalog_path, check_images="none").texts()
    tokenizer = train_tokenizer(texts, out_dir, vocab_size=vocab_size)
    marker.write_text(json.dumps(source))
    echo(f"tokenizer: trained on {len(texts)} texts, {len(tokenizer)} tokens -> {out_dir}")
    return out_dir


def run_demo(config: DemoConfig = DemoConfig(), echo: Callable[[str], None] = print) -> DemoResult:
    result = DemoResult()
    # Different seeds for the two splits; the split itself keeps attribute combinations disjoint.
    splits = {"train": (config.train_products, config.seed), "test": (config.test_products, config.seed + 1)}
    for split, (products, seed) in splits.items():
        data_dir = config.workdir / "data" / split
        catalog_path = ensure_synthetic_catalog(data_dir, products, seed, split, config.workers, echo)
        catalog = read_catalog(catalog_path, require_image=True)
        job = FeatureJobConfig(
            encoder=config.encoder, mode=config.mode, seed=config.seed,
            num_workers=config.feature_workers, shard_size=config.shard_size,
        )
        features = extract_catalog_features(catalog, data_dir / "features", job)
        echo(
            f"features {split}: {features.num_images} images computed in {features.seconds:.1f} s, "
            f"{features.skipped_shards} shard(s) reused -> {features.out_dir}"
        )
        result.catalogs[split] = catalog_path
        result.features[split] = features
        if split == "train":
            result.tokenizer = ensure_tokenizer(config.workdir / "tokenizer", catalog_path, echo)
    train, test = (config.workdir / "data" / s for s in ("train", "test"))
    result.checkpoint = stages.ensure_checkpoint(
        config.workdir / "runs" / "tiny", result.catalogs["train"], train / "features", result.tokenizer,  # type: ignore[arg-type]
        minutes=config.minutes, steps=config.steps, batch_size=config.batch_size, seed=config.seed,
        model_overrides=config.model_overrides, echo=echo,
    )
    result.metrics = stages.ensure_eval(result.checkpoint, result.catalogs["test"], test / "features",
                                        config.workdir / "runs" / "tiny" / "eval", queries=config.eval_queries, echo=echo)
    result.tagger = stages.ensure_tagger(config.workdir / "runs" / "tagger", result.catalogs["train"], train / "features",
                                         result.checkpoint, minutes=config.tagger_minutes, epochs=config.tagger_epochs,
                                         seed=config.seed, echo=echo)
    result.tag_metrics = stages.ensure_tag_eval(result.tagger, result.catalogs["test"], test / "features",
                                                config.workdir / "runs" / "tagger" / "eval", echo=echo)
    result.index_dir = stages.ensure_index(config.workdir / "index", result.catalogs["train"], train / "features",
                                           result.checkpoint, echo)
    if config.serve:
        stages.serve(result.index_dir, config.host, config.port, echo, tagger=result.tagger)
    else:
        result.examples = stages.example_results(result.index_dir)
        echo("example queries (top 3):")
        stages.print_examples(result.examples, echo)
    return result
