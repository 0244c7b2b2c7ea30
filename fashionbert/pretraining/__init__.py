"""Pretraining data (corpus, hard-negative batches, masking) and tasks (named losses)."""

from fashionbert.pretraining.collator import DEFAULT_TIA_OTHER_SUB_SHARE, PretrainCollator
from fashionbert.pretraining.data import (
    MixedBatchSampler,
    PretrainCorpus,
    PretrainRecord,
    SubCategoryBatchSampler,
    queries_from_log,
)
from fashionbert.pretraining.task import TASKS, PretrainingTask

__all__ = ["DEFAULT_TIA_OTHER_SUB_SHARE", "TASKS", "MixedBatchSampler", "queries_from_log", "PretrainCollator", "PretrainCorpus", "PretrainRecord", "PretrainingTask", "SubCategoryBatchSampler"]
