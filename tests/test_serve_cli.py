"""`fashionbert serve`: a real server process from the CLI, and its one-line start-up errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
from typer.testing import CliRunner

from pipelines.cli import app
from tests.api_fixtures import api_index, free_port  # noqa: F401 - fixture


def test_serve_starts_a_real_server_from_the_cli(api_index, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASHIONBERT_")}
    env["FASHIONBERT_RELOAD_POLL_S"] = "0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "serve", "--index", str(api_index.index_dir), "--port", str(port),
         "--batch-max-size", "4", "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 90
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert ready is not None and ready.status_code == 200, "the server did not become ready"
        assert ready.json()["model"]["batching"]["max_batch"] == 4  # the flag reached the worker's settings
        r = httpx.post(f"http://127.0.0.1:{port}/api/v1/search", json={"query": "red dress", "k": 3})
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        assert httpx.get(f"http://127.0.0.1:{port}/").headers["content-type"].startswith("text/html")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"serving {api_index.index_dir}" in out and f"http://127.0.0.1:{port}/" in out


def test_serve_without_an_index_is_a_one_line_error(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith("FASHIONBERT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("FASHIONBERT_INDEX_DIR", "")  # run_serve exports its flags; monkeypatch removes them after
    result = CliRunner().invoke(app, ["serve", "--index", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert "no published index" in result.output and "fashionbert index" in result.output
    assert "Traceback" not in result.output
