"""Seeded synthetic fashion catalog: the embedded default data (ARCHITECTURE.md section 7).

Garments are drawn procedurally from attributes, and titles/queries in Chinese
and English are generated from the same attributes, so retrieval quality can
be measured against known ground truth without downloading anything.
"""

from fashionbert.synthetic.attributes import attribute_combo, split_of_combo
from fashionbert.synthetic.catalog import SynthResult, generate_catalog

__all__ = ["SynthResult", "attribute_combo", "generate_catalog", "split_of_combo"]
