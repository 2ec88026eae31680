"""Where models come from: the weights bundled in the package, CompressAI's published files, or a local file.

Every source yields a `LoadedModel`: a plain FactorizedPrior plus its integer CDF tables and the
identity (version, digest) that chunks record. Models are loaded once per process and shared by all
codecs and threads. Nothing here touches the network unless CompressAI's weights are asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import zoo

BUNDLE_DIR = Path(__file__).parent / "weights"
COMPRESSAI_URL = "https://compressai.s3.amazonaws.com/models/v1"
COMPRESSAI_HASHES = {
    "mse": ("446d5c7f", "87279a02", "5c6f152b", "1ed4405a", "866ba797", "9b02ea3a", "6dfd6734", "5232faa3"),
    "ms-ssim": ("9781d705", "4a584386", "5352f123", "4f91b847", "b3a88897", "ee028763", "8c265a29", "8811bd14"),
}


class WeightsError(ValueError):
    """Weights that cannot be used: missing version, failed checksum, unreadable file."""


@dataclass(frozen=True)
class LoadedModel:
    model: object  # models.FactorizedPrior, in eval mode on `device`
    tables: object  # coding.CdfTables
    weights_version: int  # 0 for a checkpoint outside the bundle
    weights_digest: bytes  # 8 bytes
    provisional: bool
    device: str


def cache_dir() -> Path:
    return Path(os.environ.get("CAECODEC_CACHE", Path.home() / ".cache" / "caecodec"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- bundled weights -------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def manifest() -> dict:
    """The model cards of the bundled weight versions, keyed by version number (as a string)."""
    path = BUNDLE_DIR / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {"versions": {}}


def bundled_versions() -> list[int]:
    return sorted(int(v) for v in manifest()["versions"])


def latest_version() -> int:
    versions = bundled_versions()
    if not versions:
        raise WeightsError("this installation has no bundled weights (caecodec/weights/manifest.json is empty)")
    return versions[-1]


def version_card(version: int) -> dict:
    card = manifest()["versions"].get(str(version))
    if card is None:
        dropped = manifest().get("dropped", {}).get(str(version))
        remedy = (f"version {version} was {dropped['reason']}; caecodec at commit {dropped['last_bundled_at']} "
                  "still decodes it" if dropped else "install the caecodec release that wrote it")
        raise WeightsError(f"chunk needs bundled weights version {version}, which this installation lacks "
                           f"(it has {bundled_versions()}): {remedy}")
    return card


@lru_cache(maxsize=None)
def _variable_rate_model(version: int):
    """The verified, fp32 variable-rate network of a bundled version (loaded once per process)."""
    card = version_card(version)
    path = BUNDLE_DIR / card["file"]
    if not path.exists():
        raise WeightsError(f"bundled weights version {version}: {path} is missing from the installation")
    found = sha256_file(path)
    if found != card["sha256"]:
        raise WeightsError(f"bundled weights {path}: sha256 expected {card['sha256']}, found {found}")
    from safetensors.torch import load_file

    return variable_rate_from_tensors(load_file(path), card["n"], card["m"])


def variable_rate_from_tensors(tensors: dict, n: int, m: int):
    from .models import variable_rate_like

    tensors = unpacked_cdf_tables(tensors)
    model = variable_rate_like(tensors, n, m)
    for level, bottleneck in enumerate(model.entropy_bottlenecks):
        for name in bottleneck.TABLES:
            getattr(bottleneck, name).resize_(tensors[f"entropy_bottlenecks.{level}.{name}"].shape)
    model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()})
    return model.eval()


TRANSFORMS = ("g_a.", "g_s.", "g_a_ms_ssim.", "g_s_ms_ssim.", "g_a_mse_high.", "g_s_mse_high.")  # stored in fp16
CDF, LENGTH, PACKED = "._quantized_cdf", "._cdf_length", "._quantized_cdf_packed"


def packed_cdf_tables(tensors: dict) -> dict:
    """`tensors` with each density's CDF table (one row per channel, zero-padded to the longest) stored as its
    rows' entries, concatenated, as bundles exported after version 21 store them. The padding was 93 % of version
    21's tables, 4.2 MB."""
    packed = dict(tensors)
    for name in [name for name in tensors if name.endswith(CDF)]:
        table, lengths = packed.pop(name), tensors[name[: -len(CDF)] + LENGTH]
        packed[name[: -len(CDF)] + PACKED] = table[_entries(lengths, table.shape[1])]
    return packed


def unpacked_cdf_tables(tensors: dict) -> dict:
    """The inverse of `packed_cdf_tables`, the tables padded as `EntropyBottleneck.update` builds them (bundles
    up to version 21 store them padded: those are returned as they are)."""
    import torch

    unpacked = dict(tensors)
    for name in [name for name in tensors if name.endswith(PACKED)]:
        lengths, entries = tensors[name[: -len(PACKED)] + LENGTH], unpacked.pop(name)
        width = int(lengths.max()) if len(lengths) else 0
        if entries.numel() != int(lengths.sum()):
            raise WeightsError(f"{name} holds {entries.numel()} CDF entries; its lengths add up to {int(lengths.sum())}")
        table = torch.zeros(len(lengths), width, dtype=entries.dtype)
        table[_entries(lengths, width)] = entries
        unpacked[name[: -len(PACKED)] + CDF] = table
    return unpacked


def _entries(lengths, width: int):
    """Mask of the entries of a CDF table `width` wide whose rows are `lengths` long."""
    import torch

    return torch.arange(width)[None, :] < lengths[:, None]


def write_bundle(model, path: Path, metadata: dict[str, str]) -> None:
    """Store a VariableRateFactorizedPrior: transforms in fp16, densities, gains and CDF tables (packed) in
    fp32/int32.

    The CDF tables are built from the fp16-rounded weights, the ones decoders will compute with.
    """
    import torch
    from safetensors.torch import save_file

    model = model.eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.startswith(TRANSFORMS) and tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
        for bottleneck in model.entropy_bottlenecks:
            bottleneck.update()
    tensors = {
        name: (t.half() if name.startswith(TRANSFORMS) and t.is_floating_point() else t).contiguous()
        for name, t in model.state_dict().items()
    }
    save_file(packed_cdf_tables(tensors), str(path), metadata=metadata)


# -- CompressAI's published weights ------------------------------------------------------------------
def compressai_filename(quality: int, metric: str) -> str:
    zoo.check_configuration(quality, metric)
    stem = "bmshj2018-factorized-prior" if metric == "mse" else "bmshj2018-factorized-ms-ssim"
    return f"{stem}-{quality}-{COMPRESSAI_HASHES[metric][quality - 1]}.pth.tar"


def fetch_compressai(quality: int, metric: str, base_url: str | None = None) -> Path:
    """CompressAI's checkpoint for this configuration, downloaded once into the cache, sha256-checked every use.

    `base_url` (or CAECODEC_COMPRESSAI_URL) may point at a mirror, including a file:// directory.
    """
    name = compressai_filename(quality, metric)
    expected = name.rsplit("-", 1)[1].split(".")[0]
    target = cache_dir() / "compressai" / name
    if not target.exists():
        url = f"{(base_url or os.environ.get('CAECODEC_COMPRESSAI_URL') or COMPRESSAI_URL).rstrip('/')}/{name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".part{os.getpid()}")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise WeightsError(f"cannot download CompressAI weights {url}: {error}") from None
        os.replace(partial, target)
    found = sha256_file(target)
    if not found.startswith(expected):
        raise WeightsError(f"CompressAI weights {target}: sha256 expected to start with {expected}, found {found[:8]}; "
                           "delete the file to download it again")
    return target


# -- loading ---------------------------------------------------------------------------------------
_lock = threading.Lock()
_loaded: dict[tuple, LoadedModel] = {}


def resolve_device(gpu: bool) -> str:
    import torch

    return "cuda" if gpu and torch.cuda.is_available() else "cpu"


def load(quality: int, metric: str, weights: str = "bundled", version: int | None = None,
         device: str = "cpu") -> LoadedModel:
    """The model for a configuration, loaded once per process (thread-safe)."""
    zoo.check_configuration(quality, metric)
    if weights == "bundled":
        version = latest_version() if version is None else version
    key = (quality, metric, weights, version, device)
    with _lock:
        if key not in _loaded:
            _loaded[key] = _load_uncached(quality, metric, weights, version, device)
        return _loaded[key]


def _load_uncached(quality, metric, weights, version, device) -> LoadedModel:
    if weights == "bundled":
        card = version_card(version)
        model = _variable_rate_model(version).export(zoo.level_index(quality, metric))
        return _finish(model, version, bytes.fromhex(card["sha256"])[:8], card.get("provisional", False), device)
    from .checkpoints import factorized_prior_from_state_dict, read_state_dict

    path = fetch_compressai(quality, metric) if weights == "compressai" else Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights must be 'bundled', 'compressai' or a checkpoint file; {weights!r} is none of them")
    model = factorized_prior_from_state_dict(read_state_dict(path))
    return _finish(model, 0, bytes.fromhex(sha256_file(path))[:8], False, device)


def _finish(model, version, digest, provisional, device) -> LoadedModel:
    tables = model.entropy_bottleneck.cdf_tables()  # read on the CPU, before the model moves
    model = model.to(device).eval()
    return LoadedModel(model, tables, version, digest, provisional, device)
