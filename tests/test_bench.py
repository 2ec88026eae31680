"""`caecodec bench`: BD-rate arithmetic, the real CLI on real images, its files, and the visual page in Chromium."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from caecodec.bdrate import bd_rate, ms_ssim_db, quality_at_rate
from conftest import KODAK, REFERENCE, ROOT, TINY_CHECKPOINT, require

# Two RD curves (x265 presets) from the FAU-LMS `bjontegaard` package's examples; the expected values are
# what its PCHIP implementation (version 1.3.0) returns for them.
ANCHOR_RATES = [9487.76, 4593.60, 2486.44, 1358.24]
ANCHOR_PSNR = [40.037, 38.615, 36.845, 34.851]
TEST_RATES = [9787.80, 4469.00, 2451.52, 1356.24]
TEST_PSNR = [40.121, 38.651, 36.970, 34.987]
VISUAL_IMAGES = ("kodim05", "kodim23")


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "caecodec.cli", "bench", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


# -- BD-rate -------------------------------------------------------------------------------------------
def test_bd_rate_of_identical_curves_is_zero():
    assert bd_rate(ANCHOR_RATES, ANCHOR_PSNR, ANCHOR_RATES, ANCHOR_PSNR) == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("factor, expected", [(0.5, -50.0), (2.0, 100.0), (0.8, -20.0)])
def test_bd_rate_of_scaled_rates_is_the_scale(factor, expected):
    scaled = np.array(ANCHOR_RATES) * factor
    assert bd_rate(ANCHOR_RATES, ANCHOR_PSNR, scaled, ANCHOR_PSNR) == pytest.approx(expected, abs=1e-9)


def test_bd_rate_matches_the_reference_implementation():
    assert bd_rate(ANCHOR_RATES, ANCHOR_PSNR, TEST_RATES, TEST_PSNR) == pytest.approx(-4.417485350589045, abs=1e-9)
    # swapping the roles gives the inverse average, not the negated one, so it is a separate check
    assert bd_rate(TEST_RATES, TEST_PSNR, ANCHOR_RATES, ANCHOR_PSNR) > 4.0


def test_bd_rate_integrates_over_the_overlap_only():
    # log10(rate) = psnr / 10 for the anchor; the test curve is the same line shifted up by 1 dB, defined on a
    # range that only half overlaps: on the overlap its rate is 10**(-0.1) of the anchor's
    psnr = np.array([30.0, 32.0, 34.0, 36.0])
    shifted = psnr + 3.0
    rates = 10 ** (psnr / 10)
    test_rates = 10 ** ((shifted - 1.0) / 10)
    assert bd_rate(rates, psnr, test_rates, shifted) == pytest.approx((10**-0.1 - 1) * 100, abs=1e-9)


def test_bd_rate_over_an_interval_averages_that_interval_only():
    # the anchor's log10(rate) is psnr / 10; the test curve needs 10**-0.1 of its rate up to 33 dB and 10**-0.3
    # from 34 dB: over 30-32 and 35-36 dB (away from the step, which PCHIP rounds off) exactly those savings
    psnr = np.array([30.0, 31.0, 32.0, 33.0, 34.0, 35.0, 36.0])
    rates = 10 ** (psnr / 10)
    test_rates = rates * 10 ** np.where(psnr <= 33, -0.1, -0.3)
    assert bd_rate(rates, psnr, test_rates, psnr, interval=(30, 32)) == pytest.approx((10**-0.1 - 1) * 100, abs=1e-9)
    assert bd_rate(rates, psnr, test_rates, psnr, interval=(35, 36)) == pytest.approx((10**-0.3 - 1) * 100, abs=1e-9)
    assert bd_rate(rates, psnr, test_rates, psnr, interval=(30, 36)) == bd_rate(rates, psnr, test_rates, psnr)
    with pytest.raises(ValueError, match="the interval 29-33 must lie within the curves' overlap, 30-36"):
        bd_rate(rates, psnr, test_rates, psnr, interval=(29, 33))
    with pytest.raises(ValueError, match="the interval 33-31 must lie"):
        bd_rate(rates, psnr, test_rates, psnr, interval=(33, 31))


def test_bd_rate_is_none_without_overlap_or_points():
    assert bd_rate([1, 2], [30, 32], [1, 2], [40, 42]) is None
    assert bd_rate([1, 2], [30, 32], [1], [31]) is None
    with pytest.raises(ValueError, match="positive"):
        bd_rate([0, 2], [30, 32], [1, 2], [30, 32])


def test_quality_at_rate_interpolates_inside_and_refuses_outside():
    rates, psnr = [0.25, 0.5, 1.0, 2.0], [28.0, 31.0, 34.0, 37.0]  # 3 dB per doubling: a line in log rate
    assert quality_at_rate(rates, psnr, 0.5) == pytest.approx(31.0)
    assert quality_at_rate(rates, psnr, 2**-1.5) == pytest.approx(29.5)
    assert quality_at_rate(rates, psnr, 4.0) is None
    assert ms_ssim_db([0.9, 0.99]) == pytest.approx([10.0, 20.0])


# -- the command on real images -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    """Two real Kodak photos cut to 256x192 (fast, and larger than MS-SSIM's 161-pixel minimum)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("crops")
    for name in VISUAL_IMAGES:
        with Image.open(require(KODAK) / f"{name}.png") as image:
            image.convert("RGB").crop((128, 64, 384, 256)).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def bench_run(crops, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("bench") / "results"
    done = run_cli(str(crops), "-o", str(output), "--quick", "--qualities", "1,8", "--metrics", "mse",
                   "--codecs", "jpeg,webp", "--visual", ",".join(VISUAL_IMAGES), "--visual-setting", "mse-8")
    assert done.returncode == 0, done.stderr
    return output


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_bench_writes_every_measurement(bench_run, crops):
    rows = read_csv(bench_run / "measurements.csv")
    # caecodec at 2 qualities, JPEG and WebP at their 3 quick settings, on 2 images
    assert len(rows) == (2 + 3 + 3) * 2
    assert {r["image"] for r in rows} == set(VISUAL_IMAGES)
    results = json.loads((bench_run / "results.json").read_text())
    assert len(results["measurements"]) == len(rows)
    assert len(read_csv(bench_run / "averages.csv")) == 2 + 3 + 3
    for row in results["measurements"]:
        assert row["bpp"] == pytest.approx(8 * row["bytes"] / (row["width"] * row["height"]))
        assert row["encode_mpix_s"] > 0 and row["decode_mpix_s"] > 0
        assert 0 < row["ms_ssim"] <= 1


def test_bench_counts_the_real_bytes_and_scores_the_real_decoding(bench_run, crops):
    import imagecodecs

    from caecodec.codec import ConvolutionalAutoencoder
    from caecodec.evaluation import load_rgb, psnr

    image = load_rgb(crops / "kodim23.png")
    rows = {(r["codec"], r["setting"]): r for r in json.loads((bench_run / "results.json").read_text())["measurements"]
            if r["image"] == "kodim23"}
    chunk = ConvolutionalAutoencoder(quality=8, metric="mse").encode(image)
    assert rows["caecodec-mse", 8]["bytes"] == len(chunk)  # the whole chunk, header included
    assert rows["caecodec-mse", 8]["psnr"] == pytest.approx(psnr(image, ConvolutionalAutoencoder(8).decode(chunk)))
    jpeg = imagecodecs.jpeg8_encode(image, level=55)
    assert rows["jpeg", 55]["bytes"] == len(jpeg)
    assert rows["jpeg", 55]["psnr"] == pytest.approx(psnr(image, imagecodecs.jpeg8_decode(jpeg)))
    # real chunks cost at least the ideal code length of their symbols
    assert rows["caecodec-mse", 8]["coded_over_theoretical"] > 1
    assert rows["caecodec-mse", 8]["theoretical_bpp"] < rows["caecodec-mse", 8]["bpp"]


def test_bench_rates_grow_with_the_classical_quality(bench_run):
    averages = read_csv(bench_run / "averages.csv")
    for codec in ("jpeg", "webp"):
        bpp = [float(a["bpp"]) for a in averages if a["codec"] == codec]
        assert bpp == sorted(bpp) and len(bpp) == 3


def test_bench_summary_plots_and_published_curves(bench_run):
    from PIL import Image

    summary = (bench_run / "summary.md").read_text()
    assert "caecodec bench " in summary and "--quick" in summary  # the command that produced it
    assert "| caecodec-mse | jpeg |" in summary and "| caecodec-mse | webp |" in summary
    for plot in ("rd-psnr.png", "rd-ms-ssim.png"):
        with Image.open(bench_run / plot) as image:
            assert image.size[0] > 400
    results = json.loads((bench_run / "results.json").read_text())
    published = results["published"]
    assert published and all(name.startswith("published: ") for name in published)
    assert {r["codec"] for r in results["psnr_at_bpp"]} >= {"caecodec-mse", "jpeg", "webp", *published}


def test_visual_page_has_every_panel_next_to_it(bench_run):
    page = (bench_run / "visual" / "index.html").read_text()
    sources = [part.split('"')[0] for part in page.split('src="')[1:]]
    assert len(sources) == len(VISUAL_IMAGES) * (2 + 2) * 2  # original, caecodec, JPEG, WebP; full and crop
    assert all((bench_run / "visual" / source).is_file() and "/" not in source for source in sources)


IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  document.body.setAttribute("data-image-check",
    images.filter(i => i.complete && i.naturalWidth > 0).length + "/" + images.length);
});
</script></body>"""


def test_visual_page_loads_every_image_in_chromium(bench_run):
    from caecodec.bench import BROWSER_FLAGS, find_browser

    browser = find_browser()
    if browser is None:
        pytest.skip("needs Chromium (apt-get install -y chromium) to open the page in a real browser")
    visual = bench_run / "visual"
    checked = visual / "check.html"  # a copy beside the page, so its relative image paths still resolve
    checked.write_text((visual / "index.html").read_text().replace("</body>", IMAGE_CHECK))
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([browser, *BROWSER_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                              "--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=120).stdout
    expected = len(VISUAL_IMAGES) * 4 * 2
    assert f'data-image-check="{expected}/{expected}"' in dom
    assert (visual / "screenshot.png").stat().st_size > 10_000


def test_checkpoint_weights_make_one_configuration(crops, tmp_path):
    from caecodec.bench import run_benchmark

    results = run_benchmark(crops, tmp_path, weights=str(TINY_CHECKPOINT), codecs=(), quick=True, progress=False,
                            published=None)
    names = {a["codec"] for a in results["averages"]}
    assert names == {f"caecodec-mse ({TINY_CHECKPOINT.name})"}
    assert results["averages"][0]["model_bytes"] == TINY_CHECKPOINT.stat().st_size
    assert results["bd_rate"] == [] and results["published"] == {}


def test_each_refinement_is_a_curve_of_its_own(crops, tmp_path):
    from caecodec.bench import run_benchmark

    results = run_benchmark(crops, tmp_path, qualities=(6,), metrics=("mse",), codecs=("jpeg",), max_images=1,
                            refine=(0, 4), progress=False, published=None)
    curves = results["curves"]
    assert set(curves) == {"caecodec-mse", "caecodec-mse refine 4", "jpeg"}
    assert {row["anchor"] for row in results["bd_rate"] if row["codec"] == "caecodec-mse refine 4"} == {"jpeg"}
    from caecodec.zoo import LAMBDAS

    lam = 255**2 * LAMBDAS["mse"][6 - 1]  # the refined point has the lower loss λ·255²·MSE + bpp
    plain, refined = (curves[name] for name in ("caecodec-mse", "caecodec-mse refine 4"))
    loss = [lam * 10 ** (-c["psnr"][0] / 10) + c["bpp"][0] for c in (plain, refined)]
    assert loss[1] < loss[0]


def test_default_folder_is_kodak(tmp_path):
    require(KODAK)
    done = run_cli("-o", str(tmp_path), "--quick", "--max-images", "1", "--qualities", "4", "--metrics", "mse", "--codecs",
                   "jpeg", "--published", "none", "--quiet")
    assert done.returncode == 0, done.stderr
    environment = json.loads((tmp_path / "results.json").read_text())["environment"]
    assert Path(environment["folder"]).resolve() == KODAK.resolve() and environment["images"] == 1


@pytest.mark.parametrize("arguments, message", [
    (["{missing}"], "is not a directory"),
    (["{empty}"], "has no images"),
    (["{small}"], "MS-SSIM needs at least 161"),
    (["{crops}", "--codecs", "jpeg,gif"], "unknown codec 'gif'"),
    (["{crops}", "--qualities", "0"], "quality must be an integer from 1 to 8"),
    (["{crops}", "--qualities", "high"], "--qualities takes integers"),
    (["{crops}", "--visual", "kodim99"], "unknown image for --visual 'kodim99'"),
    (["{crops}", "--weights", "{missing}"], "is none of them"),
    (["{crops}", "--visual", "kodim23", "--visual-setting", "best"], "visual setting must look like 'mse-4'"),
    (["{crops}", "--published", "{missing}"], "published results folder"),
    (["{crops}", "--refine", "0,-5"], "--refine takes iteration counts from 0"),
    (["{crops}", "--refine", "many"], "--refine takes iteration counts from 0"),
])
def test_bad_input_is_one_line_and_exit_2(arguments, message, crops, tmp_path):
    from PIL import Image

    (tmp_path / "empty").mkdir()
    (tmp_path / "small").mkdir()
    Image.fromarray(np.zeros((100, 300, 3), np.uint8)).save(tmp_path / "small" / "tiny.png")
    paths = {"missing": tmp_path / "nothing", "empty": tmp_path / "empty", "small": tmp_path / "small", "crops": crops}
    done = run_cli(*(a.format(**paths) for a in arguments), "-o", str(tmp_path / "out"), "--quick", "--quiet")
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# -- what the mse target asks (benchmarks/target_reach.py) ---------------------------------------------------
def target_reach_lines() -> dict[str, tuple[float, list[str]]]:
    """Each printed curve's name -> (BD-rate against JPEG, its eight margins over JPEG at their rates)."""
    require(REFERENCE / "published-kodak")
    out = subprocess.run([sys.executable, ROOT / "benchmarks" / "target_reach.py"], check=True, capture_output=True,
                         text=True, cwd=ROOT, timeout=120).stdout
    parsed = {}
    for line in out.splitlines():
        match = re.fullmatch(r"(.+): BD-rate ([-+\d.]+) %; q1\.\.q8 against JPEG at their rates \(dB\): (.+)", line)
        if match:
            parsed[match[1]] = (float(match[2]), match[3].split())
    return parsed


def test_target_reach_lowers_compressai_s_curve_and_grafts_it_on_the_card():
    curves = target_reach_lines()
    shifted = sorted((float(name.rpartition("- ")[2].split()[0]), curve) for name, curve in curves.items()
                     if name.startswith("CompressAI's published curve"))
    assert [shift for shift, _ in shifted] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.5]
    bd_rates = [bd for _, (bd, _) in shifted]
    assert bd_rates == sorted(bd_rates) and bd_rates[0] < -40  # lowering the curve costs rate, all the way
    for shift, (_, margins) in shifted:
        for level, (margin, unshifted) in enumerate(zip(margins, shifted[0][1][1])):
            if margin != "n/a":
                assert float(margin) == pytest.approx(float(unshifted) - shift, abs=0.011), (shift, level)
    ours, graft = curves["version 21"], curves["version 21's q1-q5, CompressAI's q6-q8"]
    assert graft[1] == ours[1][:5] + shifted[0][1][1][5:]
    assert ours[0] < graft[0] < 0  # CompressAI's own q6-q8 lift the top, yet cost the average its low-rate savings
    for kept in (3, 4, 5):  # the fewer of version 21's levels kept and the less the top is lowered, the better
        name = f"version 21's q1-q{kept}, CompressAI's q{kept + 1}-q8"
        family = [curves[name], curves[f"{name} - 0.25 dB"], curves[f"{name} - 0.50 dB"]]
        assert [bd for bd, _ in family] == sorted(bd for bd, _ in family)
        for (_, margins), (_, lowered) in zip(family, shifted):
            assert margins == ours[1][:kept] + lowered[1][kept:], kept
    assert curves["version 21's q1-q3, CompressAI's q4-q8"][0] < curves["version 21's q1-q4, CompressAI's q5-q8"][0] < graft[0]
