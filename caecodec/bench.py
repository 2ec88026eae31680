"""Rate-distortion and speed of caecodec against the classical codecs users could pick instead.

Every codec setting encodes every image of a folder to real bytes, decodes them, and is scored on
bpp (real encoded bytes; for caecodec the whole chunk, header included), PSNR (RGB, 8 bits),
MS-SSIM, encode/decode speed and peak memory. Results: JSON and CSV of every measurement, RD
plots, a Markdown summary with Bjøntegaard delta rates, and optionally a visual comparison page.

Peak memory is the growth of the process's resident set (VmHWM - VmRSS before encoding) over one
encode + decode, after returning the allocator's free memory to the system (glibc malloc_trim) and
resetting the kernel's high-water mark through /proc/self/clear_refs; the
model weights are loaded beforehand, so they are not counted here (see the model size). Linux only;
elsewhere it is reported as missing. Speeds are wall-clock times of encoding and decoding each
image (the fastest of up to 5 runs within 0.1 s), with every codec limited to the same number of threads.
"""

from __future__ import annotations

import csv
import html
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import zoo
from .bdrate import bd_rate, ms_ssim_db, quality_at_rate

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
MIN_SIDE = 161  # MS-SSIM's five scales with an 11-pixel window need more than 160 pixels per side
QUICK_IMAGES = 2
QUICK_QUALITIES = (2, 5, 8)
RATES_OF_INTEREST = (0.25, 0.5, 1.0)  # bpp at which PSNR is interpolated for the summary
CROP = 192  # side of the zoomed crop of the visual page: stored as is,
ZOOM = 2  # and enlarged by the browser, without smoothing
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run")


# -- classical codecs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Classical:
    """An imagecodecs codec swept over its `level` argument."""

    name: str
    label: str
    parameter: str  # what `level` means for this codec
    function: str  # imagecodecs function stem: f"{function}_encode" / f"{function}_decode"
    settings: tuple
    quick: tuple
    bounds: tuple[float, float]  # level range searched when matching a bit rate
    options: dict = field(default_factory=dict)

    def encode(self, image: np.ndarray, level, threads: int) -> bytes:
        import imagecodecs

        options = dict(self.options, **({"numthreads": threads} if self.threaded else {}))
        return bytes(getattr(imagecodecs, f"{self.function}_encode")(image, level=level, **options))

    def decode(self, data: bytes) -> np.ndarray:
        import imagecodecs

        return getattr(imagecodecs, f"{self.function}_decode")(data)

    @property
    def threaded(self) -> bool:
        return self.function != "jpeg8"  # libjpeg-turbo is single-threaded and takes no thread count

    @property
    def integer(self) -> bool:
        return isinstance(self.settings[0], int)


CLASSICAL = {codec.name: codec for codec in (
    Classical("jpeg", "JPEG (libjpeg-turbo)", "quality", "jpeg8", (10, 25, 45, 65, 80, 92), (25, 55, 85),
              (1, 100)),
    Classical("webp", "WebP (lossy)", "quality", "webp", (5, 25, 50, 70, 85, 95), (20, 60, 90), (0, 100),
              {"lossless": False}),
    Classical("avif", "AVIF (speed 6)", "quality", "avif", (25, 40, 55, 65, 75, 88), (30, 60, 85), (0, 100),
              {"speed": 6}),  # libavif's default speed takes 10-40 s per Kodak image here
    Classical("jpegxl", "JPEG XL", "quality", "jpegxl", (15, 35, 55, 75, 88, 95), (30, 65, 90), (0, 100)),
    Classical("jpeg2k", "JPEG 2000 (OpenJPEG)", "target PSNR (dB)", "jpeg2k",
              (27.0, 30.0, 33.0, 36.0, 39.0, 42.0), (28.0, 33.0, 38.0), (15.0, 60.0)),
)}


# -- what gets measured ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One point of one curve: a codec at one setting, as encode/decode functions of whole images."""

    codec: str  # curve name, e.g. "caecodec-mse" or "jpeg"
    label: str
    setting: object  # quality level of the codec
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes], np.ndarray]
    metric: str | None = None  # the distortion a learned codec was trained for; None for classical codecs
    model_bytes: int = 0
    details: Callable[[bytes], dict] | None = None  # extra per-image measurements from the encoded bytes


def classical_settings(names: Sequence[str], quick: bool, threads: int) -> list[Setting]:
    settings = []
    for name in names:
        codec = CLASSICAL[name]
        for level in codec.quick if quick else codec.settings:
            encode = lambda image, c=codec, q=level: c.encode(image, q, threads)  # noqa: E731 (binds this level)
            settings.append(Setting(name, codec.label, level, encode, codec.decode))
    return settings


def refine_suffix(iterations: int) -> str:
    """What a curve's name and label add for encoder-side refinement (nothing for the plain encoder)."""
    return f" refine {iterations}" if iterations else ""


def caecodec_curve_name(metric: str, weights: str, refine: int = 0) -> str:
    name = f"caecodec-{metric}" + refine_suffix(refine)
    if weights == "bundled":
        return name
    return f"{name} ({'compressai' if weights == 'compressai' else Path(weights).name})"


def model_file_size(quality: int, metric: str, weights: str) -> int:
    """Bytes on disk of the weights a configuration needs (the bundled file holds all sixteen configurations)."""
    from . import weights as weights_module

    if weights == "bundled":
        card = weights_module.version_card(weights_module.latest_version())
        return (weights_module.BUNDLE_DIR / card["file"]).stat().st_size
    if weights == "compressai":
        return weights_module.fetch_compressai(quality, metric).stat().st_size
    return Path(weights).stat().st_size


def caecodec_settings(qualities: Sequence[int], metrics: Sequence[str], weights: str,
                      refine: Sequence[int] = (0,)) -> list[Setting]:
    """A curve per metric and refinement (`refine` iterations, 0 for the analysis transform's latent as is)."""
    from .codec import ConvolutionalAutoencoder

    settings = []
    for iterations in refine:
        for metric in metrics:
            label = f"caecodec {metric}" + refine_suffix(iterations)
            for quality in qualities:
                codec = ConvolutionalAutoencoder(quality=quality, metric=metric, weights=weights, refine=iterations)
                settings.append(Setting(caecodec_curve_name(metric, weights, iterations), label, quality,
                                        codec.encode, codec.decode, metric=metric,
                                        model_bytes=model_file_size(quality, metric, weights),
                                        details=lambda data, c=codec: entropy_details(c, data)))
    return settings


def entropy_details(codec, data: bytes) -> dict:
    """Ideal code length of the chunk's symbols, and how far the real chunk is above it (header included)."""
    from .evaluation import theoretical_bits

    header, symbols, loaded = codec.decode_symbols(data)
    bits = theoretical_bits(symbols, loaded.tables)
    pixels = header.height * header.width * header.images
    return {"theoretical_bpp": bits / pixels, "coded_over_theoretical": 8 * len(data) / bits}


# -- one measurement ---------------------------------------------------------------------------------
def _status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field_name}")


@lru_cache(maxsize=1)
def _malloc_trim():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


def release_free_memory() -> None:
    """Hand the C allocator's cached free memory back to the system (glibc), so that what a codec allocates
    next shows up as growth of the resident set instead of silently reusing memory freed earlier."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def reset_peak_memory() -> int | None:
    """Reset the kernel's resident-set high-water mark; the current resident set in KiB, None if unsupported."""
    release_free_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS")
    except OSError:
        return None


def peak_memory_growth(baseline: int | None) -> float | None:
    """MB by which the resident set peaked above `baseline` since `reset_peak_memory`."""
    return None if baseline is None else max(0, _status_kib("VmHWM") - baseline) / 1024


def timed(function, argument, budget: float = 0.1, repeats: int = 5):
    """The result and the fastest wall time of up to `repeats` calls, stopping once `budget` seconds are spent.

    The fastest run is the one least disturbed by other processes; codecs slower than the budget run once.
    """
    best, spent, runs = float("inf"), 0.0, 0
    while runs == 0 or (runs < repeats and spent < budget):
        start = time.perf_counter()
        result = function(argument)
        elapsed = time.perf_counter() - start
        best, spent, runs = min(best, elapsed), spent + elapsed, runs + 1
    return result, best


def measure(setting: Setting, name: str, image: np.ndarray) -> dict:
    from .evaluation import ms_ssim, psnr

    pixels = image.shape[0] * image.shape[1]
    baseline = reset_peak_memory()
    data, encode_seconds = timed(setting.encode, image)
    decoded, decode_seconds = timed(setting.decode, data)
    peak = peak_memory_growth(baseline)
    if decoded.shape != image.shape or decoded.dtype != np.uint8:
        raise RuntimeError(f"{setting.codec} {setting.setting} decoded {name} to {decoded.shape} {decoded.dtype}, "
                           f"expected {image.shape} uint8")
    row = {
        "codec": setting.codec, "setting": setting.setting, "image": name, "width": image.shape[1],
        "height": image.shape[0], "bytes": len(data), "bpp": 8 * len(data) / pixels,
        "psnr": psnr(image, decoded), "ms_ssim": ms_ssim(image, decoded),
        "encode_seconds": encode_seconds, "decode_seconds": decode_seconds,
        "encode_mpix_s": pixels / 1e6 / encode_seconds, "decode_mpix_s": pixels / 1e6 / decode_seconds,
        "peak_memory_mb": peak,
    }
    if setting.details is not None:
        row.update(setting.details(data))
    return row


def warm_up(setting: Setting, image: np.ndarray) -> None:
    """One untimed round trip on a corner of the image: loads the model and initialises libraries."""
    corner = np.ascontiguousarray(image[:64, :64])
    setting.decode(setting.encode(corner))


# -- aggregation -------------------------------------------------------------------------------------
AVERAGED = ("bpp", "psnr", "ms_ssim", "theoretical_bpp", "coded_over_theoretical")


def average(rows: list[dict], setting: Setting) -> dict:
    """Mean quality and rate over the images; speed as total pixels over total time; the largest peak memory."""
    megapixels = sum(r["width"] * r["height"] for r in rows) / 1e6
    summary = {"codec": setting.codec, "label": setting.label, "metric": setting.metric, "setting": setting.setting,
               "images": len(rows)}
    for key in AVERAGED:
        if key in rows[0]:
            summary[key] = float(np.mean([r[key] for r in rows]))
    summary["encode_mpix_s"] = megapixels / sum(r["encode_seconds"] for r in rows)
    summary["decode_mpix_s"] = megapixels / sum(r["decode_seconds"] for r in rows)
    peaks = [r["peak_memory_mb"] for r in rows if r["peak_memory_mb"] is not None]
    summary["peak_memory_mb"] = max(peaks) if peaks else None
    summary["model_bytes"] = setting.model_bytes
    return summary


def curves(averages: list[dict]) -> dict[str, dict]:
    """Per codec (in measurement order), its averaged points sorted by rate: {"bpp": [...], "psnr": [...], ...}."""
    result = {}
    for name in dict.fromkeys(a["codec"] for a in averages):
        points = sorted((a for a in averages if a["codec"] == name), key=lambda a: a["bpp"])
        result[name] = {"label": points[0]["label"], "metric": points[0]["metric"],
                        **{key: [a[key] for a in points] for key in ("bpp", "psnr", "ms_ssim")}}
    return result


def bd_rates(ours: dict[str, dict], anchors: dict[str, dict], same_metric: bool = False) -> list[dict]:
    """BD-rate (%) of every learned curve against every anchor (or only those of its metric), on PSNR and MS-SSIM dB."""
    table = []
    for test_name, test in ours.items():
        for anchor_name, anchor in anchors.items():
            if same_metric and anchor["metric"] != test["metric"]:
                continue
            table.append({
                "codec": test_name, "anchor": anchor_name,
                "bd_rate_psnr": bd_rate(anchor["bpp"], anchor["psnr"], test["bpp"], test["psnr"]),
                "bd_rate_ms_ssim": bd_rate(anchor["bpp"], ms_ssim_db(anchor["ms_ssim"]),
                                           test["bpp"], ms_ssim_db(test["ms_ssim"])),
            })
    return table


def psnr_at_rates(all_curves: dict[str, dict]) -> list[dict]:
    return [{"codec": name, **{f"psnr_at_{rate}": quality_at_rate(curve["bpp"], curve["psnr"], rate)
                               for rate in RATES_OF_INTEREST}}
            for name, curve in all_curves.items()]


# -- published reference curves ---------------------------------------------------------------------
def load_published(folder: Path | None) -> dict[str, dict]:
    """CompressAI's published Kodak results for the factorized prior (the architecture caecodec uses)."""
    if folder is None:
        return {}
    published = {}
    for path in sorted(Path(folder).glob("compressai-bmshj2018-factorized_*.json")):
        document = json.loads(path.read_text())
        results = document["results"]
        metric = path.stem.split("_")[1]
        published[f"published: CompressAI {document['name']} ({metric})"] = {
            "label": f"{document['name']} {metric}, CompressAI's published numbers", "metric": metric,
            "bpp": results["bpp"],
            "psnr": results["psnr-rgb"], "ms_ssim": results["ms-ssim-rgb"], "source": str(path),
        }
    return published


# -- inputs ------------------------------------------------------------------------------------------
def shared_path(*parts: str) -> Path | None:
    """A path under the project's ../shared folder (next to the working directory or the checkout), if present."""
    for base in (Path.cwd().parent, Path(__file__).resolve().parents[2]):
        candidate = base.joinpath("shared", *parts)
        if candidate.exists():
            return candidate
    return None


def image_paths(folder: Path) -> dict[str, Path]:
    """The folder's images by name (file stem), sorted."""
    if not folder.is_dir():
        raise NotADirectoryError(f"image folder {folder} is not a directory")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"image folder {folder} has no images (expected files ending in {', '.join(IMAGE_SUFFIXES)})")
    return {path.stem: path for path in paths}


def load_images(paths: Sequence[Path]) -> dict[str, np.ndarray]:
    from .evaluation import load_rgb  # imports torch: only once the folder is known to be usable

    images = {}
    for path in paths:
        image = load_rgb(path)
        if min(image.shape[:2]) < MIN_SIDE:
            raise ValueError(f"image {path} is {image.shape[1]}x{image.shape[0]}; MS-SSIM needs at least "
                             f"{MIN_SIDE} pixels on each side")
        images[path.stem] = image
    return images


def check_names(requested: Sequence[str], known: Sequence[str], what: str) -> None:
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))}; expected some of {', '.join(known)}")


# -- the benchmark -----------------------------------------------------------------------------------
def run_benchmark(folder: str | Path | None = None, output: str | Path = "bench-results", *,
                  weights: str = "bundled", qualities: Sequence[int] | None = None,
                  metrics: Sequence[str] = zoo.METRICS, codecs: Sequence[str] | None = None,
                  quick: bool = False, max_images: int | None = None, visual: Sequence[str] = (),
                  visual_setting: str | None = None, threads: int = 1, published: str | Path | None = "auto",
                  progress: bool = True, command: str | None = None, refine: Sequence[int] = (0,)) -> dict:
    """Run the benchmark and write its results into `output`; returns what results.json holds.

    folder: images to compress (default ../shared/data/kodak); weights: "bundled", "compressai" or a
    checkpoint path (a checkpoint is one model: only its first quality/metric is measured); codecs:
    names from CLASSICAL (default all); quick: two images and three settings per codec; visual: image
    names (file stems) for the comparison page, matched to the caecodec configuration `visual_setting`
    ("mse-4"-like); published: the folder of CompressAI's published Kodak JSON files, "auto" for
    ../shared's, None for none; refine: a caecodec curve per number of encoder-side refinement iterations
    (0: the analysis transform's latent, the default encoder).
    """
    started = time.perf_counter()
    folder = Path(folder) if folder is not None else shared_path("data", "kodak")
    if folder is None:
        raise FileNotFoundError("no image folder given and ../shared/data/kodak is absent; pass FOLDER")
    codecs = list(CLASSICAL) if codecs is None else list(codecs)
    check_names(codecs, list(CLASSICAL), "codec")
    check_names(metrics, zoo.METRICS, "metric")
    qualities, metrics = _configurations(qualities, metrics, weights, quick)
    if threads < 1:
        raise ValueError(f"threads must be at least 1, found {threads}")
    limits = [n for n in (QUICK_IMAGES if quick else None, max_images) if n is not None]
    paths = image_paths(folder)
    check_names(visual, list(paths), "image for --visual")
    images = load_images(list(paths.values())[: min(limits) if limits else None])
    visual_target = _visual_setting(visual_setting, qualities, metrics) if visual else None
    published_curves = load_published(_published_folder(published))
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)

    import torch

    torch.set_num_threads(threads)
    settings = caecodec_settings(qualities, metrics, weights, refine) + classical_settings(codecs, quick, threads)
    rows, averages = _measure_all(settings, images, progress)
    results = _analyse(rows, averages, settings, published_curves)
    results["environment"] = _environment(folder, images, weights, threads, command)
    if visual:
        results["visual"] = write_visual_page(output / "visual", load_images([paths[n] for n in visual]),
                                              visual_target, weights, codecs, threads)
    results["environment"]["seconds"] = time.perf_counter() - started
    write_results(output, results, rows)
    return results


def _configurations(qualities, metrics, weights, quick) -> tuple[list[int], list[str]]:
    if not metrics:
        raise ValueError(f"at least one caecodec metric is needed, from {', '.join(zoo.METRICS)}")
    if qualities is None:
        qualities = QUICK_QUALITIES if quick else zoo.QUALITIES
    for quality in qualities:
        zoo.check_configuration(quality, metrics[0])
    if weights not in ("bundled", "compressai"):
        if not Path(weights).is_file():
            raise FileNotFoundError(f"weights must be 'bundled', 'compressai' or a checkpoint file; "
                                    f"{weights!r} is none of them")
        return list(qualities[-1:]), list(metrics[:1])
    return list(qualities), list(metrics)


def _published_folder(published) -> Path | None:
    if published == "auto":
        return shared_path("reference", "compressai", "published-kodak")
    if published is not None and not Path(published).is_dir():
        raise NotADirectoryError(f"published results folder {published} is not a directory")
    return None if published is None else Path(published)


def _visual_setting(visual_setting: str | None, qualities, metrics) -> tuple[int, str]:
    if visual_setting is None:
        return qualities[len(qualities) // 2], metrics[0]
    metric, _, quality = visual_setting.rpartition("-")
    if not quality.isdigit():
        raise ValueError(f"visual setting must look like 'mse-4' or 'ms-ssim-6', found {visual_setting!r}")
    zoo.check_configuration(int(quality), metric)
    return int(quality), metric


def _measure_all(settings: list[Setting], images: dict[str, np.ndarray], progress: bool):
    from tqdm import tqdm

    rows, averages = [], []
    first = next(iter(images.values()))
    bar = tqdm(total=len(settings) * len(images), unit="image", disable=not (progress and sys.stderr.isatty()))
    with bar:
        for setting in settings:
            bar.set_description(f"{setting.codec} {setting.setting}")
            warm_up(setting, first)
            setting_rows = []
            for name, image in images.items():
                setting_rows.append(measure(setting, name, image))
                bar.update()
            rows += setting_rows
            averages.append(average(setting_rows, setting))
    return rows, averages


def _analyse(rows, averages, settings, published) -> dict:
    measured = curves(averages)
    learned = {s.codec for s in settings if s.metric is not None}
    ours = {name: curve for name, curve in measured.items() if name in learned}
    anchors = {name: curve for name, curve in measured.items() if name not in learned}
    return {
        "averages": averages,
        "bd_rate": bd_rates(ours, anchors),
        "bd_rate_published": bd_rates(ours, published, same_metric=True),
        "psnr_at_bpp": psnr_at_rates({**measured, **published}),
        "curves": measured,
        "published": published,
        "measurements": rows,
    }


def _environment(folder, images, weights, threads, command) -> dict:
    import imagecodecs
    import torch

    from . import __version__
    from . import weights as weights_module

    environment = {
        "command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "caecodec": __version__, "weights": weights, "folder": str(folder), "images": len(images),
        "threads": threads, "device": weights_module.resolve_device(True), "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(), "torch": torch.__version__, "imagecodecs": imagecodecs.__version__,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if weights == "bundled":
        version = weights_module.latest_version()
        environment["weights_version"] = version
        environment["weights_provisional"] = bool(weights_module.version_card(version).get("provisional"))
    return environment


# -- output files ------------------------------------------------------------------------------------
def write_results(output: Path, results: dict, rows: list[dict]) -> None:
    (output / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    write_csv(output / "measurements.csv", rows)
    write_csv(output / "averages.csv", results["averages"])
    plot_curves(output, results["curves"], results["published"])
    (output / "summary.md").write_text(summary_markdown(results))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


PLOTS = {"psnr": ("rd-psnr.png", "PSNR (dB, RGB)", np.asarray),
         "ms_ssim": ("rd-ms-ssim.png", "MS-SSIM (dB, -10 log10(1 - MS-SSIM))", ms_ssim_db)}


def plot_curves(output: Path, measured: dict[str, dict], published: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    for key, (filename, ylabel, scale) in PLOTS.items():
        figure, axes = plt.subplots(figsize=(10.5, 5.5))
        for name, curve in measured.items():
            learned = curve["metric"] is not None
            axes.plot(curve["bpp"], scale(curve[key]), "o-" if learned else "s--", markersize=4,
                      linewidth=2 if learned else 1, label=name if learned else curve["label"])
        for (name, curve), style in zip(published.items(), (":", "-.", (0, (1, 3)), (0, (5, 3)))):
            axes.plot(curve["bpp"], scale(curve[key]), linestyle=style, color="gray", marker="x", markersize=4,
                      label=name)
        axes.set_xlabel("bits per pixel (real encoded bytes)")
        axes.set_ylabel(ylabel)
        axes.set_xlim(left=0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: never over a curve
        figure.tight_layout()
        figure.savefig(output / filename, dpi=110)
        plt.close(figure)


# -- Markdown summary --------------------------------------------------------------------------------
def _cell(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def markdown_table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _settings_table(averages: list[dict]) -> str:
    header = ("codec", "setting", "bpp", "PSNR (dB)", "MS-SSIM", "encode MPix/s", "decode MPix/s", "peak memory (MB)",
              "theoretical bpp", "coded / theoretical", "model on disk (MB)")
    rows = [(a["codec"], _cell(a["setting"], 1), _cell(a["bpp"], 3), _cell(a["psnr"]), _cell(a["ms_ssim"], 4),
             _cell(a["encode_mpix_s"]), _cell(a["decode_mpix_s"]), _cell(a["peak_memory_mb"], 1),
             _cell(a.get("theoretical_bpp"), 3), _cell(a.get("coded_over_theoretical"), 4),
             _cell(a["model_bytes"] / 1e6 if a["model_bytes"] else None))
            for a in averages]
    return markdown_table(header, rows)


def _bd_table(table: list[dict]) -> str:
    rows = [(t["codec"], t["anchor"], _cell(t["bd_rate_psnr"], 1, " %"), _cell(t["bd_rate_ms_ssim"], 1, " %"))
            for t in table]
    return markdown_table(("caecodec", "anchor", "BD-rate on PSNR", "BD-rate on MS-SSIM"), rows)


def _psnr_at_table(table: list[dict]) -> str:
    rows = [(t["codec"], *(_cell(t[f"psnr_at_{rate}"]) for rate in RATES_OF_INTEREST)) for t in table]
    return markdown_table(("codec", *(f"PSNR at {rate} bpp" for rate in RATES_OF_INTEREST)), rows)


def summary_markdown(results: dict) -> str:
    env = results["environment"]
    weights = env["weights"]
    if "weights_version" in env:
        weights += f" v{env['weights_version']}" + (" (PROVISIONAL)" if env["weights_provisional"] else "")
    parts = [
        "# caecodec benchmark",
        f"Produced by:\n\n```\n{env['command'] or 'caecodec.bench.run_benchmark(...)'}\n```",
        f"{env['date']}: {env['images']} images from `{env['folder']}`, caecodec {env['caecodec']} with {weights} "
        f"weights; {env['threads']} thread(s) per codec on a {env['cpus']}-CPU {env['machine']} (load average "
        f"{_cell(env['load_average'][0] if env['load_average'] else None)} at the end), torch {env['torch']}, "
        f"imagecodecs {env['imagecodecs']}; {env['seconds'] / 60:.1f} minutes in all.",
        "## Bjøntegaard delta rate\n\nAverage bit-rate change of caecodec against each codec at equal quality "
        "(negative: caecodec needs fewer bits). Piecewise cubic (PCHIP) interpolation of log rate over the quality "
        "range both curves cover; MS-SSIM on its dB scale. n/a: the curves' quality ranges do not overlap.\n\n"
        + _bd_table(results["bd_rate"]),
    ]
    if results["bd_rate_published"]:
        parts.append("Against CompressAI's published numbers for the same architecture (their fully trained "
                     "models):\n\n" + _bd_table(results["bd_rate_published"]))
    parts += [
        "## PSNR at fixed rates\n\nInterpolated on each average curve (n/a: outside its measured rates); "
        "\"published\" rows are CompressAI's published Kodak numbers, not measured here.\n\n"
        + _psnr_at_table(results["psnr_at_bpp"]),
        "## Rate-distortion curves\n\n![PSNR against bpp](rd-psnr.png)\n\n![MS-SSIM against bpp](rd-ms-ssim.png)",
        "## Every setting (averages over the images)\n\n" + _settings_table(results["averages"]),
        "bpp: real encoded bytes (for caecodec the whole chunk, header included) × 8 / pixels. Speeds: total "
        "pixels / total wall time of encoding or decoding each image once (the fastest of up to 5 runs within "
        "0.1 s, so only the fast classical codecs are repeated). Peak memory: the largest growth of the "
        "resident set during one encode + decode, above the process's size before it (models already loaded; "
        "the allocator's free memory handed back to the system first, Linux/glibc only). "
        "Theoretical bpp: the ideal code length of the latent symbols under caecodec's integer tables; coded / "
        "theoretical: the chunk's real size (header included) over that ideal. Model on disk: the weights file "
        "(caecodec's bundled file holds all sixteen configurations). Per-image numbers: `measurements.csv`, "
        "`results.json`.",
    ]
    if "visual" in results:
        parts.append(f"## Visual comparison\n\n[{results['visual']['page']}]({results['visual']['page']}) "
                     f"(caecodec {results['visual']['configuration']} against each codec at nearly the same bpp)"
                     "\n\n![screenshot of the visual comparison page](visual/screenshot.png)")
    return "\n\n".join(parts) + "\n"


# -- visual comparison page --------------------------------------------------------------------------
def match_rate(codec: Classical, image: np.ndarray, target_bpp: float, threads: int, steps: int = 9):
    """The codec's level whose bpp on this image is closest to the target (bisection; rate grows with level)."""
    low, high = codec.bounds
    pixels = image.shape[0] * image.shape[1]
    best = None
    for _ in range(steps):
        level = (low + high) / 2
        level = round(level) if codec.integer else round(level, 2)
        data = codec.encode(image, level, threads)
        bpp = 8 * len(data) / pixels
        if best is None or abs(bpp - target_bpp) < abs(best[1] - target_bpp):
            best = (level, bpp, data)
        low, high = (level, high) if bpp < target_bpp else (low, level)
    return best


def detail_crop(image: np.ndarray, size: int = CROP) -> tuple[int, int]:
    """Top-left corner of the size x size window with the most gradient energy: where artefacts show."""
    gray = image.astype(np.float64).mean(axis=2)
    energy = np.abs(np.diff(gray, axis=0))[:, :-1] + np.abs(np.diff(gray, axis=1))[:-1, :]
    best, corner = -1.0, (0, 0)
    step = size // 2
    for top in range(0, energy.shape[0] - size + 1, step):
        for left in range(0, energy.shape[1] - size + 1, step):
            total = energy[top : top + size, left : left + size].sum()
            if total > best:
                best, corner = total, (top, left)
    return corner


def save_panel(folder: Path, stem: str, image: np.ndarray, corner: tuple[int, int]) -> tuple[str, str]:
    """The decoded image and its crop, lossless: WebP for the full image (40 % smaller than PNG), PNG for the crop."""
    from PIL import Image

    top, left = corner
    Image.fromarray(image).save(folder / f"{stem}.webp", lossless=True, method=6)
    Image.fromarray(image[top : top + CROP, left : left + CROP]).save(folder / f"{stem}-crop.png")
    return f"{stem}.webp", f"{stem}-crop.png"


def write_visual_page(folder: Path, images: dict[str, np.ndarray], configuration: tuple[int, str], weights: str,
                      codecs: Sequence[str], threads: int) -> dict:
    """index.html with, per image, the original, caecodec and each classical codec at nearly the same bpp."""
    from .codec import ConvolutionalAutoencoder

    folder.mkdir(parents=True, exist_ok=True)
    quality, metric = configuration
    ours = ConvolutionalAutoencoder(quality=quality, metric=metric, weights=weights)
    entries = {}
    for name, image in images.items():
        pixels = image.shape[0] * image.shape[1]
        corner = detail_crop(image)
        data = ours.encode(image)
        target = 8 * len(data) / pixels
        panels = [_panel(folder, name, "original", "original", image, image, None, corner)]
        panels.append(_panel(folder, name, "caecodec", f"caecodec {metric} q{quality}", image, ours.decode(data),
                             target, corner))
        for codec_name in codecs:
            codec = CLASSICAL[codec_name]
            level, bpp, encoded = match_rate(codec, image, target, threads)
            panels.append(_panel(folder, name, codec_name, f"{codec.label}, {codec.parameter} {level}", image,
                                 codec.decode(encoded), bpp, corner))
        entries[name] = {"target_bpp": target, "crop": corner, "panels": panels}
    (folder / "index.html").write_text(visual_html(entries, f"caecodec {metric} q{quality}"))
    screenshot(folder / "index.html", folder / "screenshot.png", height=220 + 500 * len(entries))
    return {"page": "visual/index.html", "configuration": f"{metric}-{quality}", "images": list(entries)}


def _panel(folder, name, stem, title, original, decoded, bpp, corner) -> dict:
    from .evaluation import psnr

    full, crop = save_panel(folder, f"{name}-{stem}", decoded, corner)
    return {"title": title, "image": full, "crop": crop, "bpp": bpp,
            "psnr": None if bpp is None else psnr(original, decoded)}


def visual_html(entries: dict, reference: str) -> str:
    sections = []
    for name, entry in entries.items():
        figures = []
        for panel in entry["panels"]:
            caption = html.escape(panel["title"])
            if panel["bpp"] is not None:
                caption += f"<br>{panel['bpp']:.3f} bpp · {panel['psnr']:.2f} dB"
            figures.append(f'<figure><img src="{panel["image"]}" alt="{html.escape(panel["title"])}" class="full">'
                           f'<img src="{panel["crop"]}" alt="{html.escape(panel["title"])} (zoomed crop)" '
                           f'class="crop"><figcaption>{caption}</figcaption></figure>')
        top, left = entry["crop"]
        sections.append(f"<section><h2>{html.escape(name)}: {entry['target_bpp']:.3f} bpp</h2>"
                        f"<p>Crops: {CROP}×{CROP} pixels at ({left}, {top}), enlarged {ZOOM}× without smoothing."
                        f"</p><div class=\"grid\">{''.join(figures)}</div></section>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>caecodec visual comparison</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax({CROP * ZOOM}px, 1fr)); gap: 12px; }}
figure {{ margin: 0; }} img.full {{ width: {CROP * ZOOM}px; display: block; }}
img.crop {{ width: {CROP * ZOOM}px; image-rendering: pixelated; }}
figcaption {{ font-size: 0.85em; }}
</style></head><body>
<h1>caecodec visual comparison</h1>
<p>Each classical codec's quality setting was searched so that its bit rate on the image comes as close as its
settings allow to the bit rate of {html.escape(reference)}. bpp counts the real encoded bytes.</p>
{''.join(sections)}
</body></html>
"""


def find_browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(page: Path, target: Path, height: int = 1800) -> bool:
    """A PNG of the page rendered by headless Chromium; False (and no file) when no browser is installed."""
    browser = find_browser()
    if browser is None:
        return False
    import tempfile

    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, *BROWSER_FLAGS, f"--user-data-dir={profile}", "--hide-scrollbars",
                        f"--window-size=1400,{height}", f"--screenshot={target.resolve()}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    return target.exists()
