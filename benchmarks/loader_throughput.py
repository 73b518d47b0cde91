"""Images per second of BatchLoader with the CIFAR training transforms (crop pad 4, flip, normalise).

Runs on the embedded sample, and also on an image folder (ROOT/train/<class>/*)
when --folder is given. Decoding is not timed: the loader works on decoded
images held in memory. Prints the figures and writes results/loader_throughput.json.

    PYTHONPATH=src python benchmarks/loader_throughput.py [--folder /tmp/cifar]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from onebit.data import BatchLoader, cifar_train_transform, load_image_folder, load_sample

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import write_json  # noqa: E402


def images_per_second(dataset, batch_size: int, epochs: int) -> float:
    """Median over ``epochs`` timed epochs (after one warm-up epoch) of images per second."""
    loader = BatchLoader(dataset, batch_size, shuffle=True, transform=cifar_train_transform(), seed=0)
    for _ in loader:  # warm-up epoch
        pass
    rates = []
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        count, start = 0, time.perf_counter()
        for x, _ in loader:
            count += x.shape[0]
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, help="an image folder root to measure as well")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("results/loader_throughput.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    runs = {}
    t = time.perf_counter()
    sample = load_sample("train")
    runs["sample"] = {"images": len(sample), "decode_s": time.perf_counter() - t,
                      "img_per_s": images_per_second(sample, args.batch_size, args.epochs)}
    if args.folder:
        t = time.perf_counter()
        folder = load_image_folder(args.folder, "train")
        runs[str(args.folder)] = {"images": len(folder), "decode_s": time.perf_counter() - t,
                                  "img_per_s": images_per_second(folder, args.batch_size, 3)}

    for name, run in runs.items():
        print(f"{name}: {run['img_per_s']:,.0f} img/s ({run['images']} images, decoded in {run['decode_s']:.1f} s)")
    result = {"batch_size": args.batch_size, "threads": args.threads, "transform": repr(cifar_train_transform()),
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "runs": runs}
    write_json(result, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
