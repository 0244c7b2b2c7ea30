"""`fashionbert index`, `serve` and `demo`: building, serving and the end-to-end job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli_app import app
from pipelines.cli_support import command_options


@app.command()
@command_options(outputs="out")
def index(
    out: Annotated[Path, typer.Option(help="Index root: versions, CURRENT, staging and caches live here.")],
    checkpoint: Annotated[Path, typer.Option(help="FashionBERT checkpoint directory.")],
    catalog: Annotated[Path | None, typer.Option(help="Catalog Parquet (full build).")] = None,
    update: Annotated[Path | None, typer.Option(help="Change file: rows to add/replace, op='delete' rows to remove.")] = None,
    rebuild: Annotated[bool, typer.Option(help="Full build even when --update is given (needs --catalog).")] = False,
    features: Annotated[Path | None, typer.Option(help="Precomputed patch features of --catalog (default: cached under --out).")] = None,
    encoder: Annotated[str | None, typer.Option(help="Image encoder when features are extracted here "
                                                     "(default: the one the checkpoint was trained on).")] = None,
    mode: Annotated[str | None, typer.Option(help="grid | crop (default: the checkpoint's).")] = None,
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

    \b
    Example:
        fashionbert index --catalog data/catalog.parquet \\
            --checkpoint runs/tiny --out index
        fashionbert index --update changes.parquet \\
            --checkpoint runs/tiny --out index
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
@command_options()
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
    tagger: Annotated[Path | None, typer.Option(help="Tag recommender directory (fashionbert tags train) for POST /api/v1/tags.")] = None,
) -> None:
    """Serve the search API and the demo page. Every other setting: FASHIONBERT_* variables (see README).

    \b
    Example:
        fashionbert serve --index index --port 8000
        FASHIONBERT_ADMIN_TOKEN=... fashionbert serve --index index \\
            --redis-url redis://127.0.0.1:6379/0
    """
    from pipelines.serve import ServeOptions, run_serve

    run_serve(ServeOptions(index, checkpoint, host, port, workers, redis_url, device, batch_max_size, batch_max_wait_ms,
                           log_level, tagger), echo=typer.echo)


@app.command()
@command_options(outputs="workdir")
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo keeps its data (reused by the next run).")] = Path("fashionbert-demo"),
    train_products: Annotated[int, typer.Option(min=10)] = 2000,
    test_products: Annotated[int, typer.Option(min=10)] = 500,
    seed: Annotated[int, typer.Option()] = 0,
    encoder: Annotated[str, typer.Option()] = "efficientnet_lite0_multiscale",
    mode: Annotated[str, typer.Option()] = "grid",
    workers: Annotated[int | None, typer.Option(min=1)] = None,
    minutes: Annotated[float, typer.Option(min=0.05, help="Pretraining budget in minutes.")] = 10.0,
    steps: Annotated[int, typer.Option(min=1, help="Pretraining step cap.")] = 2000,
    eval_queries: Annotated[int, typer.Option(min=1, help="random-100 queries per direction.")] = 300,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Serve the API and demo page at the end.")] = True,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
) -> None:
    """The main job on the embedded default data, end to end; a second run reuses every stage.

    Synthetic catalogs -> patch features -> pretrain the tiny model (bounded by --minutes) ->
    evaluate on the held-out split -> index -> serve the API and demo page. A second run
    reuses every stage and serves in seconds.

    \b
    Example:
        fashionbert demo                 # then open http://127.0.0.1:8000/
        fashionbert demo --minutes 3 --no-serve
    """
    from pipelines.demo import DemoConfig, run_demo

    config = DemoConfig(workdir, train_products, test_products, seed, encoder, mode, workers, minutes=minutes, steps=steps,
                        eval_queries=eval_queries, serve=serve, host=host, port=port)
    result = run_demo(config, echo=typer.echo)
    typer.echo(result.summary())
