"""``fashionbert tags ...``: train, apply and evaluate the tag recommender (thin wrappers over pipelines.tags).

Mounted by the main CLI with ``app.add_typer(tags_app, name="tags")``. Like every command, each
takes ``--config JOB.yaml`` and ``--log-json``, writes its effective config beside its outputs
and fails in one line (:func:`pipelines.cli_support.command_options`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli_support import command_options

tags_app = typer.Typer(
    help="Tag recommendation: suggest tags for a product from its photos and title "
         "(FashionBERT trunk + multi-level attention + bilinear fusion).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@tags_app.command()
@command_options(outputs="out")
def train(
    catalog: Annotated[Path, typer.Option(help="Training catalog Parquet (needs a 'tags' column).")],
    features: Annotated[Path, typer.Option(help="Its patch-feature directory (fashionbert features).")],
    checkpoint: Annotated[Path, typer.Option(help="FashionBERT checkpoint directory (the trunk).")],
    out: Annotated[Path, typer.Option(help="Tagger directory to write (self-contained: head, tags, trunk).")],
    max_minutes: Annotated[float | None, typer.Option(min=0.01, help="Stop after this many minutes (whichever comes first).")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs (early stopping on the validation split may stop sooner).")] = 60,
    fine_tune_trunk: Annotated[bool, typer.Option("--fine-tune-trunk", help="Train the trunk too (default: frozen, its states cached).")] = False,
    loss: Annotated[str, typer.Option(help="bce (with per-tag pos_weight) | focal.")] = "bce",
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same tagger.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Products per step.")] = 32,
    lr: Annotated[float, typer.Option(min=0.0, help="Learning rate of the head.")] = 1e-3,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without a better validation score before stopping.")] = 20,
    select_on: Annotated[str, typer.Option(help="Validation metric that picks the epoch: map (every tag's ranking) | f1@3.")] = "map",
    max_views: Annotated[int, typer.Option(min=1, help="Image views per product (one trunk pass each).")] = 1,
    min_tag_count: Annotated[int, typer.Option(min=1, help="Tags on fewer training products are not predicted.")] = 2,
    trunk_passes: Annotated[str, typer.Option(help="joint (one title+image pass) | separate (text and image passes; "
                                                   "the head alone fuses them).")] = "joint",
    stray_injection: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of training rows per epoch read with one "
                                                   "photo swapped for the same shot of another product's, to teach the view "
                                                   "attention to drop strays (with --max-views >= 2; 0: off).")] = 0.25,
    stray_loss_weight: Annotated[float, typer.Option(min=0.0, help="Weight of the loss on an injected stray's view weight "
                                                     "(0: the tag loss alone teaches it).")] = 1.0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Train a tagger on a catalog's tags, photos and titles.

    \b
    Example:
        fashionbert tags train --catalog data/train/catalog.parquet \\
            --features data/train/features --checkpoint runs/tiny --out runs/tagger --max-minutes 5
    """
    from pipelines.tags import TagTrainConfig, train_tagger

    if loss not in ("bce", "focal"):
        raise ValueError(f"--loss must be bce or focal, not {loss!r}")
    cfg = TagTrainConfig(catalog=catalog, features=features, checkpoint=checkpoint, out=out, max_minutes=max_minutes,
                         epochs=epochs, fine_tune_trunk=fine_tune_trunk, loss=loss, seed=seed, batch_size=batch_size, lr=lr,
                         patience=patience, select_on=select_on, stray_injection=stray_injection,
                         stray_loss_weight=stray_loss_weight, device=device,
                         head={"max_views": max_views, "min_tag_count": min_tag_count, "trunk_passes": trunk_passes})
    typer.echo(train_tagger(cfg, echo=typer.echo).line())


@tags_app.command()
@command_options(output_file="out")
def predict(
    tagger: Annotated[Path, typer.Option(help="Tagger directory (fashionbert tags train).")],
    catalog: Annotated[Path, typer.Option(help="Catalog Parquet to tag (a 'tags' column is not needed).")],
    features: Annotated[Path, typer.Option(help="Its patch-feature directory; products without features are tagged from the title.")],
    out: Annotated[Path, typer.Option(help="Output Parquet: product_id, tags, scores (best first).")],
    k: Annotated[int, typer.Option(min=1, max=100, help="Tags per product.")] = 5,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Suggest the top-k tags of every product of a catalog.

    \b
    Example:
        fashionbert tags predict --tagger runs/tagger --catalog data/test/catalog.parquet \\
            --features data/test/features --out tags.parquet --k 5
    """
    from pipelines.tags import predict_tags

    predict_tags(tagger, catalog, features, out, k, device=device, echo=typer.echo)


@tags_app.command("eval")
@command_options(output_file="json_out")
def evaluate(
    tagger: Annotated[Path, typer.Option(help="Tagger directory (fashionbert tags train).")],
    catalog: Annotated[Path, typer.Option(help="Held-out catalog Parquet with a 'tags' column.")],
    features: Annotated[Path, typer.Option(help="Its patch-feature directory.")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write metrics JSON (+ a .md table beside it).")] = None,
    baselines: Annotated[bool, typer.Option(help="Also train and score the most-frequent and late-fusion baselines "
                                                 "on the tagger's training catalog.")] = True,
    ablations: Annotated[bool, typer.Option("--ablations", help="Also retrain the full model and its ablations "
                                                                "with the tagger's recorded data, seed and budget.")] = False,
    seeds: Annotated[int, typer.Option(min=1, help="Train every ablation variant with this many seeds and report "
                                                   "the means, with the standard deviation of F1@3 and mAP.")] = 1,
    variants: Annotated[str | None, typer.Option(help="Comma-separated ablation variants to run (full always runs), "
                                                      "e.g. no_low_level_attention,concat_fusion; default: all.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Evaluate a tagger on a held-out catalog: P/R/F1/hit@1,3,5 beside the baselines (and ablations).

    \b
    Example:
        fashionbert tags eval --tagger runs/tagger --catalog data/test/catalog.parquet \\
            --features data/test/features --json runs/tagger/eval.json --ablations
    """
    from pipelines.tags import evaluate_tagger, metrics_table

    chosen = [name.strip() for name in variants.split(",") if name.strip()] if variants is not None else None
    if chosen is not None and not ablations:
        raise ValueError("--variants selects ablation variants: it needs --ablations")
    metrics = evaluate_tagger(tagger, catalog, features, json_out, baselines=baselines, ablations=ablations, seeds=seeds,
                              variants=chosen, device=device, echo=typer.echo)
    typer.echo(metrics_table(metrics))
