"""The ``fashionbert`` console script: thin typer wrappers over library and job functions.

Every subcommand (see :mod:`pipelines.cli_support`, which also says how to add one):

- takes ``--config JOB.yaml`` (YAML or JSON; keys are the option names; flags override it),
- writes its effective config next to its outputs (``OUT/fashionbert-<command>.yaml``),
  which ``--config`` reruns,
- takes ``--log-json`` (also ``fashionbert --log-json <command>``): JSON lines on stdout,
- fails with a one-line reason and a non-zero exit code; the traceback is shown only with
  ``fashionbert --debug ...``.

The root app is in :mod:`pipelines.cli_app`; the commands, grouped by job, in
:mod:`pipelines.cli_data`, :mod:`pipelines.cli_train`, :mod:`pipelines.cli_serve` and
:mod:`pipelines.tags_cli` (the ``tags`` sub-app).
"""

from __future__ import annotations

# Importing registers the commands, in this order in --help: data, model, serving, tags.
from pipelines import cli_data  # noqa: F401, I001
from pipelines import cli_train  # noqa: F401
from pipelines import cli_serve  # noqa: F401
from pipelines.cli_app import MODEL_SIZES, app
from pipelines.cli_support import one_line_errors
from pipelines.tags_cli import tags_app

app.add_typer(tags_app, name="tags")

__all__ = ["app", "one_line_errors", "MODEL_SIZES"]

if __name__ == "__main__":
    app()
