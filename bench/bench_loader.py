"""The data loader's throughput against the training step it feeds (issue 15), on this machine.

Measures, each on generated data in its real on-disk format:

- loader images/s for ``--loader-workers`` 0, 1, 2 (the training process itself, or worker
  processes) with the default augmentation of each source: CIFAR-style 32x32 uint8 arrays with
  crop-flip; a folder of 320x240 JPEGs (ImageNet-like) decoded and augmented with inception to
  224; the same folder's evaluation pipeline (resize 256 + center crop 224);
- the training step (forward, backward, AdamW) of the vanilla TAT ResNet-50 the CIFAR examples use
  (width 8, 32x32, small-input stem, batch 128) in images/s, with the same number of threads.

    python bench/bench_loader.py [--threads 1] [--out FILE.json]

A worker process decodes and augments on one core; the ratio "step images/s / loader images/s per
worker" is how many workers keep the step busy. Each figure is the best of ``--repeats`` passes (the
machine may be shared).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch

from tat_ext import datasets
from tat_ext.datasets.augment import resolve_pipeline
from tat_ext.datasets.loader import BatchPlan, batches, make_loader


def _jpeg_folder(root: str, count: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = os.path.join(root, "train" if i % 8 else "val", f"class{i % 4}")
        os.makedirs(folder, exist_ok=True)
        base = np.linspace(0, 200, 320 * 240).reshape(240, 320, 1) + rng.integers(0, 55, (240, 320, 3))
        Image.fromarray(base.astype(np.uint8)).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def _loader_rate(split, pipeline, train: bool, workers: int, batch: int, repeats: int) -> float:
    plan = BatchPlan()
    loader = make_loader(split, pipeline, train=train, workers=workers, device=torch.device("cpu"), plan=plan)
    index = torch.arange(len(split) // batch * batch).view(-1, batch)
    best = 0.0
    for epoch in range(repeats):
        plan.set([(epoch if train else None, rows) for rows in index])
        start = time.perf_counter()
        count = sum(len(y) for _, y in batches(loader))
        best = max(best, count / (time.perf_counter() - start))
    return best


def _step_rate(batch: int, repeats: int) -> float:
    from tat_ext import models

    model = models.vanilla_resnet(50, 10, width=8, small_input=True, input_size=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    best = 0.0
    for i in range(repeats + 1):
        start = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step warms up
            best = max(best, batch / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training step (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="write the figures here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    cifar = datasets.synthetic(8192, 128, size=32)  # the layout of CIFAR in memory: [N, 3, 32, 32]
    cifar = datasets.ImageData("cifar-like", datasets.Split((cifar.train.images.abs() * 60).clamp(0, 255).to(torch.uint8),
                                                            cifar.train.labels), cifar.test, 10, 1 / 255, (0.5,) * 3,
                               (0.25,) * 3, default_augment="crop-flip")
    with tempfile.TemporaryDirectory() as root:
        _jpeg_folder(root, 512)
        folder = datasets.imagefolder(root)
        cases = [("CIFAR-like 32x32 uint8, crop-flip (train)", cifar.train, resolve_pipeline(cifar, None, None, 0), True),
                 ("CIFAR-like 32x32 uint8, none", cifar.train, resolve_pipeline(cifar, "none", None, 0), True),
                 ("JPEG 320x240 folder, inception 224 (train)", folder.train, resolve_pipeline(folder, None, 224, 0), True),
                 ("JPEG 320x240 folder, resize+center crop 224 (eval)", folder.train,
                  resolve_pipeline(folder, None, 224, 0), False)]
        for name, split, pipeline, train in cases:
            for workers in (0, 1, 2):
                rate = _loader_rate(split, pipeline, train, workers, 64, args.repeats)
                rows.append({"what": name, "loader_workers": workers, "images_per_s": rate})
                print(f"{name:55s} workers {workers}: {rate:9.0f} images/s", flush=True)
    step = _step_rate(128, args.repeats)
    print(f"{'training step: vanilla TAT ResNet-50 w8 32x32 batch 128':55s} {args.threads} thread(s): "
          f"{step:9.0f} images/s")
    result = {"loader": rows, "step_images_per_s": step, "threads": args.threads, "torch": torch.__version__,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
