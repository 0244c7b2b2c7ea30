"""The root of the ``fashionbert`` console script: the typer app and its global options.

The commands live in ``pipelines.cli_*`` modules that register on this ``app``;
:mod:`pipelines.cli` imports them all and is the entry point.

What every command shares (job files, JSON logs, one-line errors) is described in
:mod:`pipelines.cli`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.cli_support import CliGroup, set_global_options

__all__ = ["app", "MODEL_SIZES"]

app = typer.Typer(
    name="fashionbert",
    help="FashionBERT-style cross-modal e-commerce search: data, features, training, indexing, serving.",
    cls=CliGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# The named model sizes of fashionbert.configuration.NAMED_CONFIGS (not imported here: it pulls in
# transformers, and `fashionbert --help` should stay fast; tests/test_cli_config.py checks they match).
MODEL_SIZES = ("tiny", "small", "base")


@app.callback()
def _main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on failure.")] = False,
    log_json: Annotated[bool, typer.Option("--log-json", help="JSON lines on stdout for any command (same as its --log-json).")] = False,
) -> None:
    set_global_options(ctx, debug=debug, log_json=log_json)
