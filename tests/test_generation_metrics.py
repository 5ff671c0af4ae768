"""Offline generation metrics against constructions with known answers."""

import math

import numpy as np
import pytest
import scipy.ndimage
import scipy.special
import scipy.stats
import torch

from diffusers_spectrum.evaluation.generation_metrics import (
    BLUR_SEPARATION_FACTOR,
    blur_separation,
    box_blur,
    kid,
    laplacian_pyramid,
    pyramid_down,
    pyramid_swd,
    pyramid_up,
    random_directions,
    sliced_wasserstein,
    spectrum_distance,
    swd_resolutions,
)
from diffusers_spectrum.spectral import dct_2d, idct_2d


FAST = {"patches_per_image": 32, "num_projections": 128}


def _crops(natural_images: torch.Tensor, size: int = 32) -> torch.Tensor:
    """Non-overlapping ``size`` px crops of the session photos: ``(4 * (256 / size)^2, 3, size, size)``."""
    batch, channels, height, width = natural_images.shape
    tiles = natural_images.reshape(batch, channels, height // size, size, width // size, size)
    return tiles.permute(0, 2, 4, 1, 3, 5).reshape(-1, channels, size, size).contiguous()


def _dct_gaussian_blur(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Blur by a Gaussian transfer function on the DCT grid: every coefficient shrinks as sigma grows."""
    height, width = images.shape[-2:]
    u = torch.arange(height, dtype=torch.float64)[:, None] * math.pi / height
    v = torch.arange(width, dtype=torch.float64)[None, :] * math.pi / width
    transfer = torch.exp(-0.5 * sigma_px**2 * (u**2 + v**2))
    return idct_2d(dct_2d(images.double()) * transfer).float()


# ------------------------------------------------------------------------------------------------
# Pyramid.


def test_pyramid_down_and_up_match_scipy_binomial_convolution_with_mirror_borders():
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    kernel = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0
    reference_down = scipy.ndimage.convolve(x.numpy(), kernel[None, None], mode="mirror")[:, :, ::2, ::2]
    np.testing.assert_allclose(pyramid_down(x).numpy(), reference_down, rtol=0, atol=1e-12)
    coarse = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    zeros = np.zeros((2, 3, 16, 16))
    zeros[:, :, ::2, ::2] = coarse.numpy()
    reference_up = scipy.ndimage.convolve(zeros, 4 * kernel[None, None], mode="mirror")
    np.testing.assert_allclose(pyramid_up(coarse).numpy(), reference_up, rtol=0, atol=1e-12)


def test_laplacian_pyramid_reconstructs_the_images_exactly():
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    levels = laplacian_pyramid(x, 3)
    assert [tuple(level.shape[-2:]) for level in levels] == [(32, 32), (16, 16), (8, 8)]
    rebuilt = levels[-1]
    for level in levels[-2::-1]:
        rebuilt = pyramid_up(rebuilt) + level
    torch.testing.assert_close(rebuilt, x, rtol=0, atol=1e-12)


def test_swd_levels_run_from_full_size_down_to_16_px():
    assert swd_resolutions(32, 32) == [32, 16]
    assert swd_resolutions(128, 128) == [128, 64, 32, 16]
    with pytest.raises(ValueError, match="min_resolution"):
        swd_resolutions(8, 8)
    with pytest.raises(ValueError, match="divisible"):
        swd_resolutions(70, 70)  # 70 -> 35 -> 17 needs divisibility by 4


# ------------------------------------------------------------------------------------------------
# Sliced Wasserstein distance.


def test_sliced_wasserstein_of_1d_shift_is_the_shift():
    a = torch.randn(500, 1, dtype=torch.float64)
    assert sliced_wasserstein(a, a + 0.7, num_projections=8).item() == pytest.approx(0.7, abs=1e-12)


def test_sliced_wasserstein_of_two_1d_gaussians_matches_closed_form_w1():
    # Deterministic quantile samples of N(m, s^2); W1 = E|dm + ds Z| (Z standard normal) in closed form.
    n = 20000
    z = torch.from_numpy(scipy.stats.norm.ppf((np.arange(n) + 0.5) / n))[:, None]
    (m1, s1), (m2, s2) = (0.3, 1.0), (-0.2, 2.5)
    dm, ds = m1 - m2, s1 - s2
    w1 = abs(ds) * math.sqrt(2 / math.pi) * math.exp(-(dm**2) / (2 * ds**2)) + dm * (
        1 - 2 * scipy.stats.norm.cdf(-dm / abs(ds))
    )
    measured = sliced_wasserstein(m1 + s1 * z, m2 + s2 * z, num_projections=4).item()
    # quantile discretisation error <= |ds| * W1(N(0,1), its n-point quantile grid) ~ sqrt(log n) / n ~ 2e-4
    assert measured == pytest.approx(w1, abs=1e-3)


def test_sliced_wasserstein_of_shifted_cloud_is_mean_projected_shift():
    dim, num_projections = 6, 512
    a = torch.randn(300, dim, dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, -1.0], dtype=torch.float64)
    measured = sliced_wasserstein(a, a + shift, num_projections, torch.Generator().manual_seed(3))
    # exact: each projection is translated by <theta, shift>
    directions = random_directions(dim, num_projections, torch.Generator().manual_seed(3), torch.float64)
    torch.testing.assert_close(measured, (shift @ directions).abs().mean(), rtol=1e-12, atol=1e-12)
    # and its expectation over uniform directions: |shift| E|theta_1| = |shift| G(D/2) / (sqrt(pi) G((D+1)/2))
    mean_abs = math.exp(scipy.special.gammaln(dim / 2) - scipy.special.gammaln((dim + 1) / 2)) / math.sqrt(math.pi)
    standard_error = shift.norm().item() * math.sqrt((1 / dim - mean_abs**2) / num_projections)
    assert measured.item() == pytest.approx(shift.norm().item() * mean_abs, abs=4 * standard_error)


def test_sliced_wasserstein_rejects_sets_of_different_size():
    with pytest.raises(ValueError, match="same number of images"):
        sliced_wasserstein(torch.randn(10, 3), torch.randn(11, 3))


def test_pyramid_swd_of_identical_sets_is_zero_and_seeded(natural_images):
    crops = _crops(natural_images)[:32]
    assert torch.equal(pyramid_swd(crops, crops, **FAST), torch.zeros(2))
    other = _crops(natural_images)[32:64]
    first, second = pyramid_swd(crops, other, **FAST, seed=1), pyramid_swd(crops, other, **FAST, seed=1)
    assert torch.equal(first, second) and (first > 0).all()


def test_pyramid_swd_ignores_a_global_gain_as_in_the_paper(natural_images):
    crops = _crops(natural_images)[:32].double()
    torch.testing.assert_close(pyramid_swd(crops, 3.0 * crops, **FAST), torch.zeros(2), rtol=0, atol=1e-6)


def test_pyramid_swd_grows_with_blur_and_with_noise(natural_images):
    crops = _crops(natural_images)[:64]
    blurred = [pyramid_swd(crops, _dct_gaussian_blur(crops, s), **FAST).mean() for s in (0.5, 1.0, 2.0)]
    assert blurred[0] < blurred[1] < blurred[2]
    noise = torch.randn(crops.shape, generator=torch.Generator().manual_seed(0))
    noisier = [pyramid_swd(crops, crops + level * noise, **FAST).mean() for level in (0.05, 0.2, 0.8)]
    assert noisier[0] < noisier[1] < noisier[2]


# ------------------------------------------------------------------------------------------------
# Spectrum distance.


def test_spectrum_distance_of_identical_sets_is_zero_and_of_a_gain_is_twice_its_log(natural_images):
    crops = _crops(natural_images)[:16].double()
    assert spectrum_distance(crops, crops).item() == 0.0
    # float64 DCT sums can round in a different order for the two calls; weak high bands amplify that in the log
    assert spectrum_distance(crops, 0.5 * crops).item() == pytest.approx(2 * math.log(2.0), rel=1e-8)


def _power_law_images(alpha: float, size: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Images whose DCT coefficients have exact magnitude r^(-alpha/2) (random signs, DC 0): known power per cell."""
    u = torch.arange(size, dtype=torch.float64)[:, None]
    radius = (u**2 + u.T**2).sqrt()
    amplitude = torch.where(radius > 0, radius.clamp_min(1).pow(-alpha / 2), torch.zeros_like(radius))
    signs = torch.randint(0, 2, (batch, 3, size, size), generator=generator).double() * 2 - 1
    return idct_2d(signs * amplitude)


def test_spectrum_distance_of_power_law_fields_matches_closed_form_on_log_spectra():
    size, n_bins, (alpha, beta) = 32, 16, (2.0, 1.0)
    g = torch.Generator().manual_seed(0)
    a, b = _power_law_images(alpha, size, 3, g), _power_law_images(beta, size, 5, g)
    # band k holds the cells with floor(r / r_max * n_bins) = k (DC's power removed but counted in band 0)
    r = np.hypot(*np.meshgrid(np.arange(size), np.arange(size), indexing="ij"))
    band = np.minimum(np.floor(r / r.max() * n_bins), n_bins - 1)
    safe_r = np.where(r > 0, r, 1.0)
    power_a, power_b = np.where(r > 0, safe_r**-alpha, 0.0), np.where(r > 0, safe_r**-beta, 0.0)
    log_a = np.log([power_a[band == k].mean() for k in range(n_bins)])
    log_b = np.log([power_b[band == k].mean() for k in range(n_bins)])
    expected = np.sqrt(np.mean((log_a - log_b) ** 2))
    assert spectrum_distance(a, b, n_bins=n_bins).item() == pytest.approx(expected, rel=1e-9)


def test_spectrum_distance_grows_with_blur_and_with_noise(natural_images):
    crops = _crops(natural_images)[:64]
    blurred = [spectrum_distance(crops, _dct_gaussian_blur(crops, s)) for s in (0.5, 1.0, 2.0)]
    assert blurred[0] < blurred[1] < blurred[2]
    noise = torch.randn(crops.shape, generator=torch.Generator().manual_seed(0))
    noisier = [spectrum_distance(crops, crops + level * noise) for level in (0.05, 0.2, 0.8)]
    assert noisier[0] < noisier[1] < noisier[2]


def test_spectrum_distance_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="share"):
        spectrum_distance(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16))


# ------------------------------------------------------------------------------------------------
# Colour-aware SWD, KID, and the blur check.


def test_pooled_swd_sees_a_colour_gain_and_offset_that_the_published_swd_ignores(natural_images):
    crops = _crops(natural_images)[:32].double()
    shifted = 0.7 * crops + 0.2  # a gain and an offset
    torch.testing.assert_close(pyramid_swd(crops, 0.7 * crops, **FAST), torch.zeros(2), rtol=0, atol=1e-6)
    pooled = pyramid_swd(crops, shifted, **FAST, normalization="pooled")
    assert (pooled > 0.05).all()  # the band-pass level sees the gain, the low-pass residual the offset too
    assert torch.equal(pyramid_swd(crops, crops, **FAST, normalization="pooled"), torch.zeros(2))
    with pytest.raises(ValueError, match="normalization"):
        pyramid_swd(crops, crops, normalization="global")


def np_poly_kernel_mean(a, a_cov, b, b_cov, dim):
    """E[(x.y / d + 1)^3] for independent x ~ N(a, A), y ~ N(b, B), from Gaussian moments:
    E[x.y] = a.b; E[(x.y)^2] = tr((A + aa')(B + bb')); E[(x.y)^3] = (a.b)^3 + 3 (a.b)(a'Ba) + 3 (a.b)(b'Ab + tr(AB))
    + 6 a'BAb."""
    m1 = a @ b
    m2 = np.trace((a_cov + np.outer(a, a)) @ (b_cov + np.outer(b, b)))
    m3 = (
        m1**3
        + 3 * m1 * (a @ b_cov @ a)
        + 3 * m1 * (b @ a_cov @ b + np.trace(a_cov @ b_cov))
        + 6 * a @ b_cov @ a_cov @ b
    )
    return 1 + 3 * m1 / dim + 3 * m2 / dim**2 + m3 / dim**3


def test_kid_matches_its_closed_form_on_gaussians():
    rng = np.random.default_rng(0)
    dim = 4
    a_mean, b_mean = np.array([0.3, 0.0, -0.2, 0.1]), np.array([0.0, 0.4, 0.1, 0.0])
    root_a, root_b = rng.normal(0, 0.5, (dim, dim)), rng.normal(0, 0.5, (dim, dim))
    a_cov, b_cov = root_a @ root_a.T + 0.5 * np.eye(dim), root_b @ root_b.T + 0.2 * np.eye(dim)
    expected = (
        np_poly_kernel_mean(a_mean, a_cov, a_mean, a_cov, dim)
        + np_poly_kernel_mean(b_mean, b_cov, b_mean, b_cov, dim)
        - 2 * np_poly_kernel_mean(a_mean, a_cov, b_mean, b_cov, dim)
    )
    estimates = [
        kid(rng.multivariate_normal(a_mean, a_cov, 400), rng.multivariate_normal(b_mean, b_cov, 400))
        for _ in range(40)
    ]
    standard_error = np.std(estimates, ddof=1) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - expected) < 4 * standard_error
    assert expected > 10 * standard_error  # the test can tell the two distributions apart
    # unbiased: one distribution gives 0 on average (also at a small sample size, where it can be negative)
    same = [
        kid(rng.multivariate_normal(a_mean, a_cov, 16), rng.multivariate_normal(a_mean, a_cov, 16)) for _ in range(400)
    ]
    assert abs(np.mean(same)) < 4 * np.std(same, ddof=1) / np.sqrt(len(same)) and min(same) < 0
    subsets = kid(rng.normal(size=(200, 3)), rng.normal(size=(150, 3)) + 1.0, num_subsets=10, subset_size=50)
    assert subsets > 0
    with pytest.raises(ValueError, match="at least 2"):
        kid(np.zeros((1, 3)), np.zeros((4, 3)))


def test_box_blur_is_scipys_uniform_filter_with_mirrored_borders():
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    expected = scipy.ndimage.uniform_filter(x.numpy(), size=(1, 1, 5, 5), mode="mirror")  # no edge repeat
    torch.testing.assert_close(box_blur(x, 5), torch.from_numpy(expected), rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def embedded_crops():
    from diffusers_spectrum.evaluation.study_metrics import embedded_photos, natural_crops

    return natural_crops(embedded_photos(), seed=1)  # one random 32 px crop of each of the 112 photos


@pytest.fixture(scope="module")
def study_suite():
    """The suite as the studies build it: the feature net trained with the default settings on the training photos
    (every photo whose index is not a multiple of 8), and the random-init sanity row."""
    from diffusers_spectrum.evaluation.feature_net import random_feature_net, train_feature_net
    from diffusers_spectrum.evaluation.study_metrics import GenerationMetricSuite, embedded_photos

    photos = embedded_photos()
    train = photos[[i for i in range(len(photos)) if i % 8 != 0]]
    return GenerationMetricSuite(train_feature_net(train), random_feature_net(train))


@pytest.mark.slow
def test_blur_check_metrics_the_studies_rely_on_see_a_5x5_blur_and_the_published_swd_does_not(
    embedded_crops, study_suite
):
    from diffusers_spectrum.evaluation.study_metrics import embedded_photos, natural_crops, relied_metrics

    first, last = study_suite.trained_net.training_losses
    assert last < 0.8 * first  # the whitened autoencoder learns (an untrained one costs about 1)
    check = study_suite.blur_check(embedded_crops)  # the protocol: 32 images per set, disjoint photos
    assert check["spectrum_distance"]["set_size"] == 32 and check["spectrum_distance"]["blur"] == "5x5 box"
    relied = ["spectrum_distance", "swd_pooled_x1e3", "kid_trained", "kid_random"]  # relied on at 32 images
    for name in relied:
        assert check[name]["ratio"] >= BLUR_SEPARATION_FACTOR and check[name]["passes"], (name, check[name])
    assert check["swd_x1e3"]["ratio"] < 1.5 and not check["swd_x1e3"]["passes"]  # the published SWD cannot
    assert set(relied) <= set(relied_metrics(check)) and "swd_x1e3" not in relied_metrics(check)
    # at a study's sample count every learned-feature metric passes, the Frechet distances included
    crops = natural_crops(embedded_photos(), per_photo=8, seed=2)
    learned = ["kid_trained", "fd_trained", "kid_random", "fd_random"]
    large = study_suite.blur_check(crops, set_size=256, metrics=learned)
    assert list(large) == learned and relied_metrics(large) == learned, large
    with pytest.raises(ValueError, match="no metric"):
        study_suite.blur_check(crops, metrics=["fid"])


def test_blur_separation_reads_an_unbiased_metric_by_its_magnitude():
    crops = torch.rand(64, 3, 8, 8)
    values = iter([0.1, 0.15, -0.1, 0.15] * 2)  # per split (unblurred, blurred): unblurred +-0.1, blurred 0.15
    check = blur_separation(lambda a, b: next(values), crops, num_splits=4)
    assert check["unblurred_abs"] == pytest.approx(0.1) and check["ratio"] == pytest.approx(1.5)
    assert not check["passes"]
    with pytest.raises(ValueError, match="crops"):
        blur_separation(lambda a, b: 0.0, crops[:10])


def test_blur_separation_split_by_source_never_puts_one_photo_in_both_sets():
    groups = torch.arange(40) // 4  # 10 photos, 4 crops each
    crops = torch.arange(40, dtype=torch.float64)[:, None, None, None].expand(40, 3, 8, 8).contiguous()
    seen = []

    def metric(a, b):  # constant crops stay constant under the box blur: the value names the crop
        seen.append((a[:, 0, 0, 0].round().long(), b[:, 0, 0, 0].round().long()))
        return 1.0

    check = blur_separation(metric, crops, set_size=12, num_splits=5, groups=groups)
    assert check["split_by"] == "source" and check["set_size"] == 12 and len(seen) == 10
    for a, b in seen:
        assert len(a) == len(b) == 12 and len(set(a.tolist()) | set(b.tolist())) == 24  # no crop twice
        assert not set(groups[a].tolist()) & set(groups[b].tolist())  # no photo on both sides
    assert blur_separation(metric, crops, set_size=12, num_splits=1)["split_by"] == "crop"
    with pytest.raises(ValueError, match="sources holds"):
        blur_separation(metric, crops, set_size=20, groups=torch.arange(40) % 3)
    with pytest.raises(ValueError, match="one id per crop"):
        blur_separation(metric, crops, set_size=12, groups=groups[:10])


def test_passing_count_is_the_smallest_count_from_which_every_larger_one_passes():
    from diffusers_spectrum.evaluation.study_metrics import passing_count

    verdicts = {32: (False, True, False, True), 64: (True, True, False, True), 128: (True, False, True, True)}
    checks = {n: {m: {"passes": p} for m, p in zip("abcd", row)} for n, row in verdicts.items()}
    assert passing_count(checks) == {"a": 64, "b": None, "c": 128, "d": 32}


def test_natural_crops_name_their_photo():
    from diffusers_spectrum.evaluation.study_metrics import natural_crops

    photos = torch.rand(5, 3, 20, 20)
    crops, sources = natural_crops(photos, size=8, per_photo=3, seed=0, return_sources=True)
    assert crops.shape == (15, 3, 8, 8) and sorted(sources.tolist()) == sorted(list(range(5)) * 3)
    for crop, source in zip(crops, sources):  # each crop is a window of its own photo
        windows = photos[source].unfold(1, 8, 1).unfold(2, 8, 1)  # (3, 13, 13, 8, 8)
        assert (windows - crop[:, None, None]).abs().amax(dim=(0, 3, 4)).min() == 0
    torch.testing.assert_close(natural_crops(photos, size=8, per_photo=3, seed=0), crops)


# ------------------------------------------------------------------------------------------------
# The feature net.


def test_whitening_weights_make_every_frequency_cost_the_same():
    from diffusers_spectrum.evaluation.feature_net import whitening_weights

    crops = _dct_gaussian_blur(torch.randn(64, 3, 16, 16, dtype=torch.float64), 1.0)  # power falls with frequency
    weights = whitening_weights(crops).double()
    power = dct_2d(crops).square().mean(dim=(0, 1))
    torch.testing.assert_close(power * weights, torch.full((16, 16), 1 / 256, dtype=torch.float64), rtol=1e-5, atol=0)
    assert weights[-1, -1] > 100 * weights[0, 1]  # the finest frequencies weigh most where they have least power


def test_feature_net_training_is_seeded(embedded_crops):
    from diffusers_spectrum.evaluation.feature_net import train_feature_net

    photos = embedded_crops[:24]  # 32 px: crops at the photos' own size
    settings = {"steps": 25, "batch_size": 8, "fit_crops_per_image": 2}
    first, again = (train_feature_net(photos, seed=3, **settings) for _ in range(2))
    other = train_feature_net(photos, seed=4, **settings)
    for name, tensor in first.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor, rtol=0, atol=0)  # reproducible
    assert first.loss_curve == again.loss_curve and len(first.loss_curve) == 25
    assert not torch.equal(other.stages[0][0].weight, first.stages[0][0].weight)
    torch.testing.assert_close(first.features(photos), again.features(photos), rtol=0, atol=0)
    with pytest.raises(ValueError, match="loss must be"):
        train_feature_net(photos, loss="perceptual", **settings)


def test_feature_net_readout_is_whitened_on_its_fit_crops_and_works_at_64_px():
    from diffusers_spectrum.evaluation.feature_net import SmallFeatureNet, fit_crops, random_feature_net

    photos = torch.rand(20, 3, 64, 64) * 2 - 1
    net = random_feature_net(photos, crop_size=64, fit_crops_per_image=4)
    features = net.features(fit_crops(photos, 64, 4, seed=0))
    assert features.shape == (80, 16) and features.dtype == torch.float64
    torch.testing.assert_close(features.mean(0), torch.zeros(16, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cov(features.T), torch.eye(16, dtype=torch.float64), atol=1e-3, rtol=0)
    assert net.features(photos[:, :, :32, :32]).shape == (20, 16)  # any size divisible by 4
    with pytest.raises(ValueError, match="more than 16 images"):
        SmallFeatureNet().fit_readout(photos[:16])
    with pytest.raises(ValueError, match="num_components"):
        SmallFeatureNet(num_components=500)


@pytest.mark.slow
def test_feature_net_trains_caches_and_standardises(tmp_path, embedded_crops):
    from diffusers_spectrum.evaluation.feature_net import feature_net_for, random_feature_net
    from diffusers_spectrum.evaluation.study_metrics import GenerationMetricSuite, embedded_photos

    photos = embedded_photos()[:24]
    (tmp_path / "net.partial").mkdir()  # a user's folder with the name an older version used for its unfinished save
    (tmp_path / "net.partial" / "mine.txt").write_text("not ours")
    net = feature_net_for(tmp_path / "net", photos, steps=40, batch_size=16)
    assert (tmp_path / "net.partial" / "mine.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net", "net.partial"]  # the save's own folder was renamed
    assert oct((tmp_path / "net").stat().st_mode & 0o777) == oct(0o755)
    first, last = net.training_losses
    assert last < first  # the autoencoder learns
    again = feature_net_for(tmp_path / "net", photos, steps=40, batch_size=16)  # loaded, not retrained
    torch.testing.assert_close(again.features(embedded_crops[:8]), net.features(embedded_crops[:8]))
    with pytest.raises(ValueError, match="other images"):
        feature_net_for(tmp_path / "net", photos[:12], steps=40, batch_size=16)
    with pytest.raises(ValueError, match="unknown settings"):
        feature_net_for(tmp_path / "other", photos, step=40)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("not ours")
    with pytest.raises(ValueError, match="not a feature-net folder"):
        feature_net_for(tmp_path / "busy", photos, steps=40, batch_size=16)
    assert (tmp_path / "busy" / "keep.txt").is_file()
    suite = GenerationMetricSuite(net, random_feature_net(photos))
    values = suite.measure(embedded_crops[:32], embedded_crops[32:64])
    assert set(values) == {
        "spectrum_distance",
        "swd_x1e3",
        "swd_pooled_x1e3",
        "kid_trained",
        "fd_trained",
        "kid_random",
        "fd_random",
    }
    assert all(np.isfinite(v) for v in values.values())
