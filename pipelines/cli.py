"""The ``fashionbert`` console script: thin typer wrappers over library and job functions.

Every subcommand fails with a one-line reason and a non-zero exit code; the
traceback is shown only with ``fashionbert --debug ...``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

app = typer.Typer(
    name="fashionbert",
    help="FashionBERT-style cross-modal e-commerce search: data, features, training, indexing, serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}
F = TypeVar("F", bound=Callable[..., Any])


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on failure.")] = False,
) -> None:
    _state["debug"] = debug or os.environ.get("FASHIONBERT_DEBUG") == "1"


def one_line_errors(fn: F) -> F:
    """Turn any exception into ``error: <reason>`` and exit code 1 (unless --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - the CLI boundary
            if _state["debug"]:
                raise
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@one_line_errors
def synth(
    out: Annotated[Path, typer.Option(help="Output directory (catalog.parquet, images/, query_log.parquet).")],
    products: Annotated[int, typer.Option(min=1, help="Number of products.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same catalog.")] = 0,
    split: Annotated[str, typer.Option(help="train, or test (attribute combinations unseen in train).")] = "train",
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes (default: all cores).")] = None,
    categories: Annotated[list[str] | None, typer.Option("--category", help="Keep only this category (repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude-category", help="Drop this category (repeatable).")] = None,
) -> None:
    """Generate the synthetic fashion catalog (the embedded default data).

    Example: fashionbert synth --out data/train --products 2000 --seed 0
             fashionbert synth --out data/test --products 500 --seed 1 --split test
    """
    from fashionbert.synthetic import generate_catalog

    if split not in ("train", "test"):
        raise ValueError(f"--split must be 'train' or 'test', not {split!r}")
    result = generate_catalog(
        out, products, seed=seed, split=split, workers=workers,  # type: ignore[arg-type]
        categories=categories or None, exclude_categories=exclude or None,
    )
    typer.echo(
        f"synth: {result.n_products} products, {result.n_images} images in {result.seconds:.1f} s "
        f"-> {result.catalog_path} (query log {result.query_log_path})"
    )


@app.command()
@one_line_errors
def validate(
    catalog: Annotated[Path, typer.Option(help="Catalog Parquet file.")],
    strict: Annotated[bool, typer.Option(help="Fail on the first bad row instead of skipping bad rows.")] = False,
    images: Annotated[str, typer.Option(help="Image check: none | exists | decode (full decode, catches truncation).")] = "decode",
    report: Annotated[Path | None, typer.Option(help="Write every issue as JSON lines here.")] = None,
) -> None:
    """Validate a catalog: report every bad row with its 0-based row number and reason.

    Example: fashionbert validate --catalog data/train/catalog.parquet --report issues.jsonl
    """
    from indexer.catalog import read_catalog

    if images not in ("none", "exists", "decode"):
        raise ValueError(f"--images must be none, exists or decode, not {images!r}")
    cat = read_catalog(catalog, strict=strict, check_images=images)  # type: ignore[arg-type]
    for issue in cat.issues:
        typer.echo(str(issue))
    if report is not None:
        cat.write_report(report)
    typer.echo(f"validate: {cat.summary()}")


@app.command()
@one_line_errors
def features(
    catalog: Annotated[Path, typer.Option(help="Catalog Parquet file.")],
    out: Annotated[Path, typer.Option(help="Output directory for the feature shards.")],
    encoder: Annotated[str, typer.Option(help="efficientnet_lite0 (ImageNet weights, offline) or resnet50.")] = "efficientnet_lite0",
    mode: Annotated[str, typer.Option(help="grid (one CNN pass, 8x8 map cells) or crop (64 crops, FashionBERT's way).")] = "grid",
    weights: Annotated[Path | None, typer.Option(help="Local CNN weights file (.pth/.safetensors); resnet50 is random without one.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per CNN batch (default: 8 on CPU, 64 on GPU).")] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="Images per shard (the unit of resume).")] = 1024,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader workers decoding images.")] = 2,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    crop_size: Annotated[int, typer.Option(min=8, help="Crop mode: side each patch is resized to.")] = 224,
    max_images: Annotated[int | None, typer.Option(min=1, help="Use at most this many images per product.")] = None,
    strict: Annotated[bool, typer.Option(help="Fail on any bad catalog row.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace features of another catalog/config in --out.")] = False,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Extract 8x8 patch features for every catalog image into resumable fp16 shards.

    Example: fashionbert features --catalog data/train/catalog.parquet --out data/train/features
    """
    from indexer.catalog import read_catalog
    from indexer.features import FeatureJobConfig, extract_catalog_features

    cat = read_catalog(catalog, strict=strict, check_images="exists", require_image=True)
    typer.echo(f"catalog: {cat.summary()}")
    for issue in cat.issues:
        typer.echo(f"  skipped {issue}")
    config = FeatureJobConfig(
        encoder=encoder, mode=mode, weights_path=str(weights) if weights else None, crop_size=crop_size,
        seed=seed, max_images_per_product=max_images, batch_size=batch_size, shard_size=shard_size,
        num_workers=workers, device=device,
    )
    result = extract_catalog_features(cat, out, config, overwrite=overwrite)
    _print_features_result(result)


def _print_features_result(result: Any) -> None:
    typer.echo(f"image encoder weights: {result.weights}")
    for bad in result.bad_images:
        typer.echo(f"  bad image: row {bad['row']} {bad['product_id']} image {bad['image_index']}: {bad['reason']}")
    typer.echo(
        f"features: {result.num_images} images in {result.seconds:.1f} s "
        f"({result.images_per_second:.1f} img/s), {result.computed_shards} shard(s) written, "
        f"{result.skipped_shards} reused, {len(result.bad_images)} bad -> {result.out_dir}"
    )


@app.command()
@one_line_errors
def pretrain(
    catalog: Annotated[Path, typer.Option(help="Training catalog Parquet.")],
    features: Annotated[Path, typer.Option(help="Its patch-feature directory (fashionbert features).")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory (also holds the resumable training state).")],
    config: Annotated[str, typer.Option("--config", help="Model size: tiny | small | base.")] = "tiny",
    steps: Annotated[int, typer.Option(min=1)] = 2000,
    max_minutes: Annotated[float | None, typer.Option(help="Stop after this many minutes (whichever comes first).")] = None,
    batch_size: Annotated[int, typer.Option(min=2)] = 64,
    grad_accum: Annotated[int, typer.Option(min=1)] = 1,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: tiny 1e-3, small 5e-4, base 1e-4).")] = None,
    warmup_steps: Annotated[int, typer.Option(min=0)] = 100,
    loss_weighting: Annotated[str, typer.Option(help="adaptive-grad | adaptive-softmax | fixed")] = "adaptive-grad",
    tasks: Annotated[str, typer.Option(help="Comma-separated subset of mlm,mpm,tia,itc.")] = "mlm,mpm,tia,itc",
    clean_fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="Rows kept unmasked for TIA (0: FashionBERT's single corrupted pass).")] = 0.0,
    tokenizer: Annotated[Path | None, typer.Option(help="Local tokenizer folder (default: train one on the catalog).")] = None,
    bert_init: Annotated[Path | None, typer.Option(help="Local BERT folder to initialise the trunk.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    save_every: Annotated[int, typer.Option(min=1, help="Steps between resumable training-state saves.")] = 200,
) -> None:
    """Pretrain FashionBERT (MLM + MPM + TIA + ITC with adaptive loss weights); resumes after a kill.

    Example: fashionbert pretrain --catalog data/train/catalog.parquet --features data/train/features \
                 --out runs/tiny --config tiny --max-minutes 20
    """
    from pipelines.pretrain import PretrainConfig, pretrain as run_pretrain

    cfg = PretrainConfig(
        catalog=catalog, features=features, out=out, model_config=config, steps=steps, max_minutes=max_minutes,
        batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_steps=warmup_steps, loss_weighting=loss_weighting,
        tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()), tokenizer=tokenizer, bert_init=bert_init,
        clean_fraction=clean_fraction,
        seed=seed, device=device, save_every=save_every,
    )
    result = run_pretrain(cfg, echo=typer.echo)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
    typer.echo(
        f"pretrain: {result.steps_done} steps (stopped by {result.stopped_by}) in {result.seconds / 60:.1f} min, "
        f"{result.samples_per_second:.1f} samples/s, losses "
        + ", ".join(f"{k}={v:.3f}" for k, v in result.last_losses.items())
        + f" -> {result.checkpoint}"
    )


@app.command("eval")
@one_line_errors
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="FashionBERT checkpoint directory.")],
    catalog: Annotated[Path, typer.Option(help="Held-out catalog Parquet.")],
    features: Annotated[Path, typer.Option(help="Its patch-feature directory.")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write metrics JSON (+ .md table and .png curves).")] = None,
    queries: Annotated[int, typer.Option(min=1, help="random-100: text and image queries each.")] = 1000,
    random100: Annotated[bool, typer.Option(help="Run the random-100 protocol (cross encoder; slow on CPU).")] = True,
    product_vectors: Annotated[str | None, typer.Option(help="Also score index product vectors: comma list of joint,i2t,t2i.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Evaluate a checkpoint: random-100 (cross encoder) and full-catalog retrieval (dual encoder).

    Example: fashionbert eval --checkpoint runs/tiny --catalog data/test/catalog.parquet \
                 --features data/test/features --json runs/tiny/eval.json
    """
    from fashionbert.evaluation import markdown_table
    from pipelines.evaluate import EvalConfig, evaluate as run_eval

    presets = tuple(p.strip() for p in product_vectors.split(",") if p.strip()) if product_vectors else ()
    config = EvalConfig(checkpoint, catalog, features, json_out, n_queries=queries, seed=seed, random100=random100,
                        product_vectors=presets)
    metrics = run_eval(config, echo=typer.echo)
    typer.echo(markdown_table(metrics))


@app.command()
@one_line_errors
def index(
    out: Annotated[Path, typer.Option(help="Index root: versions, CURRENT, staging and caches live here.")],
    checkpoint: Annotated[Path, typer.Option(help="FashionBERT checkpoint directory.")],
    catalog: Annotated[Path | None, typer.Option(help="Catalog Parquet (full build).")] = None,
    update: Annotated[Path | None, typer.Option(help="Change file: rows to add/replace, op='delete' rows to remove.")] = None,
    rebuild: Annotated[bool, typer.Option(help="Full build even when --update is given (needs --catalog).")] = False,
    features: Annotated[Path | None, typer.Option(help="Precomputed patch features of --catalog (default: cached under --out).")] = None,
    encoder: Annotated[str, typer.Option(help="Image encoder when features are extracted here.")] = "efficientnet_lite0",
    mode: Annotated[str, typer.Option(help="grid | crop")] = "grid",
    weights: Annotated[Path | None, typer.Option(help="Local CNN weights file.")] = None,
    factory: Annotated[str, typer.Option(help="auto, or a faiss factory string (Flat, HNSW32, IVF1024,Flat, IVF4096,PQ64x8).")] = "auto",
    max_memory: Annotated[str | None, typer.Option(help="Memory budget of one index for --factory auto, e.g. 8GB.")] = None,
    target_recall: Annotated[float, typer.Option(min=0.0, max=1.0, help="recall@10 vs exact that nprobe/efSearch are tuned to.")] = 0.95,
    product_vectors: Annotated[str, typer.Option(help="joint (title+image encoding) | i2t | t2i (linear-combination presets).")] = "joint",
    images_a: Annotated[int | None, typer.Option("--a", min=0, help="Combination: first a image vectors.")] = None,
    texts_b: Annotated[int | None, typer.Option("--b", min=0, help="Combination: first b text vectors.")] = None,
    xi: Annotated[float | None, typer.Option(min=0.0, help="Combination: image weight.")] = None,
    mu: Annotated[float | None, typer.Option(min=0.0, help="Combination: text weight.")] = None,
    engine: Annotated[str, typer.Option(help="local | ray (Ray Data: features + encoding on a cluster).")] = "local",
    ray_workers: Annotated[int | None, typer.Option(min=1, help="Ray model actors (default: GPUs, or 2).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Products per model call.")] = 64,
    shard_size: Annotated[int, typer.Option(min=1, help="Products per embedding shard (the unit of resume).")] = 4096,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    keep_versions: Annotated[int, typer.Option(min=1, help="Published versions to keep.")] = 3,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Build (or incrementally update) the FAISS indexes of a catalog and publish a new version.

    Example: fashionbert index --catalog data/catalog.parquet --checkpoint runs/tiny --out index
             fashionbert index --update changes.parquet --checkpoint runs/tiny --out index
    """
    from pipelines.index import IndexOptions, run_index

    options = IndexOptions(
        out=out, checkpoint=checkpoint, catalog=catalog, update=update, rebuild=rebuild, features=features,
        encoder=encoder, mode=mode, weights=weights, factory=factory, max_memory=max_memory,
        target_recall=target_recall, product_vectors=product_vectors, a=images_a, b=texts_b, xi=xi, mu=mu,
        engine=engine, ray_workers=ray_workers, batch_size=batch_size, shard_size=shard_size, device=device,
        keep_versions=keep_versions, seed=seed,
    )
    summary = run_index(options)
    for line in summary.lines():
        typer.echo(line)


@app.command()
@one_line_errors
def serve(
    index: Annotated[Path | None, typer.Option(help="INDEX_DIR of `fashionbert index` (or FASHIONBERT_INDEX_DIR).")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint (default: the one the live version was built with).")] = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
    redis_url: Annotated[str | None, typer.Option(help="redis://host:port/db for the response cache (default: in-process).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda | auto")] = None,
    batch_max_size: Annotated[int | None, typer.Option(min=1, help="Micro-batch size of the text encoder (1: off).")] = None,
    batch_max_wait_ms: Annotated[float | None, typer.Option(min=0, help="Longest a query waits for batch mates.")] = None,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Serve the search API and the demo page. Every other setting: FASHIONBERT_* variables (see README).

    Example: fashionbert serve --index index --port 8000
             FASHIONBERT_ADMIN_TOKEN=... fashionbert serve --index index --redis-url redis://127.0.0.1:6379/0
    """
    from pipelines.serve import ServeOptions, run_serve

    run_serve(ServeOptions(index, checkpoint, host, port, workers, redis_url, device, batch_max_size, batch_max_wait_ms,
                           log_level), echo=typer.echo)


@app.command()
@one_line_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo keeps its data (reused by the next run).")] = Path("fashionbert-demo"),
    train_products: Annotated[int, typer.Option(min=10)] = 2000,
    test_products: Annotated[int, typer.Option(min=10)] = 500,
    seed: Annotated[int, typer.Option()] = 0,
    encoder: Annotated[str, typer.Option()] = "efficientnet_lite0",
    mode: Annotated[str, typer.Option()] = "grid",
    workers: Annotated[int | None, typer.Option(min=1)] = None,
    minutes: Annotated[float, typer.Option(min=0.05, help="Pretraining budget in minutes.")] = 10.0,
    steps: Annotated[int, typer.Option(min=1, help="Pretraining step cap.")] = 2000,
    eval_queries: Annotated[int, typer.Option(min=1, help="random-100 queries per direction.")] = 300,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Serve the API and demo page at the end.")] = True,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
) -> None:
    """The main job on the embedded default, end to end: synthetic catalogs -> patch features ->
    pretrain the tiny model (bounded by --minutes) -> evaluate on the held-out split -> index
    -> serve the API and demo page. A second run reuses every stage and serves in seconds.

    Example: fashionbert demo                 (then open http://127.0.0.1:8000/)
             fashionbert demo --minutes 3 --no-serve
    """
    from pipelines.demo import DemoConfig, run_demo

    config = DemoConfig(workdir, train_products, test_products, seed, encoder, mode, workers, minutes=minutes, steps=steps,
                        eval_queries=eval_queries, serve=serve, host=host, port=port)
    result = run_demo(config, echo=typer.echo)
    typer.echo(result.summary())


if __name__ == "__main__":
    app()
