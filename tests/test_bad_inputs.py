"""Bad input across the public surface: every case asserts the error type and that the message names the culprit (the
argument, file or option) and, where there is one, the fix; or that a bad item is skipped and counted. No case may hang
or return a silently wrong result.

Sections (each self-contained; append new ones at the end under a banner like those below):
  1. Spectral maths and losses (`diffusers_spectrum.spectral`, `diffusers_spectrum.losses`)
  2. Data loaders
  3. Latent cache
  4. Pipeline loaders
  5. CLIs

A case is `(id, call, error type, regex the message must match)`; `call` is a zero-argument function so that building
the inputs is part of the case. Keep each case well under a second.
"""

import numpy as np
import pytest
import torch

from diffusers_spectrum.losses import FeaturePerceptualLoss, hinge_d_loss, reconstruction_loss, repa_loss
from diffusers_spectrum.spectral import (
    apply_target_filter,
    blockwise_dct_2d,
    dct_2d,
    dog_filter,
    dsm_lowpass,
    dsm_mask,
    esm_loss,
    gaussian_blur_matrix,
    power_law_slope,
    radial_spectrum,
    spatial_normalize,
    spectral_kl,
)


def _run_case(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ================================================================================================================
# 1. Spectral maths and losses


def _images(batch=2, size=32):
    return torch.rand(batch, 3, size, size) * 2 - 1


def _latents(batch=2, channels=4, size=8):
    return torch.randn(batch, channels, size, size)


def _with_value(tensor, index, value):
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


ESM_CASES = [
    ("images_3d", lambda: esm_loss(_images()[0], _latents()), ValueError, r"`images` must be a 4-D .*x\[None\]"),
    ("images_1_channel", lambda: esm_loss(_images()[:, :1], _latents()), ValueError, r"`images` must have 3 channels"),
    ("latents_5d", lambda: esm_loss(_images(), _latents()[None]), ValueError, r"`latents` must be a 4-D"),
    (
        "batch_mismatch",
        lambda: esm_loss(_images(3), _latents(2)),
        ValueError,
        r"batch sizes differ: images 3, latents 2",
    ),
    ("empty_batch", lambda: esm_loss(_images(0), _latents(0)), ValueError, r"`latents` is an empty batch"),
    ("latent_grid_larger", lambda: esm_loss(_images(size=8), _latents(size=16)), ValueError, r"larger than the image"),
    (
        "n_bins_fraction",
        lambda: esm_loss(_images(), _latents(), n_bins=2.5),
        ValueError,
        r"`n_bins` must be an integer",
    ),
    (
        "n_bins_zero",
        lambda: esm_loss(_images(), _latents(), n_bins=0),
        ValueError,
        r"`n_bins` must be an integer >= 1",
    ),
    ("n_bins_string", lambda: esm_loss(_images(), _latents(), n_bins="16"), TypeError, r"`n_bins` must be an integer"),
    ("n_bins_bool", lambda: esm_loss(_images(), _latents(), n_bins=True), TypeError, r"`n_bins` must be an integer"),
    (
        "n_bins_float_tensor",
        lambda: spectral_kl(_images(), _latents(), n_bins=torch.tensor(4.0)),
        ValueError,
        r"`n_bins`",
    ),
    (
        "delta_nan",
        lambda: esm_loss(_images(), _latents(), delta=float("nan")),
        ValueError,
        r"`delta` must be a finite",
    ),
    ("delta_string", lambda: esm_loss(_images(), _latents(), delta="1"), TypeError, r"`delta` must be a real number"),
    ("eps_zero", lambda: esm_loss(_images(), _latents(), eps=0.0), ValueError, r"`eps` must be > 0"),
    ("loss_type", lambda: esm_loss(_images(), _latents(), loss_type="js"), ValueError, r"loss_type 'js'.*'kl', 'l2'"),
    (
        "blur_string",
        lambda: esm_loss(_images(), _latents(), blur="no"),
        TypeError,
        r"`blur` must be True, False or None",
    ),
    (
        "nan_latents",
        lambda: esm_loss(_images(), _with_value(_latents(), (1, 2, 3, 3), float("nan"))),
        ValueError,
        r"`latents` contains NaN",
    ),
    (
        "inf_images",
        lambda: spectral_kl(_with_value(_images(), (0, 0, 5, 5), float("inf")), _latents()),
        ValueError,
        r"`images` contains NaN or Inf",
    ),
    (
        "integer_images",
        lambda: esm_loss((_images() * 127).to(torch.uint8), _latents()),
        TypeError,
        r"`images` must be a floating-point tensor.*\.float\(\)",
    ),
    ("numpy_latents", lambda: esm_loss(_images(), _latents().numpy()), TypeError, r"`latents` must be a torch.Tensor"),
    (
        "check_finite_string",
        lambda: esm_loss(_images(), _latents(), check_finite="yes"),
        TypeError,
        r"`check_finite` must be True, False or None",
    ),
]

SPECTRUM_CASES = [
    ("radial_3d", lambda: radial_spectrum(_latents()[0]), ValueError, r"`x` must be a 4-D .*x\[None\]"),
    (
        "radial_nan",
        lambda: radial_spectrum(_with_value(_latents(), (0, 0, 0, 0), float("nan"))),
        ValueError,
        r"`x` contains NaN",
    ),
    (
        "radial_inf",
        lambda: radial_spectrum(_with_value(_latents(), (1, 3, 7, 7), float("-inf"))),
        ValueError,
        r"`x` contains",
    ),
    (
        "radial_n_bins_negative",
        lambda: radial_spectrum(_latents(), -1),
        ValueError,
        r"`n_bins` must be an integer >= 1",
    ),
    ("radial_n_bins_fraction", lambda: radial_spectrum(_latents(), 7.5), ValueError, r"`n_bins` must be an integer"),
    ("radial_floor_negative", lambda: radial_spectrum(_latents(), floor=-1.0), ValueError, r"`floor` must be >= 0"),
    ("radial_empty_grid", lambda: radial_spectrum(torch.zeros(1, 3, 0, 8)), ValueError, r"`x` has an empty"),
    (
        "radial_int_dtype",
        lambda: radial_spectrum(torch.ones(1, 3, 8, 8, dtype=torch.int32)),
        TypeError,
        r"floating-point",
    ),
    (
        "slope_nan",
        lambda: power_law_slope(torch.tensor([1.0, float("nan"), 0.25])),
        ValueError,
        r"`spectrum` contains NaN",
    ),
    ("slope_one_band", lambda: power_law_slope(torch.ones(3, 1)), ValueError, r"`spectrum` needs at least 2 bands"),
    ("slope_frequencies", lambda: power_law_slope(torch.rand(16), frequencies="log"), ValueError, r"frequencies"),
    ("dct_int", lambda: dct_2d(torch.ones(4, 4, dtype=torch.int64)), TypeError, r"`x` must be a floating-point"),
    ("dct_empty", lambda: dct_2d(torch.zeros(2, 0, 4)), ValueError, r"`x` has an empty axis"),
    (
        "block_size_fraction",
        lambda: blockwise_dct_2d(torch.zeros(8, 8), 2.5),
        ValueError,
        r"`block_size` must be an integer",
    ),
]

DSM_CASES = [
    (
        "level_too_high",
        lambda: dsm_lowpass(_latents(size=16), 15),
        ValueError,
        r"Unknown DSM level 15 .*0 \(no masking\) to 14",
    ),
    ("level_negative", lambda: dsm_mask(-1), ValueError, r"Unknown DSM level -1"),
    ("level_fraction", lambda: dsm_lowpass(_latents(size=16), 8.0), ValueError, r"Unknown DSM level 8.0"),
    ("level_string", lambda: dsm_lowpass(_latents(size=16), "8"), ValueError, r"Unknown DSM level '8'"),
    (
        "level_float_tensor",
        lambda: dsm_lowpass(_latents(size=16), torch.tensor(8.5)),
        ValueError,
        r"Unknown DSM level",
    ),
    (
        "not_divisible",
        lambda: dsm_lowpass(_latents(size=12), 8),
        ValueError,
        r"12x12 is not divisible by block_size=8",
    ),
    ("block_size_zero", lambda: dsm_lowpass(_latents(size=16), 0, block_size=0), ValueError, r"`block_size` must be"),
    (
        "nan_input",
        lambda: dsm_lowpass(_with_value(_latents(size=16), (0, 1, 2, 3), float("nan")), 10),
        ValueError,
        r"dsm_lowpass: `x` contains NaN",
    ),
    (
        "nan_input_level_0",
        lambda: dsm_lowpass(_with_value(_latents(size=16), (0, 1, 2, 3), float("inf")), 0),
        ValueError,
        r"`x` contains NaN or Inf",
    ),
]

FILTER_CASES = [
    ("dog_truncate_zero", lambda: dog_filter(_latents(), truncate=0), ValueError, r"`truncate` must be > 0"),
    (
        "dog_truncate_tiny",
        lambda: dog_filter(_latents(), truncate=0.1),
        ValueError,
        r"sigma2=2 a kernel radius of 0 taps.*identically 0; use truncate >= 0\.25",
    ),
    ("dog_sigmas_swapped", lambda: dog_filter(_latents(), 2.0, 0.6), ValueError, r"sigma1 < sigma2, got sigma1=2.0"),
    ("dog_sigma_negative", lambda: dog_filter(_latents(), -0.5, 2.0), ValueError, r"`sigma1` must be >= 0"),
    ("dog_sigma_nan", lambda: dog_filter(_latents(), 0.6, float("nan")), ValueError, r"`sigma2` must be a finite"),
    ("dog_sigma_huge", lambda: dog_filter(_latents(), 0.6, 1e9), ValueError, r"sigma2=1e\+09 .*3 x the grid side"),
    ("dog_eps_negative", lambda: dog_filter(_latents(), eps=-1.0), ValueError, r"`eps` must be > 0"),
    ("dog_3d", lambda: dog_filter(_latents()[0]), ValueError, r"`features` must be a 4-D"),
    (
        "dog_nan",
        lambda: dog_filter(_with_value(_latents(), (0, 0, 4, 4), float("nan"))),
        ValueError,
        r"dog_filter: `features` contains NaN",
    ),
    ("blur_matrix_truncate", lambda: gaussian_blur_matrix(8, 1.0, truncate=-1), ValueError, r"`truncate` must be > 0"),
    ("blur_matrix_size", lambda: gaussian_blur_matrix(0, 1.0), ValueError, r"`n` must be an integer >= 1"),
    (
        "spatial_norm_alpha",
        lambda: spatial_normalize(_latents(), alpha=1.5),
        ValueError,
        r"`alpha` must be in \[0, 1\]",
    ),
    ("spatial_norm_one_token", lambda: spatial_normalize(_latents(size=1)), ValueError, r"at least 2 tokens"),
    (
        "spatial_norm_inf",
        lambda: spatial_normalize(_with_value(_latents(), (1, 1, 1, 1), float("inf"))),
        ValueError,
        r"`features` contains NaN or Inf",
    ),
    (
        "target_tokens_grid",
        lambda: apply_target_filter(torch.randn(2, 16, 8), (5, 5), "dog"),
        ValueError,
        r"N = h \* w = 25",
    ),
    ("target_filter_name", lambda: apply_target_filter(torch.randn(2, 16, 8), (4, 4), "gauss"), ValueError, r"one of"),
    (
        "target_grid_fraction",
        lambda: apply_target_filter(torch.randn(2, 16, 8), (4.5, 4), "dog"),
        ValueError,
        r"`grid_hw`",
    ),
]

LOSS_CASES = [
    (
        "repa_width_mismatch",
        lambda: repa_loss(torch.randn(2, 16, 32), torch.randn(2, 16, 768)),
        ValueError,
        r"repa_target_dim=768",
    ),
    (
        "repa_grid_mismatch",
        lambda: repa_loss(torch.randn(2, 16, 8), torch.randn(2, 64, 8)),
        ValueError,
        r"token grids",
    ),
    ("repa_empty_batch", lambda: repa_loss(torch.randn(0, 16, 8), torch.randn(0, 16, 8)), ValueError, r"empty batch"),
    ("repa_reduction", lambda: repa_loss(torch.randn(2, 4, 8), torch.randn(2, 4, 8), "sum"), ValueError, r"reduction"),
    (
        "reconstruction_numpy",
        lambda: reconstruction_loss(np.zeros((1, 3, 8, 8)), torch.zeros(1, 3, 8, 8)),
        TypeError,
        r"`reconstruction` must be a torch.Tensor",
    ),
    (
        "reconstruction_shape",
        lambda: reconstruction_loss(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 16, 16)),
        ValueError,
        r"must have the same shape",
    ),
    (
        "hinge_batch_mismatch",
        lambda: hinge_d_loss(torch.zeros(1, 1, 4, 4), torch.zeros(4, 1, 4, 4)),
        ValueError,
        r"`logits_real` \(1, 1, 4, 4\) and `logits_fake` \(4, 1, 4, 4\).*same batch size",
    ),
    (
        "perceptual_missing_folder",
        lambda: FeaturePerceptualLoss("./no-such-backbone/dinov2"),
        FileNotFoundError,
        r"`backbone` './no-such-backbone/dinov2': no such folder",
    ),
]

SPECTRAL_AND_LOSS_CASES = ESM_CASES + SPECTRUM_CASES + DSM_CASES + FILTER_CASES + LOSS_CASES


@pytest.mark.parametrize(
    "call, error, match",
    [case[1:] for case in SPECTRAL_AND_LOSS_CASES],
    ids=[case[0] for case in SPECTRAL_AND_LOSS_CASES],
)
def test_spectral_and_loss_functions_reject_bad_input_naming_the_argument(call, error, match):
    _run_case(call, error, match)


@pytest.mark.parametrize("n_bins", [np.int64(4), np.int32(4), torch.tensor(4), torch.tensor([4])])
def test_integer_like_arguments_are_accepted_not_rejected(n_bins):
    images, latents = _images(), _latents()
    expected = esm_loss(images, latents, n_bins=4)
    assert torch.equal(esm_loss(images, latents, n_bins=n_bins), expected)
    level = type(n_bins)(8) if isinstance(n_bins, np.integer) else torch.tensor(8)
    x = _latents(size=16)
    assert torch.equal(dsm_lowpass(x, level), dsm_lowpass(x, 8))


def test_bad_input_case_ids_are_unique():
    ids = [case[0] for case in SPECTRAL_AND_LOSS_CASES]
    assert len(ids) == len(set(ids))
