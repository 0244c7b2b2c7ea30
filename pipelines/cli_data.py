"""`fashionbert synth`, `validate` and `features`: the data commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.cli_app import app
from pipelines.cli_support import command_options


@app.command()
@command_options(outputs="out")
def synth(
    out: Annotated[Path, typer.Option(help="Output directory (catalog.parquet, images/, query_log.parquet).")],
    products: Annotated[int, typer.Option(min=1, help="Number of products.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same catalog.")] = 0,
    split: Annotated[str, typer.Option(help="train, or test (attribute combinations unseen in train).")] = "train",
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes (default: all cores).")] = None,
    categories: Annotated[list[str] | None, typer.Option("--category", help="Keep only this category (repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude-category", help="Drop this category (repeatable).")] = None,
    id_prefix: Annotated[str | None, typer.Option(help="Product id prefix (default tr/te by split); catalogs indexed together need distinct ones.")] = None,
) -> None:
    """Generate the synthetic fashion catalog (the embedded default data).

    \b
    Example:
        fashionbert synth --out data/train --products 2000 --seed 0
        fashionbert synth --out data/test --products 500 --seed 1 --split test
        fashionbert synth --out data/bags --products 600 --seed 2 --category bags --id-prefix bag
        fashionbert synth --config job.yaml --seed 2
    """
    from fashionbert.synthetic import generate_catalog

    if split not in ("train", "test"):
        raise ValueError(f"--split must be 'train' or 'test', not {split!r}")
    result = generate_catalog(
        out, products, seed=seed, split=split, workers=workers,  # type: ignore[arg-type]
        categories=categories or None, exclude_categories=exclude or None, id_prefix=id_prefix,
    )
    typer.echo(
        f"synth: {result.n_products} products, {result.n_images} images in {result.seconds:.1f} s "
        f"-> {result.catalog_path} (query log {result.query_log_path})"
    )


@app.command()
@command_options(output_file="report")
def validate(
    catalog: Annotated[Path, typer.Option(help="Catalog Parquet file.")],
    strict: Annotated[bool, typer.Option(help="Fail on the first bad row instead of skipping bad rows.")] = False,
    images: Annotated[str, typer.Option(help="Image check: none | exists | decode (full decode, catches truncation).")] = "decode",
    report: Annotated[Path | None, typer.Option(help="Write every issue as JSON lines here.")] = None,
) -> None:
    """Validate a catalog: report every bad row with its 0-based row number and reason.

    \b
    Example:
        fashionbert validate --catalog data/train/catalog.parquet \\
            --report issues.jsonl
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
@command_options(outputs="out")
def features(
    catalog: Annotated[Path, typer.Option(help="Catalog Parquet file.")],
    out: Annotated[Path, typer.Option(help="Output directory for the feature shards.")],
    encoder: Annotated[str, typer.Option(help="efficientnet_lite0_multiscale (432-d: EfficientNet-Lite0's last block and "
                                              "stride-16 stage, ImageNet weights, offline), efficientnet_lite0 (its 1280-d "
                                              "head map) or resnet50.")] = "efficientnet_lite0_multiscale",
    mode: Annotated[str, typer.Option(help="grid (one CNN pass, 8x8 map cells) or crop (64 crops, FashionBERT's way).")] = "grid",
    weights: Annotated[Path | None, typer.Option(help="Local CNN weights file (.pth/.safetensors); resnet50 is random without one.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per CNN batch (default: 8 on CPU, 64 on GPU).")] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="Images per shard (the unit of resume).")] = 1024,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader workers decoding images.")] = 2,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    cell_size: Annotated[int, typer.Option(min=8, help="Pixels per patch cell: the photo is read at 8 x this (32: 256 px; "
                                                      "64: 512 px, finer print and neckline detail, ~5x slower on a CPU).")] = 32,
    crop_size: Annotated[int, typer.Option(min=8, help="Crop mode: side each patch is resized to.")] = 224,
    max_images: Annotated[int | None, typer.Option(min=1, help="Use at most this many images per product.")] = None,
    strict: Annotated[bool, typer.Option(help="Fail on any bad catalog row.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace features of another catalog/config in --out.")] = False,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Extract 8x8 patch features for every catalog image into resumable fp16 shards.

    \b
    Example:
        fashionbert features --catalog data/train/catalog.parquet \\
            --out data/train/features
    """
    from indexer.catalog import read_catalog
    from indexer.features import FeatureJobConfig, extract_catalog_features

    cat = read_catalog(catalog, strict=strict, check_images="exists", require_image=True)
    typer.echo(f"catalog: {cat.summary()}")
    for issue in cat.issues:
        typer.echo(f"  skipped {issue}")
    config = FeatureJobConfig(
        encoder=encoder, mode=mode, weights_path=str(weights) if weights else None, cell_size=cell_size, crop_size=crop_size,
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
