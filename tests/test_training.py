"""Training through the real CLI: exact resume, curves, export to a bundle the codec loads."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from caecodec import weights
from caecodec.entropy_models import EntropyBottleneck
from caecodec.compression import analyse
from caecodec.evaluation import mean_measurement, measure
from caecodec.training import (Trainer, TrainingConfig, kodak_images, load_checkpoint_model, main_parameters,
                               native_bfloat16, train)
from caecodec.models import VariableRateFactorizedPrior

TINY_CONFIG = dict(n=8, m=8, batch=2, warmup_steps=2, kodak_dir=None)
TINY = ["--n", "8", "--m", "8", "--batch", "2", "--threads", "1", "--quiet", "--kodak-dir", ""]


def caecodec(*arguments, cwd, stream="stdout"):
    result = subprocess.run([sys.executable, "-m", "caecodec.cli", *map(str, arguments)], capture_output=True,
                            text=True, timeout=600, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    return getattr(result, stream)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, sample_image):
    folder = tmp_path_factory.mktemp("photos")
    for i, (top, left) in enumerate([(0, 0), (100, 200), (200, 50)]):
        Image.fromarray(sample_image[top : top + 180, left : left + 300]).save(folder / f"photo{i}.png")
    return folder


def export(run_dir, version, cwd, density_iterations=50, synthesis_steps=20):
    """`caecodec train --export` of a run into `cwd/bundle`: the command's output, the version's card, its tensors."""
    from safetensors.torch import load_file

    bundle = cwd / "bundle"
    out = caecodec("train", "--run-dir", run_dir, "--export", version, "--bundle-dir", bundle, "--kodak-dir", "",
                   "--density-iterations", density_iterations, "--synthesis-steps", synthesis_steps, cwd=cwd)
    card = json.loads((bundle / "manifest.json").read_text())["versions"][str(version)]
    return out, card, load_file(bundle / f"v{version}.safetensors")


def model_state(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_is_exact(tmp_path, photos, precision):
    tiny = [*TINY, "--precision", precision]
    caecodec("train", "--train-dir", photos, "--run-dir", tmp_path / "straight", "--steps", 4, *tiny, cwd=tmp_path)
    caecodec("train", "--train-dir", photos, "--run-dir", tmp_path / "resumed", "--steps", 3, *tiny, cwd=tmp_path)
    out = caecodec("train", "--train-dir", photos, "--run-dir", tmp_path / "resumed", "--steps", 1, cwd=tmp_path,
                   *TINY)  # the precision is the run's own
    assert "step 4" in out
    straight, resumed = model_state(tmp_path / "straight"), model_state(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    steps = (tmp_path / "resumed" / "steps.csv").read_text().splitlines()
    assert len(steps) == 1 + 4 and steps[0].startswith("step,level,loss,bpp,psnr")


def test_bf16_run_differs_from_fp32_and_a_switch_is_logged(tmp_path, photos):
    """Mixed precision really changes the arithmetic; switching a run to it is a recipe change on record,
    also for a checkpoint written before the setting existed (which trained in float32). On a CPU without bfloat16
    arithmetic, where it is emulated, training in it warns."""
    for precision in ("fp32", "bf16"):
        warnings = caecodec("train", "--train-dir", photos, "--run-dir", tmp_path / precision, "--steps", 2, *TINY,
                            "--precision", precision, cwd=tmp_path, stream="stderr")
        assert ("which this CPU has no arithmetic for" in warnings) == (precision == "bf16" and not native_bfloat16())
    fp32, bf16 = model_state(tmp_path / "fp32"), model_state(tmp_path / "bf16")
    assert not torch.equal(fp32["g_s.0.weight"], bf16["g_s.0.weight"])
    assert torch.allclose(fp32["g_s.0.weight"], bf16["g_s.0.weight"], atol=1e-3)  # the same two steps, nearly
    run = tmp_path / "fp32"
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    del checkpoint["config"]["precision"]
    torch.save(checkpoint, run / "checkpoint.pt")
    caecodec("train", "--train-dir", photos, "--run-dir", run, "--steps", 1, *TINY, "--precision", "bf16", cwd=tmp_path)
    with (run / "events.csv").open() as handle:
        assert [row["event"] for row in csv.DictReader(handle)] == [
            "resumed with changed settings {'precision': ['fp32', 'bf16']}"]


def test_export_and_plot(tmp_path, photos):
    run = tmp_path / "run"
    caecodec("train", "--train-dir", photos, "--run-dir", run, "--steps", 2, *TINY, "--precision", "bf16", cwd=tmp_path)
    caecodec("train", "--run-dir", run, "--plot", tmp_path / "curves.png", cwd=tmp_path)
    assert Image.open(tmp_path / "curves.png").size[0] > 500
    out, card, tensors = export(run, 7, tmp_path)
    assert "version 7" in out
    assert card["steps"] == 2 and card["recipe"]["precision"] == "bf16"  # the card names how it was trained
    trained, _ = load_checkpoint_model(run)
    trained_aux = sum(float(trained.aux_loss(level).detach()) for level in range(16))
    assert card["aux_loss_after_quantile_fit"] < min(1.0, 0.01 * trained_aux)  # placed by bisection at export
    assert tensors["g_a.0.weight"].dtype == torch.float16 and tensors["log_gain"].dtype == torch.float32
    model = weights.variable_rate_from_tensors(tensors, 8, 8)
    assert isinstance(model, VariableRateFactorizedPrior) and model.levels == 16
    exported = model.export(3)
    assert "entropy_bottlenecks.3._quantized_cdf" not in tensors  # stored packed, without the padding
    stored = weights.unpacked_cdf_tables(tensors)["entropy_bottlenecks.3._quantized_cdf"].numpy()
    np.testing.assert_array_equal(exported.entropy_bottleneck.cdf_tables().quantized_cdf, stored)


def test_export_refits_the_densities_to_the_whole_photos(tmp_path, photos):
    """The densities are refitted at export to the rounded latents of the whole training photos: fewer bits for
    every level on them, the transforms and gains untouched; --density-iterations 0 keeps them as trained."""
    run = tmp_path / "run"
    caecodec("train", "--train-dir", photos, "--run-dir", run, "--steps", 2, *TINY, cwd=tmp_path)
    _, refitted_card, refitted = export(run, 1, tmp_path, density_iterations=200, synthesis_steps=0)
    _, plain_card, plain = export(run, 2, tmp_path, density_iterations=0, synthesis_steps=0)
    fit = refitted_card["density_fit"]
    assert fit["photos"] == 3 and fit["iterations"] == 200 and [row["level"] for row in fit["levels"]] == list(range(16))
    assert all(row["bits_after"] < row["bits_before"] for row in fit["levels"]), fit["levels"]
    assert plain_card["density_fit"] is None
    density = "entropy_bottlenecks.5.matrices.0"
    assert not torch.equal(refitted[density], plain[density])
    assert all(torch.equal(refitted[name], plain[name]) for name in refitted if not name.startswith("entropy_bottlenecks"))
    trained, _ = load_checkpoint_model(run)
    torch.testing.assert_close(plain[density], trained.state_dict()[density])
    images = [np.array(Image.open(path).convert("RGB")) for path in sorted(photos.iterdir())]
    coded = [mean_measurement(weights.variable_rate_from_tensors(tensors, 8, 8).export(5), images)
             for tensors in (refitted, plain)]  # real bitstreams
    assert coded[0].bpp < coded[1].bpp and coded[0].psnr == pytest.approx(coded[1].psnr, abs=0.05)


def test_export_refits_the_synthesis_to_rounded_latents(tmp_path, photos):
    """Each synthesis transform is refitted at export to the rounded latents it decodes: on the photos, with real
    bitstreams, every level measured reconstructs better at the very same bits, since only the synthesis and the
    inverse gains change; --synthesis-steps 0 keeps them as trained."""
    run = tmp_path / "run"
    caecodec("train", "--train-dir", photos, "--run-dir", run, "--steps", 2, *TINY, "--metric-decoders", cwd=tmp_path)
    _, refitted_card, refitted = export(run, 1, tmp_path, density_iterations=0, synthesis_steps=150)
    _, plain_card, plain = export(run, 2, tmp_path, density_iterations=0, synthesis_steps=0)
    assert refitted_card["synthesis_fit"] == {"steps": 150, "lr": 1e-4, "crop": 128, "batch": 8,
                                              "transforms": ["g_s", "g_s_ms_ssim"]}
    assert plain_card["synthesis_fit"] is None
    changed = {name for name in refitted if not torch.equal(refitted[name], plain[name])}
    assert changed and all(name.startswith(("g_s.", "g_s_ms_ssim.", "log_inverse_gain")) for name in changed), changed
    assert any(name.startswith("g_s_ms_ssim.") for name in changed)
    images = [np.array(Image.open(path).convert("RGB")) for path in sorted(photos.iterdir())]
    for level in (0, 7, 8):  # mse q1 and q8, ms-ssim q1: real bitstreams
        coded = [mean_measurement(weights.variable_rate_from_tensors(tensors, 8, 8).export(level), images)
                 for tensors in (refitted, plain)]
        assert coded[0].bpp == coded[1].bpp
        better = (coded[0].psnr > coded[1].psnr) if level < 8 else (coded[0].ms_ssim > coded[1].ms_ssim)
        assert better, (level, coded)


def test_export_names_a_missing_training_folder(tmp_path, photos):
    run = tmp_path / "run"
    caecodec("train", "--train-dir", photos, "--run-dir", run, "--steps", 1, *TINY, cwd=tmp_path)
    result = subprocess.run([sys.executable, "-m", "caecodec.cli", "train", "--run-dir", str(run), "--export", "3",
                             "--bundle-dir", str(tmp_path / "bundle"), "--train-dir", str(tmp_path / "gone")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().endswith(f"training images folder not found: {tmp_path / 'gone'}")


@pytest.mark.parametrize("option", ["--density-iterations", "--synthesis-steps"])
def test_a_negative_export_fit_is_one_line(tmp_path, photos, option):
    run = tmp_path / "run"
    caecodec("train", "--train-dir", photos, "--run-dir", run, "--steps", 1, *TINY, cwd=tmp_path)
    result = subprocess.run([sys.executable, "-m", "caecodec.cli", "train", "--run-dir", str(run), "--export", "3",
                             "--bundle-dir", str(tmp_path / "bundle"), option, "-1"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().endswith(f"{option} must be at least 0, not -1")
    assert not (tmp_path / "bundle").exists()


def test_a_retabled_version_codes_the_same_latents_into_tables_whose_tails_are_exact(tmp_path, sample_image):
    """`--export V --retable S`: bundled version S's network as version V, its densities' tails placed by
    bisection and its medians kept, so the same symbols decode to the same pixels."""
    from safetensors.torch import load_file

    source, bundle = weights.latest_version(), tmp_path / "bundle"
    out = caecodec("train", "--export", source + 1, "--retable", source, "--provisional", "--bundle-dir", bundle,
                   "--kodak-dir", "", cwd=tmp_path)
    assert f"wrote bundled weights version {source + 1}" in out
    card = json.loads((bundle / "manifest.json").read_text())["versions"][str(source + 1)]
    assert card["retabled_from"] == source and card["steps"] == weights.version_card(source)["steps"]
    assert card["aux_loss_after_quantile_fit"] < 100 and "kodak" not in card
    retabled = weights.variable_rate_from_tensors(load_file(bundle / card["file"]), card["n"], card["m"])
    original = weights._variable_rate_model(source)
    image = sample_image[:192, :256]
    for level in (0, 7, 15):  # the smallest and the largest mse level, the largest ms-ssim level
        before, after = original.entropy_bottlenecks[level], retabled.entropy_bottlenecks[level]
        assert torch.equal(after.medians, before.medians)
        logits = after._logits_cumulative(after.quantiles, stop_gradient=True)[:, 0, :].detach()
        assert float((logits[:, [0, 2]] - after.target[[0, 2]]).abs().max()) < 0.1
        old, new = original.export(level), retabled.export(level)
        old_tables, new_tables = old.entropy_bottleneck.cdf_tables(), new.entropy_bottleneck.cdf_tables()
        np.testing.assert_array_equal(analyse(old, image[None], old_tables), analyse(new, image[None], new_tables))
        assert measure(new, image).psnr == measure(old, image).psnr


def test_retable_names_a_version_that_is_not_bundled_and_refuses_to_overwrite_its_source(tmp_path):
    source = weights.latest_version()
    for arguments, message in [((source + 7, 1), f"--retable 1: this installation bundles weights versions "
                                                  f"{weights.bundled_versions()}, not 1"),
                               ((source, source), f"--export {source} would overwrite its source, bundled version "
                                                  f"{source}: bundled versions are immutable")]:
        result = subprocess.run([sys.executable, "-m", "caecodec.cli", "train", "--export", str(arguments[0]),
                                 "--retable", str(arguments[1]), "--bundle-dir", str(tmp_path / "bundle")],
                                capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr.strip().endswith(message)
    assert not (tmp_path / "bundle").exists()


def test_missing_training_folder_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "caecodec.cli", "train", "--train-dir", str(tmp_path / "none"),
                             "--run-dir", str(tmp_path / "run")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "training images folder not found" in result.stderr


def test_cooldown_branch_anneals_a_copy(tmp_path, photos):
    torch.set_num_threads(1)
    train(TrainingConfig(run_dir=str(tmp_path / "main"), train_dir=str(photos), **TINY_CONFIG), 5, progress=False)
    source = model_state(tmp_path / "main")
    branch = TrainingConfig(run_dir=str(tmp_path / "branch"), train_dir=str(photos), **TINY_CONFIG)
    assert train(branch, 4, progress=False, branch_from=str(tmp_path / "main")).step == 9
    assert train(branch, 4, progress=False).step == 9  # a finished cooldown trains no further
    assert all(torch.equal(source[k], model_state(tmp_path / "main")[k]) for k in source)  # the source is untouched
    with (tmp_path / "branch" / "steps.csv").open() as handle:
        rates = [float(row["lr"]) for row in csv.DictReader(handle)]
    assert len(rates) == 4 and all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[0] < branch.lr(5) and rates[-1] == pytest.approx(branch.final_lr)


def test_cooldown_branch_starts_at_the_rate_of_its_source(tmp_path, photos):
    """A branch anneals from the rate its source was at, by the source's schedule, whatever its own settings."""
    torch.set_num_threads(1)
    train(TrainingConfig(run_dir=str(tmp_path / "main"), train_dir=str(photos), **TINY_CONFIG, total_steps=5), 5,
          progress=False)
    with (tmp_path / "main" / "steps.csv").open() as handle:
        source_rate = float(list(csv.DictReader(handle))[-1]["lr"])
    branch = TrainingConfig(run_dir=str(tmp_path / "branch"), train_dir=str(photos), **TINY_CONFIG)  # 100 000-step schedule
    train(branch, 2, progress=False, branch_from=str(tmp_path / "main"))
    with (tmp_path / "branch" / "steps.csv").open() as handle:
        first_rate = float(next(csv.DictReader(handle))["lr"])
    assert source_rate < branch.lr(5) / 2  # the two schedules differ enough to tell which one the branch took
    assert first_rate <= source_rate


def test_cooldown_branch_resumed_midway_is_exact(tmp_path, photos):
    torch.set_num_threads(1)
    train(TrainingConfig(run_dir=str(tmp_path / "main"), train_dir=str(photos), **TINY_CONFIG), 3, progress=False)
    for name, stretches in (("whole", [4]), ("resumed", [2, 2])):
        for steps in stretches:
            train(TrainingConfig(run_dir=str(tmp_path / name), train_dir=str(photos), **TINY_CONFIG), steps, progress=False,
                  branch_from=str(tmp_path / "main"), cooldown_steps=4)
    whole, resumed = model_state(tmp_path / "whole"), model_state(tmp_path / "resumed")
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["step"] == 7
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_cooldown_from_a_run_without_checkpoint_is_one_line(tmp_path, photos):
    result = subprocess.run([sys.executable, "-m", "caecodec.cli", "train", "--train-dir", str(photos), "--run-dir",
                             str(tmp_path / "branch"), "--cooldown-from", str(tmp_path / "none"), *TINY],
                            capture_output=True, text=True)
    assert result.returncode == 2 and not (tmp_path / "branch" / "checkpoint.pt").exists()
    assert result.stderr.strip().count("\n") == 0 and "no checkpoint to branch from" in result.stderr


def test_data_parallel_run_resumes_exactly(tmp_path, photos):
    """Two processes, each computing half of every batch: straight and stopped-and-resumed runs agree bit for bit."""
    torch.set_num_threads(1)
    config = dict(train_dir=str(photos), **TINY_CONFIG | {"batch": 4, "checkpoint_every": 2})
    for name, stretches in (("straight", [5]), ("resumed", [3, 2])):
        for steps in stretches:
            trainer = train(TrainingConfig(run_dir=str(tmp_path / name), **config), steps, progress=False, processes=2)
    assert trainer.step == 5
    straight, resumed = model_state(tmp_path / "straight"), model_state(tmp_path / "resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    checkpoint = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert len(checkpoint["replicas"]) == 1  # the second process's RNG state, without which resuming is not exact
    assert len((tmp_path / "resumed" / "steps.csv").read_text().splitlines()) == 1 + 5  # logged once, by the leader


def test_data_parallel_evaluation_is_the_evaluation_of_all_images(tmp_path, photos):
    """Each process measures its share of the validation images; the leader logs the mean over all of them."""
    torch.set_num_threads(1)
    config = TrainingConfig(run_dir=str(tmp_path / "run"), train_dir=str(photos),
                            **TINY_CONFIG | {"batch": 4, "kodak_dir": str(photos), "eval_every": 3, "eval_images": 3})
    train(config, 3, progress=False, processes=2)
    with (tmp_path / "run" / "kodak.csv").open() as handle:
        logged = list(csv.DictReader(handle))
    single = Trainer(config)
    assert single.resume() and single.step == 3
    expected = single.evaluate(kodak_images(str(photos), 3))
    assert len(logged) == len(expected) == 16 and {row["images"] for row in logged} == {"3"}
    for row, reference in zip(logged, expected):
        for key in ("bpp", "psnr", "ms_ssim"):
            assert float(row[key]) == pytest.approx(reference[key], rel=1e-12)


@pytest.mark.parametrize("arguments, message", [
    (["--processes", "3"], "batch 2 does not split evenly over 3 processes"),
    (["--processes", "0"], "batch 2 does not split evenly over 0 processes"),
    (["--crop", "64"], "crop 64 is too small for the ms-ssim levels: MS-SSIM with window 7 needs crops of at least 97"),
    (["--levels", "0,16"], "levels must be indexes 0-15 (0-7 mse q1-8, 8-15 ms-ssim), not (0, 16)"),
    (["--precision", "fp16"], "precision must be one of fp32, bf16, not 'fp16'"),
    (["--checkpoint-every", "0"], "checkpoint_every is a number of steps, at least 1, not 0"),
    (["--eval-every", "-5"], "eval_every is a number of steps, at least 1, not -5"),
    (["--levels", "mse"], "--levels takes 'all' or comma-separated level indexes 0-15, not 'mse'"),
    (["--level-weights", "1,2"], "level_weights must be 16 numbers of at least 0, not all 0, one for each of the levels"),
    (["--levels", "0,1", "--level-weights=-1,2"], "level_weights must be 2 numbers of at least 0, not all 0, one "
                                                     "for each of the levels (0, 1), not (-1.0, 2.0)"),
    (["--levels", "0,1", "--level-weights", "0,nan"], "not (0.0, nan)"),
    (["--levels", "0,8", "--level-weights", "0,1", "--mse-share", "1"],
     "mse_share 1.0 gives none of the levels (0, 8) any steps with level_weights (0.0, 1.0)"),
    (["--level-weights", "high"], "--level-weights takes comma-separated numbers, one per level, not 'high'"),
])
def test_bad_training_settings_are_one_line(tmp_path, photos, arguments, message):
    result = subprocess.run([sys.executable, "-m", "caecodec.cli", "train", "--train-dir", str(photos), "--run-dir",
                             str(tmp_path / "run"), *TINY, *arguments], capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and not (tmp_path / "run" / "checkpoint.pt").exists()
    assert result.stderr.strip().count("\n") == 0
    assert message in result.stderr


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the spawned process through /proc (Linux)")
def test_data_parallel_run_whose_process_dies_stops_with_an_error_naming_it(tmp_path, photos):
    """Killing one process of a data-parallel run stops the other with an error, never a hang."""
    import signal
    import time
    from pathlib import Path

    leader = subprocess.Popen([sys.executable, "-m", "caecodec.cli", "train", "--train-dir", str(photos), "--run-dir",
                               str(tmp_path / "run"), "--steps", "100000", "--processes", "2", *TINY],
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def spawned_children():
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields, command = stat.read_text().rsplit(")", 1)[1].split(), (stat.parent / "cmdline").read_bytes()
            except OSError:  # a process that ended meanwhile
                continue
            if int(fields[1]) == leader.pid and b"spawn_main" in command and b"resource_tracker" not in command:
                yield int(stat.parent.name)

    while not (tmp_path / "run" / "steps.csv").exists() and leader.poll() is None:
        time.sleep(0.2)  # training has started in both processes
    children = list(spawned_children())
    assert len(children) == 1, children
    os.kill(children[0], signal.SIGKILL)
    _, stderr = leader.communicate(timeout=120)
    assert leader.returncode == 1
    assert f"data-parallel training stopped: process 1 exited with code {-signal.SIGKILL}" in stderr


def abort_in_second_process(replicas, after_finishing: bool) -> int:
    """A share of a data-parallel run whose second process dies by SIGABRT, before or after its last collective."""
    if not replicas.leader and after_finishing:
        torch.distributed.destroy_process_group = os.abort  # where CI saw it: teardown, after the last collective
    elif not replicas.leader:
        os.abort()
    replicas.mean([1.0])
    return replicas.rank


def test_a_process_failing_after_finishing_its_share_leaves_the_run_complete_with_a_warning():
    from caecodec import parallel

    with pytest.warns(RuntimeWarning, match=f"process 1 exited with code {-6} after finishing its share"):
        assert parallel.run(abort_in_second_process, 2, True) == 0


def test_a_process_failing_before_finishing_its_share_stops_the_run():
    from caecodec import parallel

    with pytest.raises(RuntimeError, match=f"data-parallel training stopped: process 1 exited with code {-6}"):
        parallel.run(abort_in_second_process, 2, False)


def test_schedule_change_on_resume_is_kept_and_logged(tmp_path, photos):
    """`--total-steps` given once stays the run's schedule (its checkpoint's recipe), and the change is an event."""
    run = tmp_path / "run"
    caecodec("train", "--train-dir", photos, "--run-dir", run, "--steps", 2, *TINY, cwd=tmp_path)
    caecodec("train", "--train-dir", photos, "--run-dir", run, "--steps", 1, "--total-steps", 40, *TINY, cwd=tmp_path)
    (run / "config.json").unlink()  # a record for people: the recipe comes from the checkpoint
    caecodec("train", "--train-dir", photos, "--run-dir", run, "--steps", 1, *TINY, cwd=tmp_path)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == 4 and checkpoint["config"]["total_steps"] == 40
    assert json.loads((run / "config.json").read_text())["total_steps"] == 40
    with (run / "events.csv").open() as handle:
        events = [row["event"] for row in csv.DictReader(handle)]
    assert events == ["resumed with changed settings {'total_steps': [100000, 40]}"]


def test_resume_keeps_the_runs_recipe_without_repeating_it(tmp_path, photos):
    """A run started with --n 8 --m 8 --batch 2 --levels 0,9 resumes from `--run-dir` alone, same recipe."""
    run = tmp_path / "run"
    recipe = ["--n", "8", "--m", "8", "--batch", "2", "--levels", "0,9", "--crop", "112"]
    common = ["--train-dir", photos, "--run-dir", run, "--threads", "1", "--quiet", "--kodak-dir", ""]
    caecodec("train", *common, "--steps", 2, *recipe, cwd=tmp_path)
    out = caecodec("train", *common, "--steps", 1, cwd=tmp_path)
    assert "step 3" in out
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert {k: checkpoint["config"][k] for k in ("n", "m", "batch", "crop")} == {"n": 8, "m": 8, "batch": 2, "crop": 112}
    assert tuple(checkpoint["config"]["levels"]) == (0, 9)
    with (run / "steps.csv").open() as handle:
        assert {int(row["level"]) for row in csv.DictReader(handle)} <= {0, 9}
    assert not (run / "events.csv").exists()  # nothing changed


def test_the_mse_share_decides_which_metric_is_trained(tmp_path, photos):
    run = tmp_path / "run"
    caecodec("train", "--train-dir", photos, "--run-dir", run, "--steps", 4, *TINY, "--levels", "0,8",
             "--mse-share", 1, cwd=tmp_path)
    with (run / "steps.csv").open() as handle:
        assert [int(row["level"]) for row in csv.DictReader(handle)] == [0] * 4
    for share, problem in ((1.5, "between 0 and 1, not 1.5"), (0, "gives none of the levels (0, 1) any steps")):
        result = subprocess.run([sys.executable, "-m", "caecodec.cli", "train", "--train-dir", str(photos), "--run-dir",
                                 str(tmp_path / "other"), "--steps", "1", *TINY, "--levels", "0,1", "--mse-share",
                                 str(share)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert result.returncode == 2 and problem in result.stderr


def test_level_weights_decide_which_levels_are_trained_and_are_kept_until_the_levels_change(tmp_path, photos):
    run = tmp_path / "run"

    def resume(steps, *arguments):
        caecodec("train", "--train-dir", photos, "--run-dir", run, "--steps", steps, *TINY, *arguments, cwd=tmp_path)
        with (run / "steps.csv").open() as handle:
            return [int(row["level"]) for row in csv.DictReader(handle)][-steps:]

    assert resume(4, "--levels", "0,1,8", "--level-weights", "0,1,0") == [1] * 4
    assert resume(3) == [1] * 3  # the run's weights, not repeated
    assert resume(3, "--level-weights", "1,0,0") == [0] * 3
    resume(1, "--levels", "0,1,8")  # new levels are trained alike
    assert torch.load(run / "checkpoint.pt", weights_only=False)["config"]["level_weights"] is None
    with (run / "events.csv").open() as handle:
        assert [row["event"] for row in csv.DictReader(handle)] == [
            "resumed with changed settings {'level_weights': [(0.0, 1.0, 0.0), (1.0, 0.0, 0.0)]}",
            "resumed with changed settings {'level_weights': [(1.0, 0.0, 0.0), None]}"]


def test_resume_with_another_architecture_names_both(tmp_path, photos):
    run = tmp_path / "run"
    caecodec("train", "--train-dir", photos, "--run-dir", run, "--steps", 1, *TINY, cwd=tmp_path)
    result = subprocess.run([sys.executable, "-m", "caecodec.cli", "train", "--train-dir", str(photos), "--run-dir",
                             str(run), "--steps", "1", "--n", "16", "--quiet", "--kodak-dir", ""],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"caecodec train: error: {run / 'checkpoint.pt'} holds a network with {{'n': 8, 'm': 8}}, "
        "not the n=16, m=8 this run was given"]


SPLITS = {  # option: (the run it splits, the new transform, the shared one it copies, the bundle's architecture,
    #                    a level coding with the new transform)
    "--metric-encoders": ([], "g_a_ms_ssim.", "g_a.", "an analysis transform per metric, a shared synthesis", 8),
    "--metric-decoders": (["--metric-encoders"], "g_s_ms_ssim.", "g_s.", "an analysis and a synthesis transform per metric", 8),
    "--high-rate-transforms": (["--metric-decoders"], "g_a_mse_high.", "g_a.",
                               "an analysis and a synthesis transform per metric and for mse q6-q8", 7),
}


def split_network(option: str) -> VariableRateFactorizedPrior:
    """The tiny network a run given `option` trains."""
    return VariableRateFactorizedPrior(8, 8, [1.0] * 16, True, option != "--metric-encoders",
                                       option == "--high-rate-transforms")


@pytest.mark.parametrize("option", list(SPLITS))
def test_a_run_splits_a_transform_per_metric_and_resumes_exactly(tmp_path, photos, option):
    """`--metric-encoders` on a shared-encoder run (`--metric-decoders` on one with an encoder per metric) gives the
    ms-ssim levels a copy of the shared transform, with its Adam moments, keeps every other parameter's moments, logs
    the change, trains the two apart, and resumes exactly; the bundle stores both and each level codes with its own."""
    source_options, own, shared, architecture, own_level = SPLITS[option]
    common = ["--train-dir", photos, *TINY, "--levels", f"0,{own_level}"]
    source = tmp_path / "source"
    caecodec("train", *common, *source_options, "--run-dir", source, "--steps", 3, cwd=tmp_path)
    for name in ("straight", "resumed"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "checkpoint.pt").write_bytes((source / "checkpoint.pt").read_bytes())
    caecodec("train", *common, "--run-dir", tmp_path / "resumed", "--steps", 0, option, cwd=tmp_path)
    checkpoint = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    state, moments = checkpoint["model"], checkpoint["optimizer"]["state"]
    names = [k for k in state if k.startswith(shared)]
    assert all(torch.equal(state[k], state[k.replace(shared, own, 1)]) for k in names)
    order = [n for n, _ in split_network(option).named_parameters() if "quantiles" not in n]
    assert torch.equal(moments[order.index(f"{own}2.weight")]["exp_avg_sq"],
                       moments[order.index(f"{shared}2.weight")]["exp_avg_sq"])
    kept = torch.load(source / "checkpoint.pt", weights_only=False)["optimizer"]["state"]
    assert all(torch.equal(moments[i][k], kept[i][k]) for i in kept for k in kept[i])
    caecodec("train", *common, "--run-dir", tmp_path / "resumed", "--steps", 3, cwd=tmp_path)  # the run's own now
    caecodec("train", *common, "--run-dir", tmp_path / "straight", "--steps", 3, option, cwd=tmp_path)
    straight, resumed = model_state(tmp_path / "straight"), model_state(tmp_path / "resumed")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert not torch.equal(resumed[f"{shared}0.weight"], resumed[f"{own}0.weight"])
    setting = option[2:].replace("-", "_")
    with (tmp_path / "straight" / "events.csv").open() as handle:
        assert [row["event"] for row in csv.DictReader(handle)] == [
            f"resumed with changed settings {{'{setting}': [False, True]}}"]
    _, card, tensors = export(tmp_path / "straight", 9, tmp_path)
    assert tensors[f"{own}0.weight"].dtype == torch.float16
    model = weights.variable_rate_from_tensors(tensors, 8, 8)
    transform, unfolded = shared.rstrip("."), 0 if shared == "g_a." else -1  # a layer the gains are not folded into
    assert torch.equal(getattr(model.export(own_level), transform)[unfolded].weight,
                       getattr(model, own.rstrip("."))[unfolded].weight)
    assert torch.equal(getattr(model.export(0), transform)[unfolded].weight, getattr(model, transform)[unfolded].weight)
    assert card["architecture"].startswith(f"variable-rate factorized prior ({architecture},")


def test_a_run_chooses_the_levels_its_high_rate_transforms_serve(tmp_path, photos):
    """A checkpoint written before the choice existed (no levels in its state or recipe) resumes serving q6-q8;
    `--high-rate-levels` then moves q5 onto the high pair as a logged recipe change, and the bundle carries the
    levels, so the decoder codes q5 with the high pair and q4 with the shared transforms. Levels that are not mse
    levels are refused by name."""
    run = tmp_path / "run"
    common = ["train", "--train-dir", photos, "--run-dir", run, *TINY, "--levels", "3,4,6"]
    caecodec(*common, "--steps", 2, "--high-rate-transforms", cwd=tmp_path)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert checkpoint["model"]["high_rate_levels"].tolist() == [5, 6, 7]
    del checkpoint["model"]["high_rate_levels"], checkpoint["config"]["high_rate_levels"]
    torch.save(checkpoint, run / "checkpoint.pt")
    caecodec(*common, "--steps", 1, cwd=tmp_path)
    assert model_state(run)["high_rate_levels"].tolist() == [5, 6, 7]
    caecodec(*common, "--steps", 2, "--high-rate-levels", "4,5,6,7", cwd=tmp_path)
    caecodec(*common, "--steps", 1, cwd=tmp_path)  # the run's own now
    with (run / "events.csv").open() as handle:
        assert [row["event"] for row in csv.DictReader(handle)] == [
            "resumed with changed settings {'high_rate_levels': [(5, 6, 7), (4, 5, 6, 7)]}"]
    _, card, tensors = export(run, 9, tmp_path)
    assert tensors["high_rate_levels"].tolist() == [4, 5, 6, 7]
    assert "and for mse q5-q8" in card["architecture"]
    model = weights.variable_rate_from_tensors(tensors, 8, 8)
    assert torch.equal(model.export(4).g_a[0].weight, model.g_a_mse_high[0].weight)
    assert torch.equal(model.export(3).g_a[0].weight, model.g_a[0].weight)
    assert not torch.equal(model.g_a[0].weight, model.g_a_mse_high[0].weight)
    refused = subprocess.run([sys.executable, "-m", "caecodec.cli", *map(str, common), "--steps", "1",
                              "--high-rate-levels", "7,9"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "caecodec train: error: high_rate_levels must be distinct mse level indexes 0-7, not (7, 9)"]


def test_a_run_with_metric_encoders_cannot_merge_them(tmp_path, photos):
    run = tmp_path / "run"
    caecodec("train", "--train-dir", photos, "--run-dir", run, "--steps", 1, *TINY, "--metric-encoders", cwd=tmp_path)
    trainer = Trainer(TrainingConfig(train_dir=str(photos), run_dir=str(run), **TINY_CONFIG))
    with pytest.raises(ValueError, match="holds g_a_ms_ssim, transforms of some levels' own, which this run was not given: a run cannot merge"):
        trainer.resume()


def test_a_run_without_state_starts_from_the_newest_bundle(tmp_path, photos):
    """Run state lost (a new machine): the run starts from the newest bundled weights, at their step."""
    run = tmp_path / "run"
    caecodec("train", "--train-dir", photos, "--run-dir", run, "--steps", 0, "--threads", "1", "--quiet",
             "--kodak-dir", "", cwd=tmp_path)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    version = weights.latest_version()
    assert checkpoint["step"] == weights.version_card(version)["steps"]
    bundled = {k: v for k, v in weights._variable_rate_model(version).state_dict().items()
               if not k.endswith(EntropyBottleneck.TABLES)}
    assert all(torch.equal(checkpoint["model"][k], bundled[k]) for k in bundled)


@pytest.mark.parametrize("option", list(SPLITS))
def test_a_transform_per_metric_from_a_bundle_that_shares_it_starts_both_from_it(tmp_path, photos, option):
    """Run state lost, and a transform per metric asked of bundled weights that share it: both copies start from it."""
    source_options, own, shared, _, own_level = SPLITS[option]
    run = tmp_path / "run"
    caecodec("train", "--train-dir", photos, *TINY, "--levels", f"0,{own_level}", *source_options, "--run-dir", run,
             "--steps", 2, cwd=tmp_path)
    bundled = weights.variable_rate_from_tensors(export(run, 9, tmp_path)[2], 8, 8)
    trainer = Trainer(TrainingConfig(train_dir="", run_dir=str(tmp_path / "new"), **TINY_CONFIG, metric_encoders=True,
                                     metric_decoders=option != "--metric-encoders",
                                     high_rate_transforms=option == "--high-rate-transforms"))
    trainer.start_from(bundled, 2)
    expected = getattr(bundled, shared.rstrip(".")).state_dict()
    for name in (shared, own):
        state = getattr(trainer.model, name.rstrip(".")).state_dict()
        assert state.keys() == expected.keys(), name
        assert all(torch.equal(state[k], expected[k]) for k in expected), f"{name} is not the bundle's {shared}"
    assert trainer.step == trainer.warmup_start == 2


def test_a_restart_warms_up_to_the_schedules_rate_not_the_peak():
    config = TrainingConfig(train_dir="", run_dir="", total_steps=70_000)
    start = 60_000
    ramp = [config.lr(step, start) for step in range(start, start + config.warmup_steps)]
    assert ramp == sorted(ramp) and ramp[-1] == config.lr(start + config.warmup_steps - 1)
    assert max(ramp) < config.peak_lr / 4
    assert config.lr(0) == config.peak_lr / config.warmup_steps and config.lr(config.warmup_steps - 1) == config.peak_lr


def test_snapshots_keep_the_checkpoints_on_the_grid_and_survive_the_next_ones(tmp_path, photos):
    """--snapshots keeps the checkpoints of steps 2, 4, 6, not the stop at step 5, each as it was written."""
    run, snapshots = tmp_path / "run", tmp_path / "snapshots"
    train = ["train", "--train-dir", photos, "--run-dir", run, "--snapshots", snapshots, *TINY]
    caecodec(*train, "--steps", 5, "--checkpoint-every", 2, cwd=tmp_path)
    caecodec(*train, "--steps", 1, cwd=tmp_path)  # the grid is the run's own
    kept = sorted(snapshots.iterdir())
    assert [path.name for path in kept] == ["step-0000002.pt", "step-0000004.pt", "step-0000006.pt"]
    states = [torch.load(path, weights_only=False) for path in kept]
    assert [state["step"] for state in states] == [2, 4, 6]
    assert all(torch.equal(states[-1]["model"][k], v) for k, v in model_state(run).items())
    assert not torch.equal(states[0]["model"]["log_gain"], states[1]["model"]["log_gain"])


def test_an_average_of_checkpoints_exports_with_its_steps_on_the_card(tmp_path, photos):
    """benchmarks/checkpoint_average.py: the mean of a run's snapshots is a checkpoint that exports like a run's."""
    run = tmp_path / "run"
    caecodec("train", "--train-dir", photos, "--run-dir", run, "--snapshots", tmp_path / "snapshots", "--steps", 4,
             "--checkpoint-every", 2, *TINY, cwd=tmp_path)
    snapshots = sorted((tmp_path / "snapshots").iterdir())
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "checkpoint_average.py"
    average = [sys.executable, script, tmp_path / "average", *snapshots, "--every", "2"]
    missing = subprocess.run([*average, "--last", "3"], capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode != 0 and "no snapshot of steps [0]; snapshots hold steps [2, 4]" in missing.stderr
    subprocess.run([*average, "--last", "2"], check=True, capture_output=True, cwd=tmp_path)
    _, card, tensors = export(tmp_path / "average", 9, tmp_path)
    assert card["steps"] == 4 and card["recipe"]["averaged_steps"] == [2, 4]
    gains = [torch.load(path, weights_only=False)["model"]["log_gain"] for path in snapshots]
    assert not torch.equal(*gains)
    torch.testing.assert_close(tensors["log_gain"], (gains[0] + gains[1]) / 2)


def test_a_checkpoint_measured_now_gives_the_run_s_own_validation(tmp_path, photos):
    """benchmarks/validation_bdrate.py --checkpoint measures a checkpoint as the run's validation did at its step."""
    run = tmp_path / "run"
    caecodec("train", "--train-dir", photos, "--run-dir", run, "--steps", 2, *TINY[:-2], "--kodak-dir", photos,
             "--eval-every", 2, cwd=tmp_path)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "validation_bdrate.py"

    def lines(*options):
        out = subprocess.run([sys.executable, script, run, "--kodak", photos, *options], check=True,
                             capture_output=True, text=True, cwd=tmp_path, timeout=600).stdout
        return out.splitlines()[1:]  # after JPEG's points

    missing = subprocess.run([sys.executable, script, tmp_path, "--checkpoint"], capture_output=True, text=True)
    assert missing.returncode == 2 and f"{tmp_path} has no checkpoint.pt to measure" in missing.stderr
    logged, measured = lines(), lines("--checkpoint")
    assert lines("--metrics", "ms-ssim,mse") == logged  # both metrics, in any order, need no checkpoint
    assert len(logged) == len(measured) == 3 and logged[0].startswith("run step 2: BD-rate vs JPEG")
    assert measured == logged and len(re.findall(r" \d+\.\d{4}/\d+\.\d{4}", logged[0])) == 16  # every level
    def mse_part(line):  # the mse BD-rate and the mse levels' points
        return re.search(r"mse (\S+ %|n/a)", line).group(1), line.split("bpp/PSNR")[1].split("; bpp/MS-SSIM")[0]

    mse_only = lines("--checkpoint", "--metrics", "mse")[0]
    assert mse_part(mse_only) == mse_part(logged[0]) and "ms-ssim n/a" in mse_only
    assert len(re.findall(r" \d+\.\d{4}/\d+\.\d{4}", mse_only)) == 8
    for options, error in ((["--refine", "2"], "they need --checkpoint"), (["--metrics", "mse"], "they need --checkpoint"),
                           (["--checkpoint", "--refine", "-3"], "not -3")):
        refused = subprocess.run([sys.executable, script, run, *options], capture_output=True, text=True)
        assert refused.returncode == 2 and error in refused.stderr


def test_each_mse_level_is_set_beside_jpeg_by_its_objective_and_at_its_rate(tmp_path, photos):
    """validation_bdrate.py gives under each step every mse level's λ·255²·MSE + bpp, from the PSNR and bpp it
    prints, and the least of that over JPEG's points at the level's λ (the issue's λ, not caecodec's table); then the
    level's PSNR minus JPEG's at the level's rate, JPEG's points interpolated over log rate (n/a outside them)."""
    lambdas = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)
    run = tmp_path / "run"
    caecodec("train", "--train-dir", photos, "--run-dir", run, "--steps", 2, *TINY[:-2], "--kodak-dir", photos,
             "--eval-every", 2, cwd=tmp_path)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "validation_bdrate.py"
    header, measured, objectives, differences = subprocess.run(
        [sys.executable, script, run, "--kodak", photos], check=True, capture_output=True, text=True,
        timeout=600).stdout.splitlines()
    jpeg = [(float(b), float(p)) for b, p in re.findall(r"(\d+\.\d{3}) / (\d+\.\d{2})", header)]
    levels = re.findall(r" (\d+\.\d{4})/(\d+\.\d{4})", measured.split("; bpp/MS-SSIM")[0])
    found = re.findall(r"q(\d) (\d+\.\d{3})/(\d+\.\d{3})", objectives)
    assert len(jpeg) == 6 and [int(q) for q, _, _ in found] == list(range(1, 9)) and len(levels) == 8
    for lam, (bpp, psnr), (_, own, least) in zip(lambdas, levels, found):
        assert float(own) == pytest.approx(lam * 255**2 * 10 ** (-float(psnr) / 10) + float(bpp), rel=1e-4, abs=1e-3)
        jpeg_least = min(lam * 255**2 * 10 ** (-p / 10) + b for b, p in jpeg)
        assert float(least) == pytest.approx(jpeg_least, rel=3e-3)  # JPEG's PSNRs printed to 0.01 dB
    from scipy.interpolate import PchipInterpolator

    jpeg_at = PchipInterpolator(np.log10([b for b, _ in jpeg]), [p for _, p in jpeg])
    found = re.findall(r"q(\d) (n/a|[+-]\d+\.\d{2})", differences)
    assert differences.startswith("  mse PSNR − JPEG's at the same rate (dB): ")
    assert [int(q) for q, _ in found] == list(range(1, 9))
    for (bpp, psnr), (_, difference) in zip(levels, found):
        inside = jpeg[0][0] <= float(bpp) <= jpeg[-1][0]
        expected = float(psnr) - float(jpeg_at(np.log10(float(bpp)))) if inside else None
        assert (difference == "n/a") if expected is None else float(difference) == pytest.approx(expected, abs=0.03)
    # the tiny run's levels lie outside JPEG's rates, so set levels inside them against the same JPEG curve
    spec = importlib.util.spec_from_file_location("validation_bdrate", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    curve = {"bpp": [b for b, _ in jpeg], "psnr": [p for _, p in jpeg]}
    between = np.sqrt(jpeg[1][0] * jpeg[2][0])
    rows = [{"metric": "mse", "quality": "1", "bpp": jpeg[0][0] / 2, "psnr": 40.0},
            {"metric": "mse", "quality": "2", "bpp": jpeg[1][0], "psnr": jpeg[1][1] + 0.5},
            {"metric": "mse", "quality": "3", "bpp": between, "psnr": float(jpeg_at(np.log10(between))) - 0.25}]
    assert module.against_jpeg_text(curve, rows) == "q1 n/a q2 +0.50 q3 -0.25"


def test_a_graft_takes_the_high_mse_levels_from_one_run_and_the_rest_from_another(tmp_path, photos):
    """benchmarks/high_rate_graft.py: a branch that trained only mse q6-q8 on their own transforms gives those levels
    to the run it branched from, which went on training the rest; the graft exports with both steps on its card."""
    common = ["--train-dir", photos, *TINY, "--metric-decoders"]
    base, donor = tmp_path / "base", tmp_path / "donor"
    caecodec("train", *common, "--run-dir", base, "--steps", 2, "--levels", "0,6", cwd=tmp_path)
    donor.mkdir()
    (donor / "checkpoint.pt").write_bytes((base / "checkpoint.pt").read_bytes())
    caecodec("train", *common, "--run-dir", donor, "--steps", 2, "--levels", "6", "--high-rate-transforms", cwd=tmp_path)
    caecodec("train", *common, "--run-dir", base, "--steps", 2, cwd=tmp_path)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "high_rate_graft.py"
    refused = subprocess.run([sys.executable, script, tmp_path / "graft", donor, base], capture_output=True, text=True)
    assert refused.returncode != 0 and "the donor has no transforms of high mse levels' own" in refused.stderr
    subprocess.run([sys.executable, script, tmp_path / "graft", base, donor], check=True, capture_output=True)
    _, card, tensors = export(tmp_path / "graft", 9, tmp_path, density_iterations=0, synthesis_steps=0)
    assert card["steps"] == 4 and card["recipe"]["graft"] == {"levels": [5, 6, 7], "step": 4, "averaged_steps": None}
    assert "and for mse q6-q8" in card["architecture"]
    from_base, from_donor = model_state(base), model_state(donor)
    assert not torch.equal(from_base["g_a.0.weight"], from_donor["g_a.0.weight"])  # the base trained on after the branch
    for name, tensor in tensors.items():
        source = from_donor if name.startswith(("g_a_mse_high.", "g_s_mse_high.", "entropy_bottlenecks.6.")) else from_base
        if name in ("log_gain", "log_inverse_gain"):
            rows = [5, 6, 7]
            torch.testing.assert_close(tensor[rows], from_donor[name][rows])
            torch.testing.assert_close(tensor[:5], from_base[name][:5])
        elif tensor.is_floating_point() and "quantiles" not in name:
            torch.testing.assert_close(tensor.float(), source[name], atol=1e-3, rtol=1e-3)  # transforms in fp16


def test_reviving_a_run_restarts_only_the_dead_channels_of_one_transform_and_trains_on(tmp_path, photos):
    """benchmarks/revive_channels.py: channels of the high pair (or of the transform that --levels names, all its
    levels) whose analysis output is flat get fresh filters (the amplitude asked for, in living channels' lengths),
    zero synthesis weights and Adam moments of the usual size; nothing else changes, and the revived run resumes.
    At --closed levels the revived channels stay shut: gains e^-12 and a density with all its mass on zero; with
    --synthesis-steps the revived transform's synthesis first learns to read them, and only it; --moments-from
    lends another run's Adam second moments; --distortion-steps turns the revived filters (their lengths held) and
    trains the synthesis by the distortion term alone. benchmarks/channel_spread.py finds the same dead channels."""
    common = ["--train-dir", photos, *TINY, "--metric-decoders"]
    source, revived = tmp_path / "source", tmp_path / "revived"
    caecodec("train", *common, "--run-dir", source, "--steps", 3, "--levels", "6,7", "--high-rate-transforms", cwd=tmp_path)
    state = torch.load(source / "checkpoint.pt", weights_only=False)
    for name in ("g_a.6.weight", "g_a.6.bias"):  # 3 steps leave q1-q5's untrained filters too short to carry anything
        state["model"][name] = 3 * state["model"][name.replace("g_a.", "g_a_mse_high.")]
    killed = [0, 1, 2]  # as dead as version 21's: these channels' analysis output does not vary
    for name in ("g_a_mse_high.6.weight", "g_a_mse_high.6.bias", "g_a.6.weight", "g_a.6.bias"):
        state["model"][name][killed] = 0
    torch.save(state, source / "checkpoint.pt")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "revive_channels.py"
    out = subprocess.run([sys.executable, script, revived, source, "--amplitude", "0.5"], capture_output=True,
                         text=True, check=True).stdout
    before, after = state["model"], model_state(revived)
    filters = after["g_a_mse_high.6.weight"].flatten(1).norm(dim=1)
    changed = (before["g_a_mse_high.6.weight"] != after["g_a_mse_high.6.weight"]).flatten(1).any(dim=1)
    assert set(killed) <= set(changed.nonzero().flatten().tolist())
    assert f"revived {int(changed.sum())} dead latent channels of the transform of levels 5,6,7 at amplitude 0.5" in out
    torch.testing.assert_close(filters[changed], 0.5 * filters[~changed].median().expand(int(changed.sum())))
    assert not after["g_s_mse_high.0.weight"][changed].any()
    high = ("g_a_mse_high.6.", "g_s_mse_high.0.weight", "entropy_bottlenecks.5.", "entropy_bottlenecks.6.",
            "entropy_bottlenecks.7.", "log_gain", "log_inverse_gain")
    assert all(torch.equal(before[name], after[name]) for name in before if not name.startswith(high))
    assert all(torch.equal(after[name][:5], before[name][:5]) for name in ("log_gain", "log_inverse_gain"))
    moments = torch.load(revived / "checkpoint.pt", weights_only=False)["optimizer"]["state"]
    names = [name for name, _ in main_parameters(load_checkpoint_model(revived)[0])]
    revived_filters = moments[names.index("g_a_mse_high.6.weight")]
    assert not revived_filters["exp_avg"][changed].any() and (revived_filters["exp_avg_sq"][changed] > 0).all()
    refused = subprocess.run([sys.executable, script, revived, source], capture_output=True, text=True)
    assert refused.returncode != 0 and "exists: revive into a new run directory" in refused.stderr
    low = tmp_path / "low"  # the mse transform of q1-q5 shares no level with the high pair
    refused = subprocess.run([sys.executable, script, low, source, "--levels", "3,4"], capture_output=True, text=True)
    assert refused.returncode != 0 and "serves levels 0,1,2,3,4; revive all of them and no others" in refused.stderr
    subprocess.run([sys.executable, script, low, source, "--levels", "0,1,2,3,4"], capture_output=True, check=True)
    after_low = model_state(low)
    changed_low = (before["g_a.6.weight"] != after_low["g_a.6.weight"]).flatten(1).any(dim=1)
    assert set(killed) <= set(changed_low.nonzero().flatten().tolist())
    assert all(torch.equal(before[name], after_low[name]) for name in before if name.startswith(high[:-2]))
    assert all(torch.equal(after_low[name][5:], before[name][5:]) for name in ("log_gain", "log_inverse_gain"))
    closed = tmp_path / "closed"  # shut at q6 (level 5): no bits there, nothing for the synthesis
    refused = subprocess.run([sys.executable, script, closed, source, "--closed", "5,6,7"], capture_output=True,
                             text=True)
    assert refused.returncode != 0 and "the closed levels must be some of --levels 5,6,7, not all" in refused.stderr
    out = subprocess.run([sys.executable, script, closed, source, "--amplitude", "0.5", "--closed", "5",
                          "--widen", "4", "--synthesis-steps", "3"],
                         capture_output=True, text=True, check=True).stdout
    assert "shut at levels 5, their densities widened 4 times, the synthesis fitted to them in 3 steps" in out
    after_closed, model = model_state(closed), load_checkpoint_model(closed)[0]
    assert after_closed["g_s_mse_high.0.weight"][changed].any()  # the synthesis of the revived pair reads them
    for name in before:  # and nothing else trained
        if name.startswith(("g_a", "g_s.", "g_s_ms_ssim.")):
            assert torch.equal(after_closed[name], after[name] if name.startswith("g_a_mse_high.") else before[name])
    for name in ("log_gain", "log_inverse_gain"):
        assert (after_closed[name][5, changed] == -12).all() and (after_closed[name][6:, changed] > -12).all()
    shut, widened = model.entropy_bottlenecks[5], model.entropy_bottlenecks[6]
    lender = load_checkpoint_model(source)[0].entropy_bottlenecks[6]
    with torch.no_grad():
        assert (shut.medians[changed] == 0).all() and (shut._likelihood(torch.zeros(8, 1, 1))[0][changed] > 0.999).all()
        assert (widened.medians[changed] == 0).all()  # open levels: a living channel's density, 4 times as wide
        spread = widened.quantiles[changed, 0, 2] - widened.quantiles[changed, 0, 0]
        living = lender.quantiles[~changed, 0, 2] - lender.quantiles[~changed, 0, 0]
        assert all(torch.isclose(width / 4, living, rtol=1e-4).any() for width in spread)
    taught = tmp_path / "taught"  # the revived filters turned by the distortion term alone, their lengths held
    out = subprocess.run([sys.executable, script, taught, source, "--amplitude", "0.5", "--distortion-steps", "3"],
                         capture_output=True, text=True, check=True).stdout
    assert "taught by the distortion term alone in 3 steps" in out
    after_taught = model_state(taught)
    turned, untouched = after_taught["g_a_mse_high.6.weight"], after["g_a_mse_high.6.weight"]
    assert (turned[changed] != untouched[changed]).flatten(1).any(dim=1).all()
    assert torch.equal(turned[~changed], untouched[~changed])
    torch.testing.assert_close(turned[changed].flatten(1).norm(dim=1), untouched[changed].flatten(1).norm(dim=1))
    assert after_taught["g_s_mse_high.0.weight"][changed].any()
    for name in before:  # the rest of the analysis, and the densities, as the revival left them
        if name.startswith(("g_a", "entropy_bottlenecks.", "log_gain")) and name != "g_a_mse_high.6.weight":
            assert torch.equal(after_taught[name], after[name]), name
    probe = script.with_name("channel_spread.py")  # finds the same dead channels, and sees them shut at level 5
    out = subprocess.run([sys.executable, probe, source, closed / "checkpoint.pt", "--levels", "5,6,7"],
                         capture_output=True, text=True, check=True).stdout
    assert f"{source}: {int(changed.sum())} of {len(changed)} channels dead" in out
    assert "level 5: revived 0.000 median, 0.000 largest, 0 over half a bin" in out
    lent = tmp_path / "lent"  # Adam's second moments from another run of the network, no momentum
    subprocess.run([sys.executable, script, lent, source, "--amplitude", "0.5", "--moments-from", revived], check=True,
                   capture_output=True)
    borrowed = torch.load(lent / "checkpoint.pt", weights_only=False)["optimizer"]["state"]
    lender = torch.load(revived / "checkpoint.pt", weights_only=False)["optimizer"]["state"]
    assert borrowed.keys() == lender.keys() and not any(borrowed[index]["exp_avg"].any() for index in borrowed)
    index = names.index("g_a_mse_high.6.weight")
    assert torch.equal(borrowed[index]["exp_avg_sq"], lender[index]["exp_avg_sq"])
    caecodec("train", *common, "--run-dir", revived, "--steps", 2, "--levels", "6,7", cwd=tmp_path)
    assert torch.load(revived / "checkpoint.pt", weights_only=False)["step"] == 5
    assert "revived" in (revived / "events.csv").read_text()
