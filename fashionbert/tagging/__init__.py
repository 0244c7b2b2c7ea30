"""Tag recommendation for products from their photos and title (multi-level attention + MFB fusion).

A library: nothing here knows about the CLI or the web service. ``pipelines/tags.py`` reads
catalogs and features and calls :func:`fit_tagger`; the search API loads a saved
:class:`Tagger` directory.
"""

from fashionbert.tagging.baselines import LateFusionLinear, MostFrequentTags, pooled_features
from fashionbert.tagging.config import TaggerConfig
from fashionbert.tagging.dataset import StrayPlan, TagDataset
from fashionbert.tagging.metrics import average_precision, ranking_metrics, score_metrics, tag_average_precision, top_k
from fashionbert.tagging.model import MFB, HeadInputs, TaggerHead, masked_gate, masked_mean, masked_softmax, masked_sparsemax
from fashionbert.tagging.tagger import Tagger, TaggerNotFoundError
from fashionbert.tagging.training import FitResult, StateCache, TrainOptions, fit_tagger
from fashionbert.tagging.vocabulary import TagVocabulary

__all__ = [
    "MFB", "FitResult", "HeadInputs", "LateFusionLinear", "MostFrequentTags", "StateCache", "StrayPlan", "TagDataset", "TagVocabulary",
    "Tagger", "TaggerConfig", "TaggerHead", "TaggerNotFoundError", "TrainOptions", "fit_tagger", "masked_mean",
    "average_precision", "masked_gate", "masked_softmax", "masked_sparsemax", "pooled_features", "ranking_metrics", "score_metrics", "tag_average_precision",
    "top_k",
]
