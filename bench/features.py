"""Benchmark: patch-feature extraction throughput (images/s).

Measures the extractor alone (uint8 images already in memory) for every
encoder x mode x batch size, then reports the grid-vs-crop speed ratio per
encoder. Crop mode runs 64 CNN passes per image, so on a CPU it is measured
at batch sizes 1 and 16 only (its images/s barely depends on the batch size:
one image is already a batch of 64 crops) unless ``--full`` is given.

    python bench/features.py                       # this machine, auto device
    python bench/features.py --device cuda --full  # on a GPU (fp16 autocast)
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from fashionbert.vision import PatchFeatureExtractor, build_backbone

CONFIGS = [("resnet50", "crop"), ("resnet50", "grid"), ("efficientnet_lite0", "grid"), ("efficientnet_lite0", "crop"),
           ("efficientnet_lite0_multiscale", "grid"), ("efficientnet_lite0_multiscale", "crop")]


def measure(extractor: PatchFeatureExtractor, batch: int, device: torch.device, min_seconds: float) -> float:
    """Images/s over at least ``min_seconds`` (and at least one batch) after one warm-up batch."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 256, 256), dtype=torch.uint8, generator=gen).to(device)
    amp = device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        extractor(images[: max(1, min(batch, 2))])
        if device.type == "cuda":
            torch.cuda.synchronize()
        done, start = 0, time.perf_counter()
        while done == 0 or time.perf_counter() - start < min_seconds:
            extractor(images)
            if device.type == "cuda":
                torch.cuda.synchronize()
            done += batch
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", default="1,16,64")
    parser.add_argument("--crop-size", type=int, default=224, help="side each crop is resized to (crop mode)")
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--full", action="store_true", help="also crop mode at batch sizes > 16 on a CPU")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    print(f"bench/features.py on {device} ({where}), torch {torch.__version__}, crop size {args.crop_size}")
    print(f"{'encoder':<31}{'mode':<6}{'batch':>6}{'images/s':>12}")
    results: dict[str, float] = {}
    for encoder, mode in CONFIGS:
        size = PatchFeatureExtractor.backbone_input_size(mode, crop_size=args.crop_size)  # type: ignore[arg-type]
        extractor = PatchFeatureExtractor(build_backbone(encoder, input_size=size), mode, crop_size=args.crop_size).to(device)
        for batch in batches:
            if mode == "crop" and batch > 16 and device.type == "cpu" and not args.full:
                print(f"{encoder:<31}{mode:<6}{batch:>6}{'skipped':>12}  (CPU; --full to run)")
                continue
            ips = measure(extractor, batch, device, args.min_seconds)
            results[f"{encoder}/{mode}/b{batch}"] = ips
            print(f"{encoder:<31}{mode:<6}{batch:>6}{ips:>12.2f}", flush=True)
    for encoder in dict.fromkeys(encoder for encoder, _ in CONFIGS):
        grid = max(v for k, v in results.items() if k.startswith(f"{encoder}/grid/"))
        crop = max(v for k, v in results.items() if k.startswith(f"{encoder}/crop/"))
        print(f"{encoder}: grid/crop speed ratio = {grid / crop:.1f}x (best batch of each)")
        results[f"{encoder}/grid_over_crop"] = grid / crop
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": str(device), "crop_size": args.crop_size, "images_per_s": results}, fh, indent=2)


if __name__ == "__main__":
    main()
