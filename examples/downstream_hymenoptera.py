"""Learning on latents: ants vs bees from caecodec latents read through BottleneckStore, vs decoded pixels.

    nice -n 2 python3 examples/downstream_hymenoptera.py            # about 10 minutes on one CPU thread

For each quality, the hymenoptera train/ and val/ images (resized to 256x256) are stored in one zarr group
with the caecodec serializer (plus plain label arrays). Two Vision Transformers of the same size are then
trained from scratch on the same 16x16 token grid:
  latent: the latents read through caecodec.BottleneckStore (no synthesis transform), one token per latent
          pixel, a linear projection from the M latent channels;
  pixel:  the decoded pixels, one token per 16x16 pixel patch, a linear projection from 16*16*3 values.
Reported: validation accuracy, training time, and inference throughput from the stored array to predictions
(reading + model). Results go to docs/downstream_hymenoptera.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import zarr
from PIL import Image
from torch import nn

import caecodec

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hymenoptera"
PATCH = 16  # pixels per token side in the pixel domain: the codec's downsampling, so both grids are 16x16


# -- data ----------------------------------------------------------------------------------------
def load_split(folder: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images resized to size x size, uint8 (N, size, size, 3); labels int64 (N,); class names (folder names)."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)))
            labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.int64), classes


def write_group(path: Path, splits: dict, quality: int) -> None:
    """One zarr group: a caecodec array per split (one image per chunk) and a plain label array per split."""
    group = zarr.open_group(path, mode="w")
    for split, (images, labels, _) in splits.items():
        array = group.create_array(split, shape=images.shape, chunks=(1, *images.shape[1:]), dtype="uint8",
                                   serializer=caecodec.CAECodec(quality=quality), compressors=None)
        array[...] = images
        group.create_array(f"{split}_labels", data=labels)


def read_latents(path: Path, split: str) -> np.ndarray:
    """(N, 16, 16, M) float32, straight from the stored chunks (entropy decoding only)."""
    return zarr.open_group(caecodec.BottleneckStore(path), mode="r")[split][...]


def read_pixel_patches(path: Path, split: str) -> np.ndarray:
    """(N, 16, 16, 16, 16, 3) uint8: decoded pixels cut into the 16x16 grid of 16x16-pixel patches."""
    pixels = zarr.open_group(path, mode="r")[split][...]
    n, height, width, _ = pixels.shape
    patches = pixels.reshape(n, height // PATCH, PATCH, width // PATCH, PATCH, 3)
    return np.ascontiguousarray(patches.transpose(0, 1, 3, 2, 4, 5))


# The two domains: how to read a split, and which axes mirror the image left-right (augmentation).
DOMAINS = {
    "latent": {"read": read_latents, "flip_dims": (2,)},
    "pixel": {"read": read_pixel_patches, "flip_dims": (2, 4)},  # the patch column, and the column in a patch
}


class Standardize:
    """Per-channel (last axis) mean and standard deviation of the training data, applied to any split."""

    def __init__(self, train: np.ndarray):
        values = train.reshape(-1, train.shape[-1]).astype(np.float64)
        self.mean = values.mean(0).astype(np.float32)
        self.std = (values.std(0) + 1e-6).astype(np.float32)

    def __call__(self, data: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((data.astype(np.float32) - self.mean) / self.std)


# -- model ---------------------------------------------------------------------------------------
class GridViT(nn.Module):
    """A small pre-norm Vision Transformer over a (B, 16, 16, ...) grid of tokens: patch size 1 on the grid,
    a linear projection of each token's features, mean-pooled tokens into a linear classifier."""

    def __init__(self, token_features: int, grid: int, dim: int, depth: int, heads: int, classes: int):
        super().__init__()
        self.project = nn.Linear(token_features, dim)
        self.position = nn.Parameter(torch.randn(1, grid * grid, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.1, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, classes))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        tokens = self.project(grid.flatten(3).flatten(1, 2)) + self.position
        return self.head(self.encoder(tokens).mean(1))  # mean of the tokens: steadier than a class token on small data


def train(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, flip_dims, epochs: int, batch: int,
          seed: int) -> float:
    """AdamW with a cosine schedule and random left-right flips; returns the training time in seconds."""
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(inputs) / batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(inputs), generator=generator).split(batch):
            x = inputs[index]
            flip = torch.rand(len(x), generator=generator) < 0.5
            x[flip] = x[flip].flip(flip_dims)
            loss = nn.functional.cross_entropy(model(x), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return time.perf_counter() - start


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, batch: int = 64) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x).argmax(1) for x in inputs.split(batch)])


# -- experiment ----------------------------------------------------------------------------------
def run_domain(domain: str, store: Path, splits: dict, args) -> dict:
    read, flip_dims = DOMAINS[domain]["read"], DOMAINS[domain]["flip_dims"]
    start = time.perf_counter()
    train_data = read(store, "train")
    read_train_seconds = time.perf_counter() - start
    standardize = Standardize(train_data)
    torch.manual_seed(args.seed)
    model = GridViT(int(np.prod(train_data.shape[3:])), train_data.shape[1], args.dim, args.depth, args.heads,
                    len(splits["train"][2]))
    train_seconds = train(model, standardize(train_data), torch.from_numpy(splits["train"][1]), flip_dims,
                          args.epochs, args.batch, args.seed)
    # inference: from the stored array to predictions, reading (and for pixels decoding) included
    start = time.perf_counter()
    predictions = predict(model, standardize(read(store, "val")))
    inference_seconds = time.perf_counter() - start
    val_labels = torch.from_numpy(splits["val"][1])
    return {
        "val_accuracy": float((predictions == val_labels).float().mean()),
        "read_train_seconds": read_train_seconds, "train_seconds": train_seconds,
        "inference_images_per_second": len(val_labels) / inference_seconds,
        "input_shape": list(train_data.shape[1:]), "parameters": sum(p.numel() for p in model.parameters()),
    }


def run(args) -> dict:
    splits = {split: load_split(args.data / split, args.size) for split in ("train", "val")}
    results = []
    for quality in args.qualities:
        store = args.workdir / f"hymenoptera_q{quality}.zarr"
        start = time.perf_counter()
        write_group(store, splits, quality)
        encode_seconds = time.perf_counter() - start
        stored = sum(f.stat().st_size for split in splits for f in (store / split).rglob("*") if f.is_file())
        pixels = sum(images.shape[0] * images.shape[1] * images.shape[2] for images, _, _ in splits.values())
        row = {"quality": quality, "bits_per_pixel": 8 * stored / pixels, "encode_seconds": encode_seconds}
        for domain in DOMAINS:
            row[domain] = run_domain(domain, store, splits, args)
            print(f"q{quality} {domain}: {row[domain]}", file=sys.stderr)
        results.append(row)
    return {"images": {split: len(data[1]) for split, data in splits.items()}, "classes": splits["train"][2],
            "results": results}


def markdown(report: dict, command: str) -> str:
    settings = report["settings"]
    lines = [
        "# Downstream learning on latents: hymenoptera (ants vs bees)", "",
        f"Command: `{command}`", "",
        f"{report['images']['train']} training and {report['images']['val']} validation images, resized to "
        f"{settings['size']}x{settings['size']}, stored with caecodec (bundled weights {settings['weights']}). "
        f"Both models: a Vision Transformer over a 16x16 token grid, dim {settings['dim']}, depth {settings['depth']}, "
        f"{settings['heads']} heads, {settings['epochs']} epochs from scratch, seed {settings['seed']}, "
        f"{settings['threads']} torch thread(s). Latent tokens: one latent pixel (M channels); pixel tokens: one "
        "16x16x3 patch of the decoded image. Inference throughput counts reading the stored validation array "
        "(latents: entropy decoding only; pixels: entropy decoding and synthesis) plus the model.", "",
        "| quality | bpp | domain | val accuracy | training (s) | reading train set (s) | inference (images/s) | parameters |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        for domain in DOMAINS:
            r = row[domain]
            lines.append(f"| {row['quality']} | {row['bits_per_pixel']:.3f} | {domain} | {100 * r['val_accuracy']:.1f} % "
                         f"| {r['train_seconds']:.1f} | {r['read_train_seconds']:.1f} "
                         f"| {r['inference_images_per_second']:.1f} | {r['parameters']:,} |")
    lines += ["", "| quality | accuracy latent - pixel (points) | inference speed-up latent / pixel |", "|---:|---:|---:|"]
    for row in report["results"]:
        latent, pixel = row["latent"], row["pixel"]
        lines.append(f"| {row['quality']} | {100 * (latent['val_accuracy'] - pixel['val_accuracy']):+.1f} "
                     f"| {latent['inference_images_per_second'] / pixel['inference_images_per_second']:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder with train/ and val/ class folders")
    parser.add_argument("--qualities", type=int, nargs="+", default=[2, 5, 8])
    parser.add_argument("--size", type=int, default=256, help="images are resized to size x size (a multiple of 16)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/caecodec_hymenoptera"), help="where the zarr groups go")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "downstream_hymenoptera")
    args = parser.parse_args(argv)
    if not (args.data / "train").is_dir() or not (args.data / "val").is_dir():
        parser.error(f"expected train/ and val/ class folders in {args.data}")
    if args.size % PATCH:
        parser.error(f"--size must be a multiple of {PATCH}, found {args.size}")
    torch.set_num_threads(args.threads)
    from caecodec.weights import latest_version

    report = run(args)
    report["settings"] = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    report["settings"]["weights"] = f"v{latest_version()}"
    command = "nice -n 2 python3 examples/downstream_hymenoptera.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({**report, "command": command.strip()}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report, command.strip()))
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
