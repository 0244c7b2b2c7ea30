"""`fashionbert pretrain`, `continue-pretrain` and `eval`: the model commands."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated

import typer

from fashionbert.reranking import DEFAULT_DUAL_WEIGHT
from pipelines.cli_app import MODEL_SIZES, app
from pipelines.cli_support import command_options

TRAINING_PRECISION_HELP = ("auto (bf16 matmuls where the device has them natively: a GPU, a CPU with AVX512-BF16 or "
                           "AMX; else fp32) | fp32 | bf16. Weights, vectors and scores stay fp32.")


@app.command()
@command_options(outputs="out", named_configs={name: {"model": name} for name in MODEL_SIZES})
def pretrain(
    catalog: Annotated[Path, typer.Option(help="Training catalog Parquet.")],
    features: Annotated[Path, typer.Option(help="Its patch-feature directory (fashionbert features).")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory (also holds the resumable training state).")],
    model: Annotated[str, typer.Option(help="Model size: tiny | small | base (--config NAME does the same).")] = "tiny",
    steps: Annotated[int, typer.Option(min=1)] = 2000,
    max_minutes: Annotated[float | None, typer.Option(help="Stop after this many minutes (whichever comes first).")] = None,
    batch_size: Annotated[int, typer.Option(min=2)] = 64,
    grad_accum: Annotated[int, typer.Option(min=1)] = 1,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: tiny 1e-3, small 5e-4, base 1e-4).")] = None,
    warmup_steps: Annotated[int, typer.Option(min=0)] = 100,
    loss_weighting: Annotated[str, typer.Option(help="adaptive-grad | adaptive-softmax | fixed")] = "adaptive-grad",
    weighting_every: Annotated[int, typer.Option(min=1, help="adaptive-grad: re-solve the weights every N steps (1: every step, the paper's exact method).")] = 10,
    tasks: Annotated[str, typer.Option(help="Comma-separated subset of mlm,mpm,tia,itc.")] = "mlm,mpm,tia,itc",
    clean_fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="Rows kept unmasked for TIA (0: FashionBERT's single corrupted pass).")] = 0.0,
    tia_clean_only: Annotated[bool, typer.Option("--tia-clean-only/--tia-every-row", help="With --clean-fraction > 0: TIA "
                                                 "scores the clean rows only, or every row (clean and corrupted alike).")] = True,
    tia_negatives: Annotated[str, typer.Option(help="sub-category (a random image of the same sub-category) | "
                                                    "itc-hard (drawn by ITC similarity, ALBEF).")] = "sub-category",
    tia_hard_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="With --tia-negatives itc-hard: the share of "
                                                                         "negative rows mined; the rest keep a random one.")] = 1.0,
    tia_other_sub_share: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Share of TIA's negative rows whose image comes from another sub-category (the rest: the "
                               "text's own), so the cross encoder also checks the product type. Default 0.5; 0 is "
                               "FashionBERT's same-sub-category negatives only.")] = None,
    tia_pair_ranking: Annotated[str, typer.Option(help="Rank each TIA negative below the matched row it shares a side with: "
                                                      "off | image (negatives showing a matched row's picture) | both "
                                                      "(every negative shares a matched row's picture or text). Not with "
                                                      "--tia-grid or itc-hard.")] = "off",
    attribute_twins: Annotated[bool, typer.Option(help="Products of one sub-category with the same catalog `attributes` "
                                                      "are not each other's negatives (TIA pairs, ITC, mining; not with --tia-grid).")] = False,
    group_size: Annotated[int, typer.Option(min=1, help="Batches are runs of this many same-sub-category products: "
                                                        "larger means harder in-batch negatives.")] = 4,
    tia_grid: Annotated[int, typer.Option(min=0, help="0: one random same-sub-category negative per text (FashionBERT). "
                                                     "G >= 2: groups of G same-sub-category products, every text against "
                                                     "every image, TIA ranking in both directions.")] = 0,
    main_view_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of rows showing a listing's main (first) "
                                                                          "photo; the rest draw any of its views (0: every view alike).")] = 1.0,
    view_contrast_share: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Share of rows that also contrast another photo of their listing with their own, image "
                               "alone: what teaches photo search while every pair row shows the main photo. "
                               "Default 0.25 with the itc task, else 0.")] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="Local tokenizer folder (default: train one on the catalog).")] = None,
    bert_init: Annotated[Path | None, typer.Option(help="Local BERT folder to initialise the trunk, or a packaged one: "
                                                       "minilm (the default of --model small).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    precision: Annotated[str, typer.Option(help=TRAINING_PRECISION_HELP)] = "auto",
    save_every: Annotated[int, typer.Option(min=1, help="Steps between resumable training-state saves.")] = 200,
) -> None:
    """Pretrain FashionBERT (MLM + MPM + TIA + ITC with adaptive loss weights); resumes after a kill.

    --config takes a job file or a model size (--config tiny is --model tiny).

    \b
    Example:
        fashionbert pretrain --catalog data/train/catalog.parquet \\
            --features data/train/features --out runs/tiny \\
            --config tiny --max-minutes 20
        fashionbert pretrain --config runs/tiny/fashionbert-pretrain.yaml
    """
    from dataclasses import replace

    from pipelines.pretrain import PretrainConfig, pretrain as run_pretrain

    cfg = PretrainConfig(
        catalog=catalog, features=features, out=out, model_config=model, steps=steps, max_minutes=max_minutes,
        batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_steps=warmup_steps, loss_weighting=loss_weighting,
        weighting_every=weighting_every,
        tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()), tokenizer=tokenizer, bert_init=bert_init,
        clean_fraction=clean_fraction, tia_clean_only=tia_clean_only, tia_negatives=tia_negatives, tia_hard_share=tia_hard_share,
        tia_pair_ranking=tia_pair_ranking, attribute_twins=attribute_twins, group_size=group_size, tia_grid=tia_grid, main_view_share=main_view_share,
        view_contrast_share=view_contrast_share,
        seed=seed, device=device, precision=precision, save_every=save_every,
    )
    if tia_other_sub_share is not None:  # None: the job's default (pipelines.pretrain.PretrainConfig)
        cfg = replace(cfg, tia_other_sub_share=tia_other_sub_share)
    result = run_pretrain(cfg, echo=typer.echo)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
    typer.echo(
        f"pretrain: {result.steps_done} steps (stopped by {result.stopped_by}) in {result.seconds / 60:.1f} min, "
        f"{result.samples_per_second:.1f} samples/s, losses "
        + ", ".join(f"{k}={v:.3f}" for k, v in result.last_losses.items())
        + f" -> {result.checkpoint}"
    )


@app.command("continue-pretrain")
@command_options(outputs="out")
def continue_pretrain(
    from_checkpoint: Annotated[Path, typer.Option("--from", help="Release checkpoint to continue from.")],
    catalog: Annotated[Path, typer.Option(help="The new category's catalog Parquet.")],
    features: Annotated[Path, typer.Option(help="Its patch-feature directory (fashionbert features).")],
    out: Annotated[Path, typer.Option(help="New checkpoint directory (also training state, split, report).")],
    query_log: Annotated[Path | None, typer.Option(help="Click log Parquet (query, product_id, clicks|label): Q-T-I triples.")] = None,
    replay_fraction: Annotated[float, typer.Option(min=0.0, max=0.95, help="Share of every batch replayed from the old training data.")] = 0.2,
    replay_catalog: Annotated[list[Path] | None, typer.Option(help="Old catalog to replay (repeatable; default: what the checkpoint records).")] = None,
    replay_features: Annotated[list[Path] | None, typer.Option(help="Its features (one per --replay-catalog).")] = None,
    new_eval_catalog: Annotated[Path | None, typer.Option(help="The new category's held-out catalog (default: hold out --heldout-fraction of --catalog).")] = None,
    new_eval_features: Annotated[Path | None, typer.Option(help="Its features (default: --features).")] = None,
    heldout_fraction: Annotated[float, typer.Option(min=0.01, max=0.9)] = 0.2,
    old_eval_catalog: Annotated[Path | None, typer.Option(help="The old categories' held-out catalog (for the 'old' figures).")] = None,
    old_eval_features: Annotated[Path | None, typer.Option(help="Its features.")] = None,
    report: Annotated[Path | None, typer.Option(help="Report JSON (+ .md) (default: OUT/continue_report.json).")] = None,
    eval_queries: Annotated[int, typer.Option(min=1, help="random-100 queries per direction, before and after.")] = 300,
    extend_vocabulary: Annotated[bool, typer.Option(help="Add the new category's frequent unseen words to a WordPiece vocabulary.")] = True,
    min_word_count: Annotated[int, typer.Option(min=1, help="How often a word must occur to become a token.")] = 3,
    steps: Annotated[int, typer.Option(min=1)] = 600,
    max_minutes: Annotated[float | None, typer.Option(help="Training time budget (whichever of steps/minutes ends first).")] = 10.0,
    batch_size: Annotated[int, typer.Option(min=4)] = 64,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: the checkpoint's pretraining rate).")] = None,
    warmup_steps: Annotated[int, typer.Option(min=0)] = 30,
    loss_weighting: Annotated[str, typer.Option(help="adaptive-grad | adaptive-softmax | fixed")] = "adaptive-grad",
    weighting_every: Annotated[int, typer.Option(min=1, help="adaptive-grad: re-solve the weights every N steps (1: every step, the paper's exact method).")] = 10,
    query_probability: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of rows whose text is a query (segment Q) rather than a title.")] = 0.3,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    precision: Annotated[str, typer.Option(help=TRAINING_PRECISION_HELP)] = "auto",
) -> None:
    """Continue-pretrain a checkpoint on a new category (+ its click log), replaying old data; report before/after.

    \b
    Example:
        fashionbert continue-pretrain --from runs/tiny --catalog data/bags/catalog.parquet \\
            --features data/bags/features --query-log data/bags/query_log.parquet \\
            --old-eval-catalog data/test/catalog.parquet --old-eval-features data/test/features \\
            --out runs/tiny-bags --max-minutes 10
        fashionbert index --rebuild --catalog data/all.parquet --checkpoint runs/tiny-bags --out index
    """
    from pipelines.continue_pretrain import ContinueConfig, continue_pretrain as run_continue, report_markdown

    cfg = ContinueConfig(
        from_checkpoint=from_checkpoint, catalog=catalog, features=features, out=out, query_log=query_log,
        replay_catalogs=tuple(replay_catalog or ()), replay_features=tuple(replay_features or ()),
        replay_fraction=replay_fraction, extend_vocabulary=extend_vocabulary, min_word_count=min_word_count,
        new_eval_catalog=new_eval_catalog, new_eval_features=new_eval_features, heldout_fraction=heldout_fraction,
        old_eval_catalog=old_eval_catalog, old_eval_features=old_eval_features, eval_queries=eval_queries,
        report=report, steps=steps, max_minutes=max_minutes, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
        loss_weighting=loss_weighting, weighting_every=weighting_every, query_probability=query_probability, seed=seed, device=device,
        precision=precision,
    )
    result = run_continue(cfg, echo=typer.echo)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    typer.echo(report_markdown(result.report, {"checkpoint": str(result.checkpoint), "report": str(result.report_path)}))


def parse_weights(text: str | None, option: str) -> tuple[float, ...]:
    """``"0.5,1,2"`` -> (0.5, 1.0, 2.0); a value that is not a number >= 0 is a usage error naming the option."""
    if not text:
        return ()
    weights = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = float(part)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 0):
            raise typer.BadParameter(f"{option}: {part!r} is not a weight >= 0 (give a comma list such as 0.5,1,2)")
        weights.append(value)
    return tuple(weights)


@app.command("eval")
@command_options(output_file="json_out")
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="FashionBERT checkpoint directory.")],
    catalog: Annotated[Path, typer.Option(help="Held-out catalog Parquet.")],
    features: Annotated[Path, typer.Option(help="Its patch-feature directory.")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write metrics JSON (+ .md table and .png curves).")] = None,
    queries: Annotated[int, typer.Option(min=1, help="random-100: text and image queries each.")] = 1000,
    random100: Annotated[bool, typer.Option(help="Run the random-100 protocol (cross encoder; slow on CPU).")] = True,
    product_vectors: Annotated[str | None, typer.Option(help="Also score index product vectors: comma list of joint,i2t,t2i.")] = None,
    photo_search: Annotated[bool, typer.Option(help="Score photo search: a held-out shopper photo of each product "
                                                    "against the image-only vectors (photo_search.*).")] = True,
    dual_weight: Annotated[float, typer.Option(min=0.0, help="random100_fused: weight of logit_scale x cosine beside the "
                                                             "cross encoder's log-odds (the search's FASHIONBERT_RERANK_DUAL_WEIGHT).")] = DEFAULT_DUAL_WEIGHT,
    dual_weight_sweep: Annotated[str | None, typer.Option(help="random100_fused_sweep: comma list of more dual weights "
                                                                "to rank the same groups with (e.g. 0.5,1,2,4; the cross "
                                                                "encoder is scored once), to choose the search's weight.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    precision: Annotated[str, typer.Option(help="The trunk's matmuls: fp32 (exact: the recorded figures) | auto | bf16 "
                                                "(faster where the CPU or GPU has bf16; heads and scores stay fp32).")] = "fp32",
) -> None:
    """Evaluate a checkpoint: random-100 (cross encoder) and full-catalog retrieval (dual encoder).

    random-100's groups are also scored by the dual encoder alone (random100_dual.*) and by the
    search's fused score of both stages (random100_fused.*). Photo search (photo_search.*) holds one
    whole-garment photo of each product out and searches it against the image-only vectors.

    \b
    Example:
        fashionbert eval --checkpoint runs/tiny \\
            --catalog data/test/catalog.parquet \\
            --features data/test/features --json runs/tiny/eval.json
    """
    from fashionbert.evaluation import markdown_table
    from pipelines.evaluate import EvalConfig, evaluate as run_eval

    presets = tuple(p.strip() for p in product_vectors.split(",") if p.strip()) if product_vectors else ()
    config = EvalConfig(checkpoint, catalog, features, json_out, n_queries=queries, seed=seed, random100=random100,
                        product_vectors=presets, photo_search=photo_search, dual_weight=dual_weight,
                        dual_weight_sweep=parse_weights(dual_weight_sweep, "--dual-weight-sweep"), precision=precision)
    metrics = run_eval(config, echo=typer.echo)
    typer.echo(markdown_table(metrics))
