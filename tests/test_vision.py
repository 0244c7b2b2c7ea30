"""CNN backbones and 8x8 patch extraction: shapes, weights provenance, determinism, raster order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fashionbert.vision import (
    GRID,
    NUM_PATCHES,
    BackboneWeightsError,
    PatchFeatureExtractor,
    build_backbone,
    load_image_tensor,
)


@pytest.fixture(scope="module")
def effnet():
    return build_backbone("efficientnet_lite0", input_size=PatchFeatureExtractor.backbone_input_size("grid"))


@pytest.mark.parametrize(("name", "dim"),
                         [("resnet50", 2048), ("efficientnet_lite0", 1280), ("efficientnet_lite0_multiscale", 432)])
@pytest.mark.parametrize("mode", ["grid", "crop"])
def test_patch_features_have_64_rows_of_the_backbone_dim(name, dim, mode):
    size = PatchFeatureExtractor.backbone_input_size(mode, crop_size=32)
    extractor = PatchFeatureExtractor(build_backbone(name, input_size=size), mode, crop_size=32)
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    out = extractor(images)
    assert out.shape == (2, NUM_PATCHES, dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_wrong_input_shape_is_a_clear_error(effnet):
    with pytest.raises(ValueError, match="expected images of shape"):
        PatchFeatureExtractor(effnet, "grid")(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown patch mode"):
        PatchFeatureExtractor(effnet, "tiles")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown image encoder"):
        build_backbone("vgg16")


def test_resnet50_without_weights_is_seeded_random_and_says_so(tmp_path):
    a, b, c = (build_backbone("resnet50", seed=s) for s in (0, 0, 1))
    assert not a.pretrained and "random init (seed 0)" in a.weights
    wa, wb, wc = (next(x.module.parameters()) for x in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_resnet50_loads_a_local_weights_file(tmp_path):
    from torchvision.models import resnet50

    torch.manual_seed(123)
    reference = resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    loaded = build_backbone("resnet50", weights_path=path)
    assert loaded.pretrained and str(path) in loaded.weights
    assert torch.equal(next(loaded.module.parameters()), reference.conv1.weight)
    with pytest.raises(BackboneWeightsError, match="not found"):
        build_backbone("resnet50", weights_path=tmp_path / "missing.pth")
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(BackboneWeightsError, match="does not hold resnet50 weights"):
        build_backbone("resnet50", weights_path=tmp_path / "wrong.pth")


def test_packaged_efficientnet_weights_recognise_a_real_photo(effnet):
    """The offline default must give real ImageNet features: the skimage cat is classified as a cat."""
    from skimage import data

    net = effnet.module.net
    x = load_image_tensor(Image.fromarray(data.chelsea()), 256).float()
    x = ((x / 255.0 - 0.5) / 0.5)[None].contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        logits = net._fc(net.extract_features(x).mean(dim=(2, 3)))
    top5 = set(logits.topk(5).indices[0].tolist())
    assert top5 & {281, 282, 283, 284, 285}  # ImageNet's domestic cat classes


def _one_lit_cell_batch(cells: list[tuple[int, int]]) -> torch.Tensor:
    base = np.full((256, 256, 3), 40, np.uint8)
    batch = [base]
    for r, c in cells:
        img = base.copy()
        img[r * 32 + 4 : (r + 1) * 32 - 4, c * 32 + 4 : (c + 1) * 32 - 4] = (250, 200, 30)
        batch.append(img)
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()


CELLS = [(0, 1), (1, 1), (2, 5), (5, 2), (6, 6), (7, 3), (3, 3), (4, 5)]  # asymmetric: a transpose fails


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite0_multiscale", "resnet50"])
def test_crop_patch_order_is_raster_row_major(name):
    """Crop mode: lighting up cell (r, c) changes exactly patch r * 8 + c."""
    extractor = PatchFeatureExtractor(build_backbone(name, input_size=32), "crop", crop_size=32)
    out = extractor(_one_lit_cell_batch(CELLS))
    for k, (r, c) in enumerate(CELLS, start=1):
        change = (out[k] - out[0]).norm(dim=-1)
        assert int(change.argmax()) == r * GRID + c
        assert float(change.sum() - change.max()) == 0.0  # no other crop sees the lit cell


@pytest.mark.parametrize(("name", "channels"), [
    ("efficientnet_lite0", slice(None)),
    ("resnet50", slice(None)),
    ("efficientnet_lite0_multiscale", slice(0, 320)),  # the last block's half
    ("efficientnet_lite0_multiscale", slice(320, None)),  # the stride-16 half, pooled onto the same cells
])
def test_grid_patches_line_up_with_crop_cells(name, channels):
    """Grid mode: the centre of mass of the feature change sits on the lit cell, not half a cell off.

    A CNN map cell sees far beyond its cell, so the test uses the change's centroid over the 8x8
    patches (argmax is noisy); without the half-cell padding and offset, resnet50 is off by ~0.45.
    The multi-scale features are checked half by half: a stride-16 map pooled a cell off would
    pass on the concatenation, whose change the 320 wider channels dominate. Each lit cell comes
    with its mirror image, so the pull of a wide receptive field towards the centre cancels in
    the mean and what is left is the shift (the last block's map is wide: with the eight cells
    alone its centre pull read as a 0.29-cell shift, mirrored it is 0.21 and the head's 0.06).
    """
    cells = CELLS + [(GRID - 1 - r, GRID - 1 - c) for r, c in CELLS]
    extractor = PatchFeatureExtractor(build_backbone(name), "grid")
    out = extractor(_one_lit_cell_batch(cells))[..., channels]
    rows, cols = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    errors = []
    for k, (r, c) in enumerate(cells, start=1):
        weight = (out[k] - out[0]).norm(dim=-1).view(GRID, GRID) ** 2
        weight = weight / weight.sum()
        errors.append((float((weight * rows).sum()) - r, float((weight * cols).sum()) - c))
    # A systematic shift moves the mean; single cells near the border are pulled towards the centre.
    mean_error = np.abs(np.mean(errors, axis=0))
    assert (mean_error < 0.25).all(), mean_error


def test_multiscale_features_are_the_blocks_the_head_reads(effnet):
    """The multi-scale map's first 320 channels are exactly what EfficientNet-Lite0's 1x1 head turns into
    the 1280-d map (so it is the network before its head, with the packaged weights), and the other 112
    are the stride-16 stage's map averaged over each cell's 3x3 window."""
    multiscale = build_backbone("efficientnet_lite0_multiscale", input_size=PatchFeatureExtractor.backbone_input_size("grid"))
    assert multiscale.feature_dim == 432 and multiscale.pretrained and multiscale.weights == effnet.weights
    x = torch.randn(2, 3, 288, 288, generator=torch.Generator().manual_seed(3)).contiguous(memory_format=torch.channels_last)
    net = effnet.module.net
    with torch.inference_mode():
        blocks = multiscale.module(x)
        head = effnet.module(x)
        assert blocks.shape == (2, 432, 9, 9)
        torch.testing.assert_close(net._swish(net._bn1(net._conv_head(blocks[:, :320]))), head, atol=1e-4, rtol=1e-4)
        h = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks[:11]:  # through the stride-16 stage (its last block is index 10)
            h = block(h)
        assert h.shape[1:] == (112, 18, 18)
        # patch (2, 5) centres on stride-16 cells (5, 11): the mean of rows 4-6, columns 10-12
        torch.testing.assert_close(blocks[:, 320:, 2, 5], h[:, :, 4:7, 10:13].mean(dim=(2, 3)), atol=1e-5, rtol=1e-5)


def test_extraction_is_deterministic(effnet):
    extractor = PatchFeatureExtractor(effnet, "grid")
    images = torch.randint(0, 256, (3, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(extractor(images), extractor(images))


def test_load_image_tensor_keeps_whole_image_and_converts_mode():
    img = Image.new("L", (300, 120), 128)
    t = load_image_tensor(img, 256)
    assert t.shape == (3, 256, 256) and t.dtype == torch.uint8 and int(t[0, 0, 0]) == 128


def test_the_clis_and_the_jobs_default_image_encoder_is_the_libraries():
    """`features` and `demo` keep literal defaults (so `fashionbert --help` imports no torch): they must agree
    with DEFAULT_IMAGE_ENCODER, which FeatureJobConfig and DemoConfig take."""
    import inspect

    from fashionbert.vision import BACKBONES, DEFAULT_IMAGE_ENCODER
    from indexer.features import FeatureJobConfig
    from pipelines.cli_data import features
    from pipelines.cli_serve import demo
    from pipelines.demo import DemoConfig

    assert DEFAULT_IMAGE_ENCODER in BACKBONES
    for command in (features, demo):
        assert inspect.signature(command).parameters["encoder"].default == DEFAULT_IMAGE_ENCODER, command.__name__
    assert FeatureJobConfig().encoder == DemoConfig().encoder == DEFAULT_IMAGE_ENCODER


@pytest.mark.parametrize("cell_size", [16, 24, 32])
def test_multiscale_halves_have_the_same_map_at_any_cell_size(cell_size):
    """An input side that is not a multiple of 32 leaves the stride-16 map one cell short of twice the
    stride-32 one (144 px: 9 against 5); every coarse cell still gets its window."""
    size = PatchFeatureExtractor.backbone_input_size("grid", cell_size=cell_size)
    extractor = PatchFeatureExtractor(build_backbone("efficientnet_lite0_multiscale", input_size=size), "grid", cell_size)
    images = torch.randint(0, 256, (1, 3, 8 * cell_size, 8 * cell_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(cell_size))
    out = extractor(images)
    assert out.shape == (1, NUM_PATCHES, 432) and torch.isfinite(out).all()
