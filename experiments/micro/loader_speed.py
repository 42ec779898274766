"""How many loader processes a GPU needs: decode + augment throughput of one loader process (images/s)
at 224 and at 64 pixels, beside the model's step rate (paper §5's ImageNet pipeline).

Per crop size, one process with one thread, each pipeline run over the same files for ``--seconds``:
JPEG decode alone; the training transform (decode, random-resized crop, flip, to a uint8 tensor); the
evaluation transform (decode, resize, center crop); and the training stream itself (batches of 64,
collated and normalized) with decoding in the training process and in one loader process.

The files are stand-ins, made here: at 224, CIFAR-10 test images upscaled to ImageNet's typical 500x375
with noise added so that their JPEGs are about as large as photographs (the file sizes are reported);
at 64, CIFAR-10 upscaled to 64 pixels as ``experiments/data/cifar_to_imagefolder.py`` writes it. The model side:
the paper ResNet101 with the ImageNet stem, its forward + backward FLOPs per image, a measured CPU step
here (1/8 width, 64 pixels), and a PROJECTION of an H100's images/s at full width: the H100's measured
rate at 32 pixels (docs/results/subnet_speed_gpu.json) times the FLOP ratio, i.e. assuming the same
achieved FLOP rate at the larger size.

    python experiments/micro/loader_speed.py --cifar ../shared/data/cifar10 --seconds 4
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import OUT, command, environment, flops, library_state, parser, record, sgd_step, table  # noqa: E402
from resist.data import load_dataset  # noqa: E402
from resist.data.transforms import decode, eval_transform, to_uint8_chw, train_transform  # noqa: E402
from resist.models import create_model  # noqa: E402


def source_images(cifar: Path | None, n: int, seed: int = 0) -> np.ndarray:
    """(n, 32, 32, 3) uint8: CIFAR-10 test images when available, else the synthetic dataset's."""
    if cifar is not None and (cifar / "test_x.npy").is_file():
        return np.load(cifar / "test_x.npy", mmap_mode="r")[:n].copy()
    data = load_dataset("synthetic", n_train=0, n_test=n, num_classes=10, size=32, seed=seed)
    return data.test.x.numpy()


def write_files(images: np.ndarray, folder: Path, size: tuple[int, int], noise: float, quality: int) -> list[str]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, x in enumerate(images):
        img = np.asarray(Image.fromarray(x).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
        if noise:
            img = img + rng.normal(0, noise, img.shape)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=quality)
        paths.append(str(path))
    return paths


def rate(fn, paths: list[str], seconds: float) -> float:
    """Images per second of ``fn(path, i)`` cycling over ``paths`` for ``seconds`` (after one warm pass)."""
    for i, p in enumerate(paths[:8]):
        fn(p, i)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(paths[done % len(paths)], done)
        done += 1
    return done / (time.perf_counter() - t0)


def stream_rate(root: Path, crop: int, workers: int, seconds: float, batch: int = 64) -> float:
    """Images per second of the training stream (collated, normalized batches) with ``workers`` loaders."""
    ds = load_dataset("imagefolder", root, crop_size=crop)
    stream = ds.train_stream(1, 0, batch, seed=0, loader_workers=workers)
    stream.batch(0)  # starts the loader processes
    done, step, t0 = 0, 1, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        done += len(stream.batch(step)[1])
        step += 1
    elapsed = time.perf_counter() - t0
    stream.close()
    return done / elapsed


def flops_per_image(size: int, classes: int, stem: str, width: float = 1.0) -> float:
    """Forward + backward FLOPs of one image through the paper ResNet101 (counted on the meta device)."""
    with torch.device("meta"):
        model = create_model("paper_resnet101", num_classes=classes, width=width, stem=stem)
        x, y = torch.randn(2, 3, size, size), torch.randint(0, classes, (2,))
    return flops(model, x, y) / 2


def cpu_step_rate(size: int, width: float, batch: int, seconds: float) -> float:
    """Images per second of SGD steps of the paper ResNet101 (ImageNet stem) on this CPU, one thread."""
    model = create_model("paper_resnet101", num_classes=10, width=width, stem="imagenet")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    sgd_step(model, x, y, opt)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sgd_step(model, x, y, opt)
        n += 1
    return n * batch / (time.perf_counter() - t0)


def main() -> None:
    args = parser(__doc__, cifar=(Path(os.environ.get("RESIST_DATA_DIR", "data")), "CIFAR-10's numpy layout, for the "
                                  "stand-in images (else synthetic ones)"), seconds=(4.0, "per measurement"),
                  images=(128, "files per crop size"), name="loader_speed").parse_args()
    torch.set_num_threads(1)
    start = library_state()
    images = source_images(args.cifar, args.images)
    settings = {224: dict(file=(500, 375), noise=8.0, quality=90), 64: dict(file=(64, 64), noise=0.0, quality=95)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for crop, s in settings.items():
            root = Path(tmp) / f"c{crop}"
            paths = write_files(images, root / "train" / "all", s["file"], s["noise"], s["quality"])
            write_files(images[:2], root / "val" / "all", s["file"], s["noise"], s["quality"])
            kb = np.mean([os.path.getsize(p) for p in paths]) / 1024
            row = {"crop": crop, "file_px": list(s["file"]), "jpeg_quality": s["quality"], "mean_file_kb": kb,
                   "decode": rate(lambda p, i: decode(p), paths, args.seconds),
                   "train": rate(lambda p, i: to_uint8_chw(train_transform(decode(p), crop, random.Random(i))),
                                 paths, args.seconds),
                   "eval": rate(lambda p, i: to_uint8_chw(eval_transform(decode(p), crop)), paths, args.seconds),
                   "stream_inline": stream_rate(root, crop, 0, args.seconds),
                   "stream_1_loader": stream_rate(root, crop, 1, args.seconds)}
            rows.append(row)
            print(row, flush=True)
    gpu_file = OUT / "subnet_speed_gpu.json"
    gpu = json.loads(gpu_file.read_text())
    full = next(r for r in gpu["rows"] if r["config"] == "full")
    h100_32 = {"images_per_s": full["images_per_s"], "flops_per_image": full["flops"] / gpu["args"]["batch"],
               "device": gpu["env"]["device"], "date": gpu["env"]["date"]}
    model = []
    for crop, classes in ((224, 1000), (64, 10)):
        f = flops_per_image(crop, classes, "imagenet")
        projected = h100_32["images_per_s"] * h100_32["flops_per_image"] / f
        train_rate = next(r["train"] for r in rows if r["crop"] == crop)
        model.append({"crop": crop, "classes": classes, "gflops_per_image": f / 1e9,
                      "h100_images_per_s_projected": projected, "loaders_per_gpu_projected": projected / train_rate})
    cpu = {"width": 0.125, "crop": 64, "batch": 32,
           "images_per_s": cpu_step_rate(64, 0.125, 32, max(args.seconds, 3.0))}
    lines = ["# Loader speed: images/s per loader process, beside the model's step rate\n",
             f"Pillow {Image.__version__}. One process, one thread, each figure {args.seconds:g} s over "
             f"{args.images} files. Stand-in files: at 224, CIFAR-10 test images upscaled to 500x375 with noise "
             "(ImageNet's training JPEGs average about 110 KB at about 400x350); at 64, CIFAR-10 upscaled to 64 "
             "pixels, as `experiments/data/cifar_to_imagefolder.py` writes it. Absolute rates depend on the CPU and on "
             "what else it runs: this machine's cores were busy with other benchmarks.\n",
             *table(["crop", "files", "mean file", "decode", "train transform", "eval transform",
                     "stream, decoding inline", "stream, 1 loader process"],
                    [[r["crop"], f"{r['file_px'][0]}x{r['file_px'][1]} JPEG q{r['jpeg_quality']}", f"{r['mean_file_kb']:.1f} KB",
                      *(f"{r[k]:.0f}" for k in ("decode", "train", "eval", "stream_inline", "stream_1_loader"))] for r in rows]),
             "", "Images/s. Train transform = decode + random-resized crop + flip + uint8 tensor; the stream "
             "adds collation into batches of 64 and normalization (inline: in the training process; 1 loader: "
             "decoded in one DataLoader process, handed over through shared memory).\n",
             "## Against the model\n",
             f"The paper ResNet101 (ImageNet stem), forward + backward. Measured here: {cpu['images_per_s']:.0f} "
             f"images/s on one CPU thread at 1/8 width, 64 pixels, batch 32. PROJECTED for one "
             f"{h100_32['device']} at full width (its measured {h100_32['images_per_s']:.0f} images/s at 32 pixels, "
             f"{h100_32['flops_per_image'] / 1e9:.1f} GFLOPs per image, {h100_32['date'][:10]}, scaled by the FLOP "
             "ratio; fp32 with TF32 convolutions, the whole model, not a sub-ResNet):\n",
             *table(["crop", "classes", "GFLOPs / image", "H100 images/s (projected)", "loader processes per GPU (projected)"],
                    [[m["crop"], m["classes"], f"{m['gflops_per_image']:.1f}", f"{m['h100_images_per_s_projected']:.0f}",
                      f"{m['loaders_per_gpu_projected']:.1f}"] for m in model]),
             "", "Loader processes per GPU = projected images/s / one process's train-transform rate above. A "
             "sub-ResNet steps faster than the whole model (1.29x at 2 workers on the H100, "
             "[subnet_speed_gpu.md](subnet_speed_gpu.md)), mixed precision faster again, so ResIST with "
             "`--amp bf16` needs more loaders than this; a server core is also faster than this shared one. "
             "Set `--loader-workers` from the rate of your own CPU: `python experiments/micro/loader_speed.py` there."]
    record(args.name, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "model": model, "cpu_step": cpu,
                       "h100_reference": h100_32}, lines, command(), environment(start, pillow=Image.__version__))


if __name__ == "__main__":
    main()
