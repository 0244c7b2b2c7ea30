"""Pretraining data (corpus, hard-negative batches, masking) and tasks (named losses)."""

from fashionbert.pretraining.data import PretrainCollator, PretrainCorpus, PretrainRecord, SubCategoryBatchSampler
from fashionbert.pretraining.task import TASKS, PretrainingTask

__all__ = ["TASKS", "PretrainCollator", "PretrainCorpus", "PretrainRecord", "PretrainingTask", "SubCategoryBatchSampler"]
