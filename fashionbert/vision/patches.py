"""Image -> 8x8 grid -> 64 patch feature vectors (FashionBERT's image tokens).

Two extraction modes, same output layout ([B, 64, D], raster order: patch
``r * 8 + c`` is row ``r``, column ``c``):

* ``crop`` - FashionBERT's way: the image is cut into 64 cells, each cell is
  resized to ``crop_size`` and passed through the CNN on its own, and the
  pooled output is the patch feature. Faithful, but 64 CNN passes per image.
* ``grid`` - one pass of the whole image; each cell of the final feature map
  is a patch feature. About 50x cheaper, and each patch sees its context.

Grid alignment: a stride-32 CNN's map cell is not centred on the image cell
of the same index - padding conventions shift it by about half a cell
(torchvision pads symmetrically, TF-style "same" padding pads bottom/right).
So the image is padded by half a cell on every side (9x9 map) and the 8x8
window that lines up with the image cells is taken (``Backbone.grid_offset``);
``tests/test_vision.py`` checks the alignment. It costs ~27 % more compute
than an unpadded pass and keeps patch i describing image cell i, which the
masked-patch targets and the attention heatmap rely on.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fashionbert.vision.backbones import Backbone

GRID = 8
NUM_PATCHES = GRID * GRID
PatchMode = Literal["grid", "crop"]


def load_image_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """RGB uint8 tensor [3, size, size]. The whole product is kept (squashed, not centre-cropped)."""
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


class PatchFeatureExtractor(nn.Module):
    """Backbone + patching. Input: uint8 [B,3,S,S] with S = 8 * cell_size; output float [B,64,D]."""

    def __init__(
        self,
        backbone: Backbone,
        mode: PatchMode = "grid",
        cell_size: int = 32,
        crop_size: int = 224,
        crop_chunk: int = 256,
    ):
        super().__init__()
        if mode not in ("grid", "crop"):
            raise ValueError(f"unknown patch mode {mode!r}; choose 'grid' or 'crop'")
        self.backbone = backbone.module
        self.mode = mode
        self.cell_size = cell_size
        self.crop_size = crop_size
        self.crop_chunk = crop_chunk  # crops per CNN call: bounds memory (a batch of 64 images is 4096 crops)
        self.feature_dim = backbone.feature_dim
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1) * 255.0, persistent=False)

        self.grid_offset = backbone.grid_offset

    @property
    def image_size(self) -> int:
        """Side of the uint8 images this extractor takes."""
        return GRID * self.cell_size

    @staticmethod
    def backbone_input_size(mode: PatchMode, cell_size: int = 32, crop_size: int = 224) -> int:
        """Side of the tensors the CNN itself sees (what :func:`build_backbone` needs to know)."""
        return GRID * cell_size + cell_size if mode == "grid" else crop_size

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        half = self.cell_size // 2
        padded = F.pad(x, (half, half, half, half), mode="replicate").contiguous(memory_format=torch.channels_last)
        fmap = self.backbone(padded)
        if fmap.shape[-2:] != (GRID + 1, GRID + 1):  # a backbone of another stride: pool to the 9x9 layout
            fmap = F.adaptive_avg_pool2d(fmap, GRID + 1)
        o = self.grid_offset
        fmap = fmap[:, :, o : o + GRID, o : o + GRID]
        return fmap.flatten(2).transpose(1, 2)  # [B, C, 8, 8] -> [B, 64, C], row-major

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.shape
        s = self.cell_size
        cells = x.unfold(2, s, s).unfold(3, s, s)  # [B, 3, 8, 8, s, s]
        cells = cells.permute(0, 2, 3, 1, 4, 5).reshape(b * NUM_PATCHES, c, s, s)
        pooled = []
        for chunk in cells.split(self.crop_chunk):
            if self.crop_size != s:
                chunk = F.interpolate(chunk, size=(self.crop_size, self.crop_size), mode="bilinear", align_corners=False)
            pooled.append(self.backbone(chunk.contiguous(memory_format=torch.channels_last)).mean(dim=(2, 3)))
        return torch.cat(pooled).view(b, NUM_PATCHES, -1)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        expected = (3, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"expected images of shape [B, {expected}], got {tuple(images.shape)}")
        x = self._normalise(images)
        return self._grid(x) if self.mode == "grid" else self._crop(x)
