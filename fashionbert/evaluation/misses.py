"""Why random-100 queries miss Rank@1: ties no reader could break, another sub-category, or a real mistake.

Why report it: random-100's Rank@1 sits far below 1 even for a perfect reader of the
synthetic catalog (titles leave attributes out; products of a sub-category can share
every attribute), so a Rank@1 figure alone does not say whether a model loses on
unavoidable ties or on attributes it cannot yet read. Each miss is explained by the
best-scored negative of its group (``evaluate_random100`` keeps it per query):

* ``other_sub_category``: that negative is a top-up from another sub-category (the
  product type was not checked);
* ``tie``: the Bayes reader (:func:`fashionbert.synthetic.text.title_likelihood`) rates it
  at least as likely as the positive: no model can be blamed for it;
* ``mistake``: a real mistake. ``mistake.<attribute>`` counts the named attributes on
  which it contradicts the text (a miss may count under several), and
  ``mistake.unnamed`` the mistakes that contradict nothing the title names but are less
  likely (an attribute the title would probably have named).

Shares are of the direction's queries, so ``1 - r1 == tie + other_sub_category + mistake``.
This is the analysis that found the cross encoder's blindness to the product type
(docs/results.md, stop 33); it runs on the scores the protocol already has.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fashionbert.evaluation.protocols import DIRECTIONS, EvalItem
from fashionbert.synthetic.text import title_likelihood

MISS_CLASSES = ("tie", "other_sub_category", "mistake")
UNNAMED = "unnamed"


@dataclass(frozen=True)
class KnownAttributes:
    """What a synthetic catalog records about each evaluation item: its attributes and what its title names.

    ``named[i]`` maps each attribute item i's title names (``sub_category`` included) to its value.
    """

    attributes: Sequence[Mapping[str, str]]
    named: Sequence[Mapping[str, str]]

    def likelihood(self, text: int, image: int) -> float:
        """P(item ``text``'s title | item ``image``'s attributes): what the Bayes-optimal ranker orders by."""
        return title_likelihood(self.named[text], self.attributes[image])

    def contradicted(self, text: int, image: int) -> list[str]:
        """The attributes item ``text``'s title names (besides the noun) that item ``image`` does not have."""
        return sorted(k for k, v in self.named[text].items()
                      if k != "sub_category" and self.attributes[image].get(k) != v)


def top1_misses(result: Mapping[str, Any], items: Sequence[EvalItem], known: KnownAttributes) -> dict[str, float]:
    """Flat shares ``{d}.top1_miss.{tie,other_sub_category,mistake,mistake.<attribute>}`` for both directions.

    ``result`` is what :func:`~fashionbert.evaluation.protocols.evaluate_random100` returned for
    ``items``; the keys have no ``random100.`` prefix, so a caller can file them under any scorer's.
    """
    out: dict[str, float] = {}
    for d in DIRECTIONS:
        block = result[d]
        counts: Counter[str] = Counter()
        for query, rank, negative in zip(block["queries"], block["ranks"], block["top_negatives"]):
            if rank == 1 or negative < 0:
                continue
            if items[negative].sub_category != items[query].sub_category:
                counts["other_sub_category"] += 1
                continue
            # t2i: the query's title against the negative's picture; i2t: the negative's title against the query's.
            text, image = (query, negative) if d == "t2i" else (negative, query)
            if known.likelihood(text, image) >= known.likelihood(query, query):
                counts["tie"] += 1
                continue
            counts["mistake"] += 1
            for attribute in known.contradicted(text, image) or [UNNAMED]:
                counts[f"mistake.{attribute}"] += 1
        n = len(block["queries"])
        for name in (*MISS_CLASSES, *sorted(k for k in counts if k.startswith("mistake."))):
            out[f"{d}.top1_miss.{name}"] = counts[name] / n if n else float("nan")
    return out
