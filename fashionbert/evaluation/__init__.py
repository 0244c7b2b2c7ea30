"""Evaluation: FashionBERT's random-100 protocol, full-catalog retrieval, and reports (JSON, Markdown, PNG)."""

from fashionbert.evaluation.protocols import (
    CrossEncoder,
    DualEncoder,
    EvalItem,
    Group,
    MemoisedPairScorer,
    build_random100_groups,
    check_group,
    cross_encoder_pair_scorer,
    dual_encoder_pair_scorer,
    evaluate_full_catalog,
    evaluate_random100,
    pessimistic_rank,
    rank_positives,
    recall_at,
)
from fashionbert.evaluation.report import flatten_metrics, markdown_table, recall_curve, write_report

__all__ = [
    "CrossEncoder",
    "DualEncoder",
    "EvalItem",
    "Group",
    "MemoisedPairScorer",
    "build_random100_groups",
    "check_group",
    "cross_encoder_pair_scorer",
    "dual_encoder_pair_scorer",
    "evaluate_full_catalog",
    "evaluate_random100",
    "flatten_metrics",
    "markdown_table",
    "pessimistic_rank",
    "rank_positives",
    "recall_at",
    "recall_curve",
    "write_report",
]
