"""The model is CompressAI's FactorizedPrior: parity with CompressAI's own saved outputs, all key namings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caecodec import coding
from caecodec.checkpoints import factorized_prior_from_state_dict, normalize_keys, read_state_dict
from caecodec.compression import to_tensor
from caecodec.models import VariableRateFactorizedPrior

from conftest import TINY_CHECKPOINT

CHECKPOINTS = ["factorized_N32_M48.pth.tar", "factorized_N32_M48_legacy_names.pth.tar"]
REFERENCES = ["reference_a.npz", "reference_b.npz"]


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
@pytest.mark.parametrize("reference", REFERENCES)
def test_parity_with_compressai(reference_dir, checkpoint, reference):
    model = factorized_prior_from_state_dict(read_state_dict(reference_dir / checkpoint))
    assert (model.n, model.m) == (32, 48)  # inferred from the weight shapes
    saved = np.load(reference_dir / reference)
    assert str(saved["pad_mode"]) == "replicate"
    height, width = saved["input_uint8"].shape[:2]
    with torch.no_grad():
        x = to_tensor(saved["input_uint8"][None])
        y = model.g_a(x)
        y_hat, likelihoods = model.entropy_bottleneck(y)
        x_hat = model.g_s(y_hat).clamp(0, 1)
        forward = model(x)["x_hat"]
    for ours, key in [(y, "y"), (y_hat, "y_hat"), (likelihoods, "likelihoods"), (x_hat, "x_hat_from_y_hat"),
                      (forward, "x_hat_forward")]:
        np.testing.assert_allclose(ours[0].numpy(), saved[key], atol=1e-4, err_msg=key)
    assert x_hat.shape[-2:] == (height + (-height) % 16, width + (-width) % 16)


@pytest.mark.parametrize("reference", REFERENCES)
def test_coded_size_matches_compressai_rans(reference_dir, reference):
    model = factorized_prior_from_state_dict(read_state_dict(reference_dir / CHECKPOINTS[0]))
    saved = np.load(reference_dir / reference)
    tables = model.entropy_bottleneck.cdf_tables()
    symbols = np.round(saved["y"][None] - tables.medians[None, :, None, None]).astype(np.int32)
    words, escapes = coding.encode(symbols, tables)
    coded = words.nbytes + len(escapes)
    # CompressAI's rANS: 328 and 484 bytes; theoretical 321.8 and 479.2
    assert coded <= len(saved["compressai_bytes"])
    assert coded <= 1.03 * float(saved["theoretical_bits"]) / 8 + 4
    np.testing.assert_array_equal(coding.decode(words, escapes, symbols.shape, tables), symbols)


def test_three_density_namings_load_the_same_model(reference_dir):
    state = normalize_keys(read_state_dict(reference_dir / CHECKPOINTS[0]))
    legacy = read_state_dict(reference_dir / CHECKPOINTS[1])
    oldest = {}
    for key, value in state.items():
        for plural, singular in (("matrices", "matrix"), ("biases", "bias"), ("factors", "factor")):
            prefix = f"entropy_bottleneck.{plural}."
            if key.startswith(prefix):
                key = f"entropy_bottleneck._{singular}{key[len(prefix):]}"
        oldest[key] = value
    assert any(k.startswith("entropy_bottleneck._matrix0") for k in oldest)
    reference = factorized_prior_from_state_dict(state).state_dict()
    for variant in (legacy, oldest):
        loaded = factorized_prior_from_state_dict(variant).state_dict()
        assert loaded.keys() == reference.keys()
        assert all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_checkpoint_without_constant_buffers_loads(reference_dir):
    state = {k: v for k, v in read_state_dict(reference_dir / CHECKPOINTS[0]).items()
             if not k.endswith(("pedestal", "lower_bound.bound"))}
    model = factorized_prior_from_state_dict(state)
    assert model.entropy_bottleneck.cdf_tables().channels == 48


def test_our_tables_are_close_to_compressais(reference_dir):
    model = factorized_prior_from_state_dict(read_state_dict(reference_dir / CHECKPOINTS[0]))
    stored = model.entropy_bottleneck.cdf_tables()
    rebuilt = model.entropy_bottleneck.update()
    np.testing.assert_array_equal(stored.offset, rebuilt.offset)
    np.testing.assert_array_equal(stored.cdf_length, rebuilt.cdf_length)
    assert np.abs(stored.quantized_cdf.astype(int) - rebuilt.quantized_cdf).max() <= 2


def test_wrong_checkpoints_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not a FactorizedPrior checkpoint"):
        factorized_prior_from_state_dict({"conv.weight": torch.zeros(1)})
    state = read_state_dict(TINY_CHECKPOINT)
    state["g_s.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="g_s.0.weight: expected shape"):
        factorized_prior_from_state_dict(state)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        read_state_dict(junk)


def test_exported_level_computes_the_variable_rate_network():
    torch.manual_seed(0)
    network = VariableRateFactorizedPrior(8, 12, [0.5, 2.0]).eval()
    with torch.no_grad():
        network.log_gain.add_(torch.randn_like(network.log_gain) * 0.1)
        x = torch.rand(1, 3, 32, 48)
        for level in range(2):
            exported = network.export(level)
            np.testing.assert_allclose(exported(x)["x_hat"].numpy(), network(x, level)["x_hat"].numpy(), atol=1e-5)


def test_under_bfloat16_autocast_only_the_transforms_round():
    """Mixed-precision training: the density and its likelihoods (the rate) stay float32."""
    torch.manual_seed(0)
    network = VariableRateFactorizedPrior(8, 12, [0.5, 2.0]).eval()
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = network(x, 1)
    with torch.no_grad():
        assert mixed["y"].dtype == mixed["x_hat"].dtype == mixed["likelihoods"]["y"].dtype == torch.float32
        gained = mixed["y"] * torch.exp(network.log_gain[1])[None, :, None, None]
        _, likelihoods = network.entropy_bottlenecks[1](gained)
        assert torch.equal(mixed["likelihoods"]["y"], likelihoods)
        assert not torch.equal(mixed["y"], network(x, 1)["y"])  # the analysis did run in bfloat16


def test_a_bin_centred_on_a_symmetric_density_keeps_its_mass():
    """With zero biases the density's cumulative logits are an odd function: the bin around 0 has
    lower + upper == 0 exactly. It must get its probability (CompressAI's sign trick gives it none, and the
    table built from that codes the channel's commonest symbol at 16 bits, seen in version 8's first export)."""
    from caecodec.entropy_models import EntropyBottleneck

    density = EntropyBottleneck(1)
    with torch.no_grad():
        for bias in density.biases:
            bias.zero_()
        for matrix in density.matrices:
            matrix.fill_(2.0)  # a steep cumulative: most of the mass within half a bin of the median
        density.quantiles.copy_(torch.tensor([[[-2.0, 0.0, 2.0]]]))
    likelihood, lower, upper = density._likelihood(torch.tensor([[[0.0]]]), stop_gradient=True)
    assert float(lower + upper) == 0.0
    assert float(likelihood) == pytest.approx(float(torch.sigmoid(upper) - torch.sigmoid(lower)))
    tables = density.update()
    widths = np.diff(tables.quantized_cdf[0, : tables.cdf_length[0]])
    assert widths.argmax() == -tables.offset[0], f"the median's symbol has {widths} of the table"


def test_placed_quantiles_are_where_the_aux_loss_wants_them_however_far_off_they_start():
    """Bisection puts a trained density's tails where its cumulative's logits reach -target and +target, from its
    own quantiles or from tails ten times as wide (where Adam left version 22's), and keeps the medians unless
    asked; with them, the median is where the logits reach 0."""
    import copy

    from caecodec import weights

    trained = weights._variable_rate_model(weights.latest_version()).entropy_bottlenecks[7]  # mse q8
    placed, widened = copy.deepcopy(trained), copy.deepcopy(trained)
    with torch.no_grad():
        medians = trained.quantiles[:, :, 1:2]
        widened.quantiles.copy_(medians + 10 * (trained.quantiles - medians))
    for density in (placed, widened):
        density.place_quantiles(medians=False)
        assert torch.equal(density.medians, trained.medians)
        logits = density._logits_cumulative(density.quantiles, stop_gradient=True)[:, 0, :]
        torch.testing.assert_close(logits[:, [0, 2]], density.target[[0, 2]].expand(len(logits), 2), atol=1e-3,
                                   rtol=0)
    torch.testing.assert_close(widened.quantiles, placed.quantiles, atol=1e-4, rtol=0)
    assert float(widened.loss().detach()) < 0.1
    widened.place_quantiles()
    logits = widened._logits_cumulative(widened.quantiles.detach(), stop_gradient=True)[:, 0, 1]
    assert float(logits.abs().max()) < 1e-3 and float((widened.medians - trained.medians).abs().max()) < 1e-3


def test_a_density_whose_cumulative_never_reaches_its_tail_is_named():
    from caecodec.entropy_models import EntropyBottleneck

    density = EntropyBottleneck(2)
    with torch.no_grad():
        density.matrices[0][1].fill_(-200.0)  # softplus(-200) ~ 1e-87: channel 1's cumulative is flat
    with pytest.raises(ValueError, match=r"density channel 1: its cumulative does not reach logits"):
        density.place_quantiles()


def test_packed_cdf_tables_unpack_to_the_padded_tables_of_a_bundle_that_stores_them_padded():
    """Bundles up to version 21 store each density's CDF table zero-padded; packing keeps only its rows'
    entries, and unpacking gives back every table bit for bit."""
    from safetensors.torch import load_file

    from caecodec import weights

    padded = load_file(weights.BUNDLE_DIR / "v21.safetensors")
    packed = weights.packed_cdf_tables(padded)
    assert not any(name.endswith("._quantized_cdf") for name in packed)
    tables = [name for name in padded if name.endswith("._quantized_cdf")]
    assert sum(packed[name + "_packed"].numel() for name in tables) < 0.1 * sum(padded[name].numel() for name in tables)
    unpacked = weights.unpacked_cdf_tables(packed)
    assert unpacked.keys() == padded.keys() and all(torch.equal(unpacked[name], padded[name]) for name in padded)
    assert weights.unpacked_cdf_tables(padded) == padded
    packed["entropy_bottlenecks.2._quantized_cdf_packed"] = packed["entropy_bottlenecks.2._quantized_cdf_packed"][:-1]
    with pytest.raises(weights.WeightsError, match="entropy_bottlenecks.2._quantized_cdf_packed holds .* entries; its "
                                                   "lengths add up to"):
        weights.unpacked_cdf_tables(packed)
