"""Products as the tagger reads them, and the training variants of a product.

A training row is read as one of these variants:

* ``full``: its title and its views;
* ``no_image`` / ``no_title``: one modality removed (modality dropout, so a product with only one
  of them at inference is not out of distribution);
* ``stray``: one of its views swapped for the photo in the same position of another product of
  the same sub-category - an **injected stray**. Why: real photo sets hold such mix-ups (a
  sibling listing's colourway uploaded by mistake), and the tagger's high-level attention over
  views exists to drop them; but the catalog does not say which photos are strays, so the tag
  loss alone is a weak teacher. An injected stray's slot is known, so the attention can be
  taught directly to give it no weight (``TrainOptions.stray_loss_weight``), on any catalog,
  with no label (docs/design.md item 56).

  Any slot may be swapped, the front shot too, though real strays are never the front shot,
  and the donor's photo is its photo in that slot (the same kind of shot where listings keep
  the same order). Why: when only later slots were swapped, the attention learnt the shortcut
  "keep the front shot alone" - a stray got 0.01 of the weight, and the close-ups' pattern and
  fabric were lost with it (F1@3 -0.04, trend-tag mAP -0.2). Neither the position nor the
  kind of shot may tell a stray; only its disagreement with the title and the other photos.

Each row's stray plan (which slot, which donor product and view) is a pure function of the row
and the catalog, drawn once from a generator seeded with the row: the frozen trunk's states of
a ``stray`` row can then be cached like the others and shared by every run on the same data.
Donors come from the whole catalog given (also the validation rows): a donor's photo is
something the model is taught to ignore, never a label.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FULL, NO_IMAGE, NO_TITLE, STRAY = "full", "no_image", "no_title", "stray"
VARIANTS = (FULL, NO_IMAGE, NO_TITLE)  # the modality-dropout variants (every row has them)
STRAY_PLAN_SEED = 1729  # the stray plans' generator seed (with the row), fixed so caches are shared across runs
DONOR_TRIES = 16  # draws of a donor with an image before a row is left without a stray plan


@dataclass(frozen=True)
class StrayPlan:
    """Row ``host`` read with its view ``slot`` replaced by view ``donor_view`` of product ``donor``."""

    host: int
    slot: int
    donor: int
    donor_view: int


@dataclass
class TagDataset:
    """Products as the tagger reads them; ``views(i)`` loads product i's [V, 64, D] features lazily (None: no image).

    ``groups`` (e.g. each product's sub-category) is where an injected stray's donor comes from:
    a product of the same group, so the stray differs in colour or pattern, not in kind, as real
    mix-ups do. Without groups the donor is any other product.

    ``view_count(i)`` (optional) is ``len(views(i))`` without reading the features (0: no image).
    Why: drawing a stray plan only counts the host's and the donor's views, and a feature store
    knows the counts from its index; without it the views are loaded to be counted.
    """

    titles: list[str]
    tags: list[list[str]]
    views: Callable[[int], np.ndarray | None]
    product_ids: list[str] | None = None
    groups: list[str] | None = None
    view_count: Callable[[int], int] | None = None
    _plans: dict[tuple[int, int], StrayPlan | None] = field(default_factory=dict, init=False, repr=False)
    _members: dict[str, list[int]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.titles) != len(self.tags):
            raise ValueError(f"{len(self.titles)} titles but {len(self.tags)} tag lists")
        if self.groups is not None and len(self.groups) != len(self.titles):
            raise ValueError(f"{len(self.titles)} titles but {len(self.groups)} groups")

    def __len__(self) -> int:
        return len(self.titles)

    def _view_count(self, row: int) -> int:
        if self.view_count is not None:
            return self.view_count(row)
        views = self.views(row)
        return 0 if views is None else len(views)

    def _group_members(self, row: int) -> Sequence[int]:
        """The rows of ``row``'s group in ascending order, ``row`` included (all rows without groups)."""
        if self.groups is None:
            return range(len(self))
        if self._members is None:
            members: dict[str, list[int]] = defaultdict(list)
            for r, g in enumerate(self.groups):
                members[g].append(r)
            self._members = dict(members)
        return self._members[self.groups[row]]

    def stray_plan(self, row: int, max_views: int) -> StrayPlan | None:
        """Where row ``row`` gets its injected stray when read with ``max_views`` views (None: it cannot).

        A row needs two views read (with one, the stray would be all there is to see) and a donor
        with an image in its group.
        """
        key = (row, max_views)
        if key not in self._plans:
            self._plans[key] = self._draw_plan(row, max_views)
        return self._plans[key]

    def _draw_plan(self, row: int, max_views: int) -> StrayPlan | None:
        shown = min(self._view_count(row), max_views)
        members = self._group_members(row)
        others = len(members) - 1  # the group without the row itself, indexed without copying it per row
        if shown < 2 or not others:
            return None
        own = bisect_left(members, row)
        rng = np.random.default_rng([STRAY_PLAN_SEED, row])
        slot = int(rng.integers(shown))
        for _ in range(DONOR_TRIES):
            pick = int(rng.integers(others))
            donor = members[pick + (pick >= own)]
            count = self._view_count(donor)
            if count:  # the donor's shot in the same position (its last when it has fewer)
                return StrayPlan(row, slot, donor, min(slot, count - 1))
        return None

    def stray_views(self, plan: StrayPlan) -> np.ndarray:
        """The host's views with the plan's slot holding the donor's view."""
        host = self.views(plan.host)
        donor = self.views(plan.donor)
        if host is None or donor is None:
            raise ValueError(f"stray plan {plan} needs images of both products")
        views = np.array(host, dtype=np.float32, copy=True)
        views[plan.slot] = donor[plan.donor_view]
        return views

    def inputs(self, rows: Sequence[int], variants: Sequence[str] | None = None,
               max_views: int | None = None) -> tuple[list[str], list[Any]]:
        """Titles and views of ``rows``, with a modality removed or a stray injected where the variant says so.

        A ``stray`` variant needs ``max_views`` (the plan's slot is among the views read) and a row that has a plan.
        """
        variants = variants or [FULL] * len(rows)
        titles = ["" if v == NO_TITLE else self.titles[r] for r, v in zip(rows, variants)]
        views = []
        for r, v in zip(rows, variants):
            if v == STRAY:
                plan = self.stray_plan(r, max_views) if max_views is not None else None
                if plan is None:
                    raise ValueError(f"row {r} has no stray plan (it needs two views read, max_views={max_views}, "
                                     "and a donor with an image)")
                views.append(self.stray_views(plan))
            elif v in VARIANTS:
                views.append(None if v == NO_IMAGE else self.views(r))
            else:
                raise ValueError(f"unknown variant {v!r}; one of {', '.join((*VARIANTS, STRAY))}")
        return titles, views
