"""The common options of every `fashionbert` command: `--config` job files, the effective config written
next to the outputs, `--log-json`, one-line errors, and `--help` with examples (pipelines/cli_support.py)."""

from __future__ import annotations

import inspect
import json
import logging
import warnings
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import pyarrow.parquet as pq
import pytest
import typer
import yaml
from tqdm import std as tqdm_std
from tqdm.auto import tqdm
from typer.main import get_command
from typer.testing import CliRunner

from fashionbert.pretraining import DEFAULT_TIA_OTHER_SUB_SHARE
from pipelines.cli import MODEL_SIZES, app
from pipelines.cli_support import CliGroup, command_options, set_global_options

runner = CliRunner()
JSON_KEYS = {"ts", "level", "command", "message"}


def registered_commands(group=None, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf command of the click group typer builds from `app` (sub-apps included)."""
    group = group if group is not None else get_command(app)
    found = []
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found += registered_commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


def click_command(path: tuple[str, ...]):
    command = get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def example_lines(help_text: str) -> list[str]:
    """The lines of the docstring's ``Example:`` block."""
    lines = inspect.cleandoc(help_text).splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Example"))
    block = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        block.append(line.strip())
    return block


def json_lines(text: str) -> list[dict]:
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    for record in records:
        assert JSON_KEYS <= record.keys(), record
        ts = datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
        assert record["ts"].endswith("Z") and ts.utcoffset() == timezone.utc.utcoffset(None)
    return records


# --------------------------------------------------------------------------- --help


def test_the_command_list_is_complete():
    assert {"synth", "validate", "features", "pretrain", "eval", "index", "serve", "demo"} <= {
        " ".join(p) for p in registered_commands()}


@pytest.mark.parametrize("path", registered_commands(), ids=" ".join)
def test_every_command_has_help_with_intact_example_lines_and_the_common_options(path):
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "--config" in result.output and "--log-json" in result.output
    command = click_command(path)
    examples = example_lines(command.help)
    assert examples and all(line.startswith(("fashionbert", "--", "FASHIONBERT_")) for line in examples), examples
    shown = {line.strip() for line in result.output.splitlines()}
    assert set(examples) <= shown, "rich help rewrapped an example line"
    # click's own renderer (no rich) keeps them only under a \b marker: every renderer shows them line by line
    command.rich_markup_mode = None
    ctx = typer.Context(command, info_name=path[-1], terminal_width=200, max_content_width=200)
    plain = {line.strip() for line in command.get_help(ctx).splitlines()}
    assert set(examples) <= plain, "plain help joined the example lines: the Example block needs a \\b line"


def test_pretrain_model_sizes_are_the_library_named_configs():
    from fashionbert.configuration import NAMED_CONFIGS

    assert MODEL_SIZES == tuple(NAMED_CONFIGS)


# --------------------------------------------------------------------------- job files and effective configs


def test_yaml_job_file_drives_synth_a_flag_overrides_it_and_its_effective_config_reruns_it(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(
        f"out: {tmp_path / 'a'}\n"
        "products: 5\n"
        "seed: 3\n"
        "workers: 1\n"
        "category: [tops, dresses]\n"
        "exclude_category: dresses   # underscores work too; a scalar is a one-item list\n"
    )
    r = runner.invoke(app, ["synth", "--config", str(job), "--products", "3"])
    assert r.exit_code == 0, r.output
    assert "synth: 3 products" in r.output  # the flag won over the file's 5
    catalog = tmp_path / "a" / "catalog.parquet"
    assert set(pq.read_table(catalog).column("category").to_pylist()) == {"tops"}

    written = tmp_path / "a" / "fashionbert-synth.yaml"
    effective = yaml.safe_load(written.read_text())
    assert effective == {
        "command": "synth", "version": version("fashionbert-search"), "out": str(tmp_path / "a"), "products": 3,
        "seed": 3, "split": "train", "workers": 1, "category": ["tops", "dresses"], "exclude-category": ["dresses"], "id-prefix": None,
    }

    r = runner.invoke(app, ["synth", "--config", str(written), "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "b" / "catalog.parquet").read_bytes() == catalog.read_bytes()
    rerun = yaml.safe_load((tmp_path / "b" / "fashionbert-synth.yaml").read_text())
    assert rerun == {**effective, "out": str(tmp_path / "b")}


def test_json_job_file_and_the_config_next_to_an_output_file(make_catalog, tmp_path):
    catalog = make_catalog([{"product_id": "a"}, {"product_id": "a"}])
    report = tmp_path / "issues.jsonl"
    job = tmp_path / "validate.json"
    job.write_text(json.dumps({"catalog": str(catalog), "report": str(report), "images": "exists"}))
    r = runner.invoke(app, ["validate", "--config", str(job)])
    assert r.exit_code == 0, r.output
    assert "duplicate product_id" in r.output and report.is_file()
    sidecar = yaml.safe_load((tmp_path / "issues.config.yaml").read_text())
    assert sidecar["command"] == "validate" and sidecar["images"] == "exists" and sidecar["report"] == str(report)

    before = sorted(tmp_path.rglob("*.yaml"))
    r = runner.invoke(app, ["validate", "--catalog", str(catalog)])  # no output file: nothing written
    assert r.exit_code == 0 and sorted(tmp_path.rglob("*.yaml")) == before


@pytest.mark.parametrize(("content", "expected"), [
    ("out: x\nprodcts: 3\n", "unknown key 'prodcts' for `fashionbert synth` (did you mean 'products'?); valid keys: out, products,"),
    ("out: x\nconfig: tiny\n", "unknown key 'config' for `fashionbert synth`"),
    ("command: pretrain\nout: x\n", "is a job for `fashionbert pretrain`, not `fashionbert synth`"),
    ("- out\n- x\n", "must hold a mapping of option names to values, not list"),
    ("out: [unclosed\n", "cannot read the job file"),
])
def test_bad_job_files_are_one_line_errors(tmp_path, content, expected):
    job = tmp_path / "job.yaml"
    job.write_text(content)
    r = runner.invoke(app, ["synth", "--config", str(job)])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {job}") and expected in lines[0], r.output
    assert not (tmp_path / "x").exists()


def test_config_values_that_are_neither_job_files_nor_named_configs(tmp_path):
    r = runner.invoke(app, ["synth", "--config", "tiny", "--out", str(tmp_path)])
    assert r.exit_code == 1 and r.output.strip() == "error: --config 'tiny' is not a job file (.yaml, .yml or .json)"
    r = runner.invoke(app, ["synth", "--config", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 1 and r.output.strip() == f"error: --config: job file not found: {tmp_path / 'missing.yaml'}"
    args = ["pretrain", "--catalog", "c", "--features", "f", "--out", str(tmp_path / "run")]
    r = runner.invoke(app, [*args, "--config", "huge"])
    assert r.exit_code == 1 and r.output.strip() == (
        "error: --config 'huge' is neither a job file (.yaml, .yml, .json) nor a named config (tiny, small, base)")
    job = tmp_path / "job.yaml"
    job.write_text("config: huge\n")
    r = runner.invoke(app, [*args, "--config", str(job)])
    assert r.exit_code == 1 and "config: 'huge' is not a named config (tiny, small, base)" in r.output
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def pretrain_data(tmp_path_factory):
    """A 16-product synthetic catalog and its patch features (one image per product)."""
    from tests.indexer_fixtures import catalog_with_features

    return catalog_with_features(tmp_path_factory.mktemp("cli-pretrain"), 16, seed=5)


def test_pretrain_config_is_a_model_size_or_a_job_file(pretrain_data, tmp_path):
    run = tmp_path / "run"
    fast = ["--steps", "1", "--batch-size", "4", "--warmup-steps", "0", "--loss-weighting", "fixed", "--device", "cpu",
            "--main-view-share", "1", "--view-contrast-share", "0.5"]
    inputs = ["--catalog", str(pretrain_data["catalog"]), "--features", str(pretrain_data["features"])]
    # the spelling: --config tiny is the model size
    r = runner.invoke(app, ["pretrain", *inputs, "--config", "tiny", "--out", str(run), *fast])
    assert r.exit_code == 0, r.output
    assert "pretrain: 1 steps" in r.output
    assert json.loads((run / "config.json").read_text())["hidden_size"] == 256  # NAMED_CONFIGS["tiny"]
    effective = yaml.safe_load((run / "fashionbert-pretrain.yaml").read_text())
    assert effective["model"] == "tiny" and "config" not in effective and effective["batch-size"] == 4
    training = json.loads((run / "training_config.json").read_text())["training"]
    assert training["main_view_share"] == 1.0 and training["view_contrast_share"] == 0.5  # the flags reach the job
    assert training["tia_other_sub_share"] == DEFAULT_TIA_OTHER_SUB_SHARE == 0.5  # no flag: the job's default

    # a job file with `model: tiny` and the same settings is the same run: it resumes the finished state
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "catalog": str(pretrain_data["catalog"]), "features": str(pretrain_data["features"]), "out": str(run),
        "model": "tiny", "steps": 1, "batch-size": 4, "warmup_steps": 0, "loss-weighting": "fixed", "device": "cpu",
        "main-view-share": 1, "view-contrast-share": 0.5,
    }))
    r = runner.invoke(app, ["pretrain", "--config", str(job)])
    assert r.exit_code == 0, r.output
    assert "pretrain: resuming from step 1" in r.output

    # ... and so is a rerun from the effective config the first run wrote
    r = runner.invoke(app, ["pretrain", "--config", str(run / "fashionbert-pretrain.yaml")])
    assert r.exit_code == 0 and "resuming from step 1" in r.output, r.output

    # a flag overrides the file's model, and --config NAME sets the model: both are another run here
    r = runner.invoke(app, ["pretrain", "--config", str(job), "--model", "small"])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1].startswith(f"error: {run} holds a training run with another")
    r = runner.invoke(app, ["pretrain", *inputs, "--config", "small", "--out", str(run), *fast])
    assert r.exit_code == 1 and "another configuration" in r.output

    # --tia-other-sub-share 0 (FashionBERT's same-sub-category negatives only) reaches the job
    other = tmp_path / "other"
    r = runner.invoke(app, ["pretrain", *inputs, "--config", "tiny", "--out", str(other), *fast, "--tia-other-sub-share", "0"])
    assert r.exit_code == 0, r.output
    assert json.loads((other / "training_config.json").read_text())["training"]["tia_other_sub_share"] == 0.0


# --------------------------------------------------------------------------- --log-json


@pytest.mark.parametrize("placement", ["global", "command"])
def test_log_json_prints_only_json_lines_and_no_progress_bars(tmp_path, placement):
    args = ["synth", "--out", str(tmp_path / "c"), "--products", "3", "--workers", "1"]
    args = ["--log-json", *args] if placement == "global" else [*args, "--log-json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    records = json_lines(r.stdout)
    assert records and {rec["command"] for rec in records} == {"synth"} and {rec["level"] for rec in records} == {"info"}
    assert any(rec["message"].startswith("synth: 3 products") for rec in records)
    assert "product/s" not in r.stderr  # tqdm's bar is off
    plain = runner.invoke(app, ["synth", "--out", str(tmp_path / "d"), "--products", "3", "--workers", "1"])
    assert plain.exit_code == 0 and "product/s" in plain.stderr  # ... which it is not without --log-json


def test_errors_under_log_json_are_json_lines(tmp_path):
    r = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), "--split", "dev", "--log-json"])
    assert r.exit_code == 1
    [record] = json_lines(r.output)
    assert record["level"] == "error" and record["command"] == "synth"
    assert record["message"] == "--split must be 'train' or 'test', not 'dev'"

    bad = tmp_path / "bad.yaml"
    bad.write_text("out: x\nprodcts: 3\n")
    r = runner.invoke(app, ["synth", "--config", str(bad), "--log-json"])  # --log-json after the eager --config
    assert r.exit_code == 1
    [record] = json_lines(r.output)
    assert record["level"] == "error" and "unknown key 'prodcts'" in record["message"]

    r = runner.invoke(app, ["--log-json", "synth", "--products", "3"])  # click's usage error: exit 2, still JSON
    assert r.exit_code == 2
    [record] = json_lines(r.output)
    assert record["level"] == "error" and "Missing option '--out'" in record["message"]


# --------------------------------------------------------------------------- a new command / sub-app


def _app_with_a_sub_app() -> typer.Typer:
    """How a later command is added: `tags train --out` and `tags eval --json` on a sub-app."""
    root = typer.Typer(cls=CliGroup, add_completion=False)

    @root.callback()
    def main(ctx: typer.Context, log_json: Annotated[bool, typer.Option("--log-json")] = False) -> None:
        set_global_options(ctx, log_json=log_json)

    tags = typer.Typer()
    root.add_typer(tags, name="tags")

    @tags.command("train")
    @command_options(outputs="out")
    def train(
        out: Annotated[Path, typer.Option(help="Output directory.")],
        epochs: Annotated[int, typer.Option(min=1)] = 1,
        fail: bool = False,
    ) -> None:
        """Train the tagger.

        \b
        Example:
            fashionbert tags train --out runs/tags
        """
        logging.getLogger("fashionbert.tags").info("epoch 1 of %d", epochs)
        warnings.warn("few tags", UserWarning, stacklevel=1)
        for _ in tqdm(range(3), desc="tagging", disable=False):
            pass
        typer.echo(f"trained {epochs} epoch(s)")
        if fail:
            raise RuntimeError("boom\nsecond line")

    @tags.command("eval")
    @command_options(output_file="json_out")
    def tags_eval(ctx: typer.Context, json_out: Annotated[Path | None, typer.Option("--json")] = None) -> None:
        """Evaluate the tagger (a command that takes the context itself).

        \b
        Example:
            fashionbert tags eval --json runs/tags/eval.json
        """
        if json_out is not None:
            json_out.write_text("{}")
        typer.echo(f"evaluated by {ctx.command_path}")

    return root


def test_the_decorator_on_a_sub_app_logs_warnings_bars_and_config_files(tmp_path):
    sub_app = _app_with_a_sub_app()
    original_init, root_handlers = tqdm_std.tqdm.__dict__["__init__"], logging.getLogger().handlers[:]
    out = tmp_path / "tags"
    r = runner.invoke(sub_app, ["tags", "train", "--out", str(out), "--epochs", "2", "--log-json"])
    assert r.exit_code == 0, r.output
    records = json_lines(r.stdout)
    assert {rec["command"] for rec in records} == {"tags train"}
    assert {"level": "info", "logger": "fashionbert.tags", "message": "epoch 1 of 2"}.items() <= next(
        rec for rec in records if rec.get("logger") == "fashionbert.tags").items()
    assert any(rec["level"] == "warning" and "few tags" in rec["message"] for rec in records)
    assert any(rec["level"] == "info" and rec["message"] == "trained 2 epoch(s)" for rec in records)
    assert "tagging" not in r.stderr  # a bar asked for with disable=False is off too
    # everything is put back after the command
    assert tqdm_std.tqdm.__dict__["__init__"] is original_init and logging.getLogger().handlers == root_handlers

    effective = yaml.safe_load((out / "fashionbert-tags-train.yaml").read_text())
    assert effective["command"] == "tags train" and effective["epochs"] == 2 and effective["fail"] is False
    r = runner.invoke(sub_app, ["tags", "train", "--config", str(out / "fashionbert-tags-train.yaml")])
    assert r.exit_code == 0 and "trained 2 epoch(s)" in r.stdout and "tagging" in r.stderr  # plain: bar on

    r = runner.invoke(sub_app, ["tags", "eval", "--json", str(tmp_path / "m.json")])
    assert r.exit_code == 0 and r.stdout.strip().endswith("tags eval"), r.output
    assert yaml.safe_load((tmp_path / "m.config.yaml").read_text()) == {
        "command": "tags eval", "version": version("fashionbert-search"), "json": str(tmp_path / "m.json")}
    r = runner.invoke(sub_app, ["tags", "eval"])  # no output file given: no config written
    assert r.exit_code == 0 and sorted(p.name for p in tmp_path.glob("*.yaml")) == ["m.config.yaml"]

    r = runner.invoke(sub_app, ["tags", "train", "--out", str(out), "--fail"])
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1] == "error: boom second line"
    assert "Traceback" not in r.output

    with pytest.raises(TypeError, match="reserved"):
        command_options()(lambda config=None: None)
