"""The `fashionbert` console script, called through typer's CliRunner (and once as a real process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from pipelines.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["synth", "validate", "features", "pretrain", "eval", "index", "demo"])
def test_every_subcommand_has_help_with_an_example(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_synth_validate_features_end_to_end(tmp_path):
    out = tmp_path / "train"
    r = runner.invoke(app, ["synth", "--out", str(out), "--products", "12", "--seed", "3", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "synth: 12 products" in r.output and (out / "catalog.parquet").is_file()

    r = runner.invoke(app, ["validate", "--catalog", str(out / "catalog.parquet")])
    assert r.exit_code == 0, r.output
    assert "validate: 12 of 12 rows usable, 0 dropped" in r.output

    feats = tmp_path / "features"
    r = runner.invoke(app, [
        "features", "--catalog", str(out / "catalog.parquet"), "--out", str(feats),
        "--workers", "0", "--max-images", "1", "--shard-size", "5", "--cell-size", "16",
    ])
    assert r.exit_code == 0, r.output
    assert "features: 12 images" in r.output and "3 shard(s) written" in r.output
    assert "ImageNet" in r.output  # the run says which weights made the features
    assert sorted(p.name for p in feats.glob("*.npy")) == ["part-00000.npy", "part-00001.npy", "part-00002.npy"]
    info = json.loads((feats / "features_info.json").read_text())
    assert info["config"]["cell_size"] == 16  # photos read at 128 px; the serving side reads it back from here
    # A different cell size is a different feature set: the same --out refuses it rather than mixing them.
    r = runner.invoke(app, ["features", "--catalog", str(out / "catalog.parquet"), "--out", str(feats),
                            "--workers", "0", "--max-images", "1", "--shard-size", "5"])
    assert r.exit_code != 0 and "--overwrite" in r.output


def test_validate_reports_bad_rows_and_strict_fails_with_one_line(make_catalog):
    path = make_catalog([{"product_id": "a"}, {"product_id": "a"}, {"title": " "}])
    r = runner.invoke(app, ["validate", "--catalog", str(path)])
    assert r.exit_code == 0
    assert "row 1 (product_id='a'): product_id: duplicate product_id" in r.output
    assert "row 2 (product_id='p002'): title: empty title" in r.output
    r = runner.invoke(app, ["validate", "--catalog", str(path), "--strict"])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: 2 bad row(s) in strict mode: row 1 (product_id='a')")


def test_failures_are_one_line_without_traceback_unless_debug(tmp_path):
    missing = tmp_path / "nope.parquet"
    r = runner.invoke(app, ["features", "--catalog", str(missing), "--out", str(tmp_path / "f")])
    assert r.exit_code == 1
    assert r.output.strip() == f"error: catalog not found: {missing}"
    r = runner.invoke(app, ["--debug", "features", "--catalog", str(missing), "--out", str(tmp_path / "f")])
    assert isinstance(r.exception, FileNotFoundError)
    r = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), "--split", "dev"])
    assert r.exit_code == 1 and "--split must be 'train' or 'test'" in r.output


def test_console_entry_point_runs_as_a_process():
    done = subprocess.run([sys.executable, "-m", "pipelines", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "features" in done.stdout


def test_index_errors_are_one_line(tmp_path):
    r = runner.invoke(app, ["index", "--out", str(tmp_path / "idx"), "--checkpoint", str(tmp_path / "nope"),
                            "--catalog", str(tmp_path / "c.parquet")])
    assert r.exit_code == 1 and "error: checkpoint not found" in r.output
    r = runner.invoke(app, ["index", "--out", str(tmp_path / "idx"), "--checkpoint", str(tmp_path)])
    assert r.exit_code == 1 and "needs --catalog" in r.output
    r = runner.invoke(app, ["index", "--out", str(tmp_path / "idx"), "--checkpoint", str(tmp_path), "--catalog",
                            str(tmp_path / "c.parquet"), "--max-memory", "lots"])
    assert r.exit_code == 1 and "memory size" in r.output


def test_parse_bytes():
    from pipelines.index import parse_bytes

    assert parse_bytes("8GB") == 8 << 30 and parse_bytes("512 mb") == 512 << 20 and parse_bytes("1.5T") == int(1.5 * (1 << 40))
    assert parse_bytes("4096") == 4096 and parse_bytes(None) is None
    with pytest.raises(ValueError):
        parse_bytes("8 parsecs")


def test_an_unknown_training_precision_is_one_line_before_any_work(tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["pretrain", "--catalog", str(tmp_path / "missing.parquet"), "--features", str(tmp_path / "f"),
                            "--out", str(out), "--precision", "fp16"])
    # refused on the setting, not on the missing catalog it would have read next
    assert r.exit_code == 1 and "precision must be one of ('auto', 'fp32', 'bf16'), got 'fp16'" in r.output
    assert "Traceback" not in r.output and not (out / "model.safetensors").exists()
