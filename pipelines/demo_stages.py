"""The demo's model, evaluation, index and serving stages, each reused when its inputs match.

Why markers: a stage is skipped only when what it produced was made from the same inputs
(catalog and features fingerprints, the checkpoint's sha256, the settings), so changing
``--minutes`` retrains and a new checkpoint re-evaluates and re-indexes, while a plain
second run goes straight to serving.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

from indexer.embeddings import checkpoint_sha256
from indexer.versions import IndexDir

Echo = Callable[[str], None]
DONE_FILE = "demo_stage.json"
EXAMPLE_QUERIES = ("red floral summer dress", "black leather handbag", "白色 运动鞋")


def _marker_matches(directory: Path, inputs: dict) -> bool:
    path = directory / DONE_FILE
    return path.is_file() and json.loads(path.read_text()).get("inputs") == inputs


def _mark(directory: Path, inputs: dict, **outputs: object) -> None:
    (directory / DONE_FILE).write_text(json.dumps({"inputs": inputs, **outputs}, indent=2, ensure_ascii=False))


def _fingerprint(path: Path) -> str:
    info = path / "features_info.json"
    if info.is_file():
        return json.loads(info.read_text()).get("plan_sha256") or info.read_text()
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def ensure_checkpoint(out: Path, catalog: Path, features: Path, tokenizer: Path, *, minutes: float, steps: int,
                      batch_size: int, seed: int, model_overrides: dict, echo: Echo) -> Path:
    """Pretrain the tiny model for at most ``minutes`` (resumes a killed run; reuses a finished one)."""
    from pipelines.pretrain import PretrainConfig, pretrain

    inputs = {"catalog": _fingerprint(catalog), "features": _fingerprint(features), "minutes": minutes, "steps": steps,
              "batch_size": batch_size, "seed": seed, "model_overrides": model_overrides}
    if _marker_matches(out, inputs) and (out / "model.safetensors").is_file():
        echo(f"pretrain: reusing {out}")
        return out
    cfg = PretrainConfig(catalog=catalog, features=features, out=out, model_config="tiny", tokenizer=tokenizer,
                         steps=steps, max_minutes=minutes, batch_size=batch_size, seed=seed,
                         # ~200 steps fit in 10 CPU minutes: a 100-step warm-up was half of them
                         warmup_steps=min(40, max(1, steps // 10)), model_overrides=model_overrides)
    result = pretrain(cfg, echo=echo)
    echo(f"pretrain: {result.steps_done} steps in {result.seconds / 60:.1f} min ({result.samples_per_second:.1f} samples/s), "
         f"stopped by {result.stopped_by} -> {out}")
    _mark(out, inputs, steps_done=result.steps_done)
    return out


def ensure_eval(checkpoint: Path, catalog: Path, features: Path, out: Path, *, queries: int, echo: Echo) -> dict[str, float]:
    """Both protocols on the held-out split; prints the Markdown table."""
    from pipelines.evaluate import EvalConfig, evaluate

    out.mkdir(parents=True, exist_ok=True)
    inputs = {"checkpoint": checkpoint_sha256(checkpoint), "catalog": _fingerprint(catalog), "queries": queries}
    report = out / "eval.json"
    if _marker_matches(out, inputs) and report.is_file():
        echo(f"eval: reusing {report}")
        metrics = json.loads((out / DONE_FILE).read_text())["metrics"]
    else:
        metrics = evaluate(EvalConfig(checkpoint, catalog, features, json_out=report, n_queries=queries), echo=echo)
        _mark(out, inputs, metrics=metrics)
    table = report.with_suffix(".md")
    if table.is_file():
        echo(table.read_text().rstrip())
    return metrics


def ensure_tagger(out: Path, catalog: Path, features: Path, checkpoint: Path, *, minutes: float, epochs: int, seed: int,
                  echo: Echo) -> Path:
    """Train the tag recommender on the train split for at most ``minutes`` (reused when its inputs match)."""
    from pipelines.tags import TagTrainConfig, train_tagger

    inputs = {"catalog": _fingerprint(catalog), "features": _fingerprint(features),
              "checkpoint": checkpoint_sha256(checkpoint), "minutes": minutes, "epochs": epochs, "seed": seed}
    if _marker_matches(out, inputs) and (out / "tagger_config.json").is_file():
        echo(f"tagger: reusing {out}")
        return out
    summary = train_tagger(TagTrainConfig(catalog=catalog, features=features, checkpoint=checkpoint, out=out,
                                          max_minutes=minutes, epochs=epochs, seed=seed), echo=echo)
    echo(summary.line())
    _mark(out, inputs, best_val=summary.best_val)
    return out


def ensure_tag_eval(tagger: Path, catalog: Path, features: Path, out: Path, *, echo: Echo) -> dict[str, float]:
    """The tagger and its two baselines on the held-out split; prints the F1@3 line."""
    from fashionbert.tagging.tagger import tagger_version
    from pipelines.tags import evaluate_tagger

    out.mkdir(parents=True, exist_ok=True)
    inputs = {"tagger": tagger_version(tagger), "catalog": _fingerprint(catalog), "features": _fingerprint(features)}
    report = out / "tags_eval.json"
    if _marker_matches(out, inputs) and report.is_file():
        echo(f"tags eval: reusing {report}")
        metrics = json.loads((out / DONE_FILE).read_text())["metrics"]
    else:
        metrics = evaluate_tagger(tagger, catalog, features, report, echo=echo)
        _mark(out, inputs, metrics=metrics)
    echo(tag_eval_line(metrics))
    return metrics


def tag_eval_line(metrics: dict[str, float]) -> str:
    parts = [f"{label} {metrics[f'{key}.f1@3']:.3f}" for key, label in
             (("model", "tagger"), ("late_fusion", "late-fusion linear"), ("joint_probe", "joint-pass linear probe"),
              ("most_frequent", "most frequent"))
             if f"{key}.f1@3" in metrics]
    return "tags: held-out F1@3 " + " | ".join(parts) + (f" (P@1 {metrics['model.p@1']:.3f})" if "model.p@1" in metrics else "")


def ensure_index(index_dir: Path, catalog: Path, features: Path, checkpoint: Path, echo: Echo) -> Path:
    """The search index of ``catalog`` (its features reused), unless the live version already is it."""
    from pipelines.index import IndexOptions, run_index

    root = IndexDir(index_dir)
    sha = checkpoint_sha256(checkpoint)
    inputs = {"catalog": _fingerprint(catalog), "features": _fingerprint(features), "checkpoint": sha}
    if root.current() and _marker_matches(index_dir, inputs):
        echo(f"index: reusing {root.current_path()}")
        return index_dir
    summary = run_index(IndexOptions(out=index_dir, checkpoint=checkpoint, catalog=catalog, features=features))
    for line in summary.lines():
        echo(line)
    _mark(index_dir, inputs, version=summary.version)
    return index_dir


def example_results(index_dir: Path, n: int = 3) -> list[tuple[str, list[str]]]:
    """The example queries' top titles, straight from the published index (what the API serves)."""
    from search_api.engine import Engine
    from search_api.loaded_index import LoadedIndex

    index = LoadedIndex(IndexDir(index_dir).current_path())
    engine = Engine.load(index.infos["checkpoint"])
    hits = index.search("product", engine.encode_queries(list(EXAMPLE_QUERIES)), n)
    return [(q, [index.value("title", int(r)) for r in h.rows]) for q, h in zip(EXAMPLE_QUERIES, hits)]


def print_examples(examples: list[tuple[str, list[str]]], echo: Echo) -> None:
    for query, titles in examples:
        echo(f"  {query!r}:")
        for rank, title in enumerate(titles, 1):
            echo(f"    {rank}. {title}")


def serve(index_dir: Path, host: str, port: int, echo: Echo, tagger: Path | None = None) -> None:
    """The API and demo page until Ctrl-C; the URL and example queries are printed once it is ready.

    ``tagger``: the tag recommender behind POST /api/v1/tags and the page's suggested tags."""
    import httpx
    import uvicorn

    from search_api.app import create_app
    from search_api.settings import Settings

    server = uvicorn.Server(uvicorn.Config(create_app(Settings(index_dir=index_dir, tagger=tagger)), host=host, port=port, log_level="warning"))
    url = f"http://{host}:{port}/"

    def announce() -> None:
        while not server.started and not server.should_exit:
            threading.Event().wait(0.1)
        if not server.started:
            return
        echo(f"serving the demo page on {url} (API docs: {url}docs); Ctrl-C stops")
        for query in EXAMPLE_QUERIES:
            r = httpx.post(f"{url}api/v1/search", json={"query": query, "k": 3}, timeout=30).json()
            echo(f"  {query!r}: " + " | ".join(h["title"] for h in r.get("results", [])))

    threading.Thread(target=announce, daemon=True).start()
    server.run()
