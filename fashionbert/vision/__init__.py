"""Image side of FashionBERT: CNN backbones and the 8x8 patch feature extractor."""

from fashionbert.vision.backbones import (
    BACKBONES,
    DEFAULT_IMAGE_ENCODER,
    Backbone,
    BackboneWeightsError,
    build_backbone,
)
from fashionbert.vision.patches import GRID, NUM_PATCHES, PatchFeatureExtractor, load_image_tensor

__all__ = [
    "BACKBONES",
    "DEFAULT_IMAGE_ENCODER",
    "GRID",
    "NUM_PATCHES",
    "Backbone",
    "BackboneWeightsError",
    "PatchFeatureExtractor",
    "build_backbone",
    "load_image_tensor",
]
