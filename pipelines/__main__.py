"""``python -m pipelines`` is the ``fashionbert`` console script."""

from pipelines.cli import app

app()
