"""The file and zarr commands end to end: the real CLI in a subprocess, real images, real stores on disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from caecodec.evaluation import load_rgb, psnr
from caecodec.store import read_seamless
from conftest import SAMPLE, TINY_CHECKPOINT

TINY = ["--weights", str(TINY_CHECKPOINT)]


def caecodec(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "caecodec.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def ok(*args) -> subprocess.CompletedProcess:
    result = caecodec(*args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "progress bars must be off when stderr is not a terminal"
    return result


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory, kodak_dir) -> Path:
    """A folder of real images: the sample (PNG), a Kodak crop as JPEG in a subfolder, a greyscale crop."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    Image.open(SAMPLE).save(root / "sample.png")
    Image.open(kodak_dir / "kodim05.png").crop((100, 50, 340, 210)).save(root / "sub" / "kodim05.jpg", quality=95)
    Image.open(kodak_dir / "kodim08.png").crop((0, 0, 150, 100)).convert("L").save(root / "sub" / "grey.png")
    return root


def test_compress_folder_keeps_relative_paths_and_decompresses_back(image_tree, tmp_path):
    ok("compress", image_tree, "-o", tmp_path / "cae", "-q", "1", "--tile", "256")
    written = sorted(p.relative_to(tmp_path / "cae").as_posix() for p in (tmp_path / "cae").rglob("*.cae"))
    assert written == ["sample.png.cae", "sub/grey.png.cae", "sub/kodim05.jpg.cae"]
    ok("decompress", tmp_path / "cae", "-o", tmp_path / "out")
    for name, original in [("sample.png", image_tree / "sample.png"), ("sub/kodim05.png", image_tree / "sub/kodim05.jpg")]:
        decoded, source = load_rgb(tmp_path / "out" / name), load_rgb(original)
        assert decoded.shape == source.shape
        assert psnr(source, decoded) > 18  # loose floor: the bundled weights are still training
    with Image.open(tmp_path / "out" / "sub" / "grey.png") as grey:
        assert grey.mode == "L" and grey.size == (150, 100)


def test_single_file_round_trip_is_deterministic_and_tiff_output_matches_png(tmp_path):
    ok("compress", SAMPLE, "-o", tmp_path / "a.cae", *TINY, "--tile", "128")
    ok("decompress", tmp_path / "a.cae", "-o", tmp_path / "a.png", *TINY)
    ok("decompress", tmp_path / "a.cae", "-o", tmp_path / "b.png", *TINY)
    ok("decompress", tmp_path / "a.cae", "-o", tmp_path / "a.tif", *TINY)
    png = load_rgb(tmp_path / "a.png")
    np.testing.assert_array_equal(png, load_rgb(tmp_path / "b.png"))
    np.testing.assert_array_equal(png, tifffile.imread(tmp_path / "a.tif"))
    assert png.shape == load_rgb(SAMPLE).shape


def test_info_reports_model_quality_size_and_bpp(tmp_path):
    ok("compress", SAMPLE, "-o", tmp_path / "s.cae", "-q", "2", "-m", "ms-ssim", *TINY)
    out = ok("info", tmp_path / "s.cae").stdout
    height, width = load_rgb(SAMPLE).shape[:2]
    size = (tmp_path / "s.cae").stat().st_size
    assert "quality  : 2" in out and "metric   : ms-ssim" in out and "checkpoint file" in out
    assert f"{width}x{height} pixels" in out and f"{SAMPLE.stat().st_size} bytes" in out
    assert f"bpp      : {8 * size / (width * height):.4f}" in out


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_to_zarr_and_back_one_array_per_image(image_tree, tmp_path, zarr_format):
    store = tmp_path / "images.zarr"
    ok("to-zarr", image_tree, "-o", store, "--chunk", "128", "--zarr-format", zarr_format, "-q", "3", *TINY)
    group = zarr.open_group(store, mode="r")
    assert group.metadata.zarr_format == zarr_format
    array = group["sub/kodim05"]
    assert array.shape == (160, 240, 3) and array.chunks == (128, 128, 3)
    assert "read_seamless" in array.attrs["caecodec"]["chunks_coded"]  # tells plain zarr readers
    ok("from-zarr", store, "-o", tmp_path / "out")  # seamless by default: chunks synthesised with their neighbours
    np.testing.assert_array_equal(load_rgb(tmp_path / "out" / "sub" / "kodim05.png"), read_seamless(array))
    np.testing.assert_array_equal(load_rgb(tmp_path / "out" / "sample.png"), read_seamless(group["sample"]))
    ok("from-zarr", store, "-o", tmp_path / "plain", "--independent-chunks")  # what plain zarr reads
    np.testing.assert_array_equal(load_rgb(tmp_path / "plain" / "sub" / "kodim05.png"), array[:])


def test_stack_holds_images_of_one_size_in_one_array(kodak_dir, tmp_path):
    folder = tmp_path / "crops"
    folder.mkdir()
    for name in ("kodim01", "kodim02", "kodim03"):
        Image.open(kodak_dir / f"{name}.png").crop((0, 0, 192, 128)).save(folder / f"{name}.png")
    ok("to-zarr", folder, "-o", tmp_path / "s.zarr", "--stack", "--chunk", "64", *TINY)
    array = zarr.open_group(tmp_path / "s.zarr", mode="r")["images"]
    assert array.shape == (3, 128, 192, 3) and array.chunks == (1, 64, 64, 3)
    ok("from-zarr", tmp_path / "s.zarr", "-o", tmp_path / "out", "-f", "tiff")
    for index, name in enumerate(("kodim01", "kodim02", "kodim03")):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / f"{name}.tiff"),
                                      read_seamless(array, index=(index,)))


def test_tiled_and_pyramidal_bigtiff_input(kodak_dir, tmp_path):
    image = load_rgb(kodak_dir / "kodim07.png")[:320, :480]
    tiled = tmp_path / "tiled.tif"
    tifffile.imwrite(tiled, image, tile=(128, 128), bigtiff=True, photometric="rgb")
    pyramid = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(pyramid, bigtiff=True) as tiff:
        tiff.write(image, tile=(128, 128), subifds=1, photometric="rgb")
        tiff.write(image[::2, ::2], tile=(128, 128), subfiletype=1, photometric="rgb")
    ok("to-zarr", tiled, pyramid, "-o", tmp_path / "t.zarr", "--chunk", "128", "-q", "1")
    group = zarr.open_group(tmp_path / "t.zarr", mode="r")
    for name in ("tiled", "pyramid"):
        assert group[name].shape == image.shape  # the full-resolution level
        assert psnr(image, group[name][:]) > 18
    np.testing.assert_array_equal(group["tiled"][:], group["pyramid"][:])
    from caecodec.weights import latest_version

    assert group["tiled"].serializer.weights_version == latest_version()  # pinned: later writes stay in it


def test_inspect_writes_three_figures(tmp_path):
    result = ok("inspect", SAMPLE, "-o", tmp_path / "figures", "-q", "1", "--top-k", "4")
    for name in ("channel_bits.png", "top_channels.png", "reconstruction.png"):
        with Image.open(tmp_path / "figures" / name) as figure:
            assert figure.size[0] > 300 and figure.size[1] > 200
    assert "bpp" in result.stdout and "most expensive channels" in result.stdout


def test_bad_input_gives_one_line_and_exit_code_2(image_tree, tmp_path):
    (tmp_path / "fake.png").write_text("not an image")
    (tmp_path / "a.zarr").mkdir()
    zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    cases = [
        (("compress", tmp_path / "missing.png", "-o", tmp_path / "x.cae"), "no such file"),
        (("compress", tmp_path / "fake.png", "-o", tmp_path / "x.cae"), "not a readable image"),
        (("info", SAMPLE), "not a .cae file"),
        (("from-zarr", image_tree, "-o", tmp_path / "o"), "is not a zarr group or array"),
        (("to-zarr", SAMPLE, "-o", tmp_path / "v2.zarr"), "is a zarr 2 group"),
        (("to-zarr", image_tree, "-o", tmp_path / "s.zarr", "--stack"), "--stack needs images of one size"),
        (("compress", SAMPLE, "-o", tmp_path / "x.cae", "--tile", "100"), "multiple of 16"),
    ]
    for args, expected in cases:
        result = caecodec(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_decompress_with_other_weights_names_the_mismatch(tmp_path):
    ok("compress", SAMPLE, "-o", tmp_path / "s.cae", *TINY)
    result = caecodec("decompress", tmp_path / "s.cae", "-o", tmp_path / "s.png")
    assert result.returncode == 2 and "checkpoint file" in result.stderr and "Traceback" not in result.stderr
