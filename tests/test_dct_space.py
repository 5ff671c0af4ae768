"""DCTTransform against an explicit per-block scipy/PIL reference, its statistics helpers, the SNR-scaled schedules,
and a tiny DCT-space DiT that trains and samples through a stock DiTPipeline."""

import numpy as np
import pytest
import scipy.fft
import scipy.stats
import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DiTPipeline,
    DiTTransformer2DModel,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from PIL import Image

from diffusers_spectrum import (
    DCTTransform,
    dct_weighted_mse,
    estimate_dct_eta,
    estimate_entropy_weights,
    fourier_loss,
    snr_scaled_scheduler,
    wavelet_loss,
)
from diffusers_spectrum.diffusion.objectives import DiffusionObjective, snr_from_flow_time
from diffusers_spectrum.models.dct_statistics import estimate_dct_statistics
from diffusers_spectrum.models.dct_transform import zigzag_order


# The JPEG standard's zigzag scan of an 8 x 8 block (ITU-T T.81, Figure A.6), as row * 8 + col.
JPEG_ZIGZAG_8X8 = [
    0,
    1,
    8,
    16,
    9,
    2,
    3,
    10,
    17,
    24,
    32,
    25,
    18,
    11,
    4,
    5,
    12,
    19,
    26,
    33,
    40,
    48,
    41,
    34,
    27,
    20,
    13,
    6,
    7,
    14,
    21,
    28,
    35,
    42,
    49,
    56,
    57,
    50,
    43,
    36,
    29,
    22,
    15,
    23,
    30,
    37,
    44,
    51,
    58,
    59,
    52,
    45,
    38,
    31,
    39,
    46,
    53,
    60,
    61,
    54,
    47,
    55,
    62,
    63,
]


def _random_uint8_images(batch=2, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)


def _to_tensor(images_uint8):
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def test_zigzag_order_is_the_jpeg_scan():
    assert [row * 8 + col for row, col in zigzag_order(8)] == JPEG_ZIGZAG_8X8
    assert zigzag_order(2) == [(0, 0), (0, 1), (1, 0), (1, 1)]


@pytest.mark.parametrize("block_size,num_dropped", [(2, 0), (4, 5)])
def test_encode_matches_a_per_block_reference_built_from_pil_ycbcr(block_size, num_dropped):
    images = _random_uint8_images()
    transform = DCTTransform(block_size=block_size, num_dropped=num_dropped)
    latents = transform.encode(_to_tensor(images)).latent_dist.sample().double().numpy()
    b, k = block_size, block_size**2 - num_dropped
    scan = zigzag_order(b)[:k]
    assert latents.shape == (2, 6 * k, 16 // (2 * b), 16 // (2 * b)) and transform.latent_channels == 6 * k

    def block_coefficients(plane, row, col):  # zigzag DCT coefficients of block (row, col)
        block = scipy.fft.dctn(plane[row * b : (row + 1) * b, col * b : (col + 1) * b], norm="ortho")
        return np.array([block[u, v] for u, v in scan])

    for index, image in enumerate(images):
        ycbcr = np.asarray(Image.fromarray(image).convert("YCbCr"), dtype=np.float64)  # JPEG full range, rounded
        luma = (ycbcr[..., 0] - 128.0) / 127.5  # the authors centre at 128
        chroma = [(ycbcr[..., c] - 128.0) / 127.5 for c in (1, 2)]
        chroma = [plane.reshape(8, 2, 8, 2).mean(axis=(1, 3)) for plane in chroma]  # 4:2:0 by 2x2 averaging
        for row in range(latents.shape[2]):
            for col in range(latents.shape[3]):
                expected = [block_coefficients(luma, 2 * row + dy, 2 * col + dx) for dy in (0, 1) for dx in (0, 1)]
                expected += [block_coefficients(plane, row, col) for plane in chroma]
                # PIL rounds to 8 bits: at most ~1 level per pixel, i.e. b / 127.5 per coefficient
                np.testing.assert_allclose(latents[index, :, row, col], np.concatenate(expected), atol=b / 127.5)


def test_decode_inverts_encode_exactly_without_chroma_subsampling():
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    for block_size in (2, 4):
        transform = DCTTransform(block_size=block_size, chroma_subsampling=False).double()
        latents = transform.encode(x).latent_dist.mode()
        assert latents.shape[1] == 12 * block_size**2
        torch.testing.assert_close(transform.decode(latents).sample, x, atol=1e-12, rtol=0)
        torch.testing.assert_close(transform(x).sample, x, atol=1e-12, rtol=0)


def test_chroma_subsampling_is_the_only_loss_when_nothing_is_dropped():
    # Updated for the authors' inverse: chroma comes back as the *bilinear* upsampling of its 2x2 means (was 2x2
    # repetition), and the decoded pixels are clamped to [-1, 1]; the images stay inside [-0.6, 0.6] so the clamp
    # is inactive here (it is checked in test_dct_conventions.py).
    transform = DCTTransform(block_size=2).double()
    x = (torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1) * 0.3
    reconstruction = transform.decode(transform.encode(x).latent_dist.mode()).sample
    matrix = [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
    matrix = torch.tensor(matrix, dtype=torch.float64)
    to_ycbcr = lambda images: torch.einsum("pc,bchw->bphw", matrix, images)  # noqa: E731
    ycbcr, ycbcr_hat = to_ycbcr(x), to_ycbcr(reconstruction)
    torch.testing.assert_close(ycbcr_hat[:, 0], ycbcr[:, 0], atol=1e-12, rtol=0)  # luma exact
    pooled = F.interpolate(F.avg_pool2d(ycbcr[:, 1:], 2), scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(ycbcr_hat[:, 1:], pooled, atol=1e-12, rtol=0)  # chroma = bilinear of its 2x2 means
    # images of constant chroma (any luma), e.g. grey ones, come back exactly
    grey = x[:, :1].expand(-1, 3, -1, -1)
    torch.testing.assert_close(transform(grey).sample, grey, atol=1e-12, rtol=0)
    assert (reconstruction - x).abs().max() > 0.01  # while general images lose their sub-cell chroma


def test_dropping_coefficients_is_a_blockwise_zigzag_lowpass():
    transform = DCTTransform(block_size=4, num_dropped=6, chroma_subsampling=False).double()
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64) * 2 - 1
    y = transform.decode(transform.encode(x).latent_dist.mode()).sample
    # reference: the same low-pass applied by scipy to each block of each YCbCr plane
    matrix = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    planes = np.einsum("pc,chw->phw", matrix, x[0].numpy())
    kept = np.zeros((4, 4), dtype=bool)
    for u, v in zigzag_order(4)[:10]:
        kept[u, v] = True
    for p in range(3):
        for r in range(4):
            for c in range(4):
                block = scipy.fft.dctn(planes[p, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4], norm="ortho") * kept
                planes[p, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = scipy.fft.idctn(block, norm="ortho")
    # the decoded pixels are clamped to [-1, 1] ([0, 255]) as the authors'; centring at 128 cancels in the round trip
    expected = np.clip(np.einsum("cp,phw->chw", np.linalg.inv(matrix), planes), -1, 1)
    np.testing.assert_allclose(y[0].numpy(), expected, atol=1e-12)


def test_half_precision_round_trip_keeps_dtype_and_bad_sizes_are_rejected():
    transform = DCTTransform(block_size=2, chroma_subsampling=False)
    x = (torch.rand(1, 3, 8, 8) * 2 - 1).half()
    latents = transform.encode(x).latent_dist.sample()
    assert latents.dtype == torch.float16 and transform.decode(latents).sample.dtype == torch.float16
    torch.testing.assert_close(transform.decode(latents).sample, x, atol=5e-3, rtol=0)
    with pytest.raises(ValueError, match="divisible by 2 \\* block_size = 4"):
        transform.encode(torch.zeros(1, 3, 10, 12))
    with pytest.raises(ValueError, match="channels"):
        transform.decode(torch.zeros(1, 5, 2, 2))
    with pytest.raises(ValueError, match="num_dropped"):
        DCTTransform(block_size=2, num_dropped=4)
    with pytest.raises(ValueError, match="does not match"):
        DCTTransform(block_size=2, latent_channels=12)


def test_eta_is_the_signed_dc_bound_and_is_written_as_scaling_factor():
    # Updated for the authors' definition: eta = max(|p1.75|, |p98.25|) of the *signed* Y DC (was p99 of |Y DC|),
    # with pixels centred at 128 (x - 1/255). Exact definitions against numpy are in test_dct_conventions.py.
    transform = DCTTransform(block_size=4)
    assert transform.config.scaling_factor == 0.25  # default 1 / b
    gray = torch.full((2, 3, 16, 16), -0.5)
    gray[1] = 0.25
    eta = estimate_dct_eta(transform, [gray[:1], {"pixel_values": gray[1:]}], tau=99.9)
    # DC of a constant b x b block = b * value; the values are -0.5 - 1/255 and 0.25 - 1/255, the 0.1st
    # percentile lies at the first: |4 * (-0.5 - 1/255)|, to half a histogram bin (b / 2^14)
    assert eta == pytest.approx(4 * (0.5 + 1 / 255), abs=4 / 2**14)
    assert transform.config.scaling_factor == pytest.approx(1 / eta)
    with pytest.raises(ValueError, match="tau"):
        estimate_dct_eta(transform, gray, tau=101)


def test_entropy_weights_are_per_plane_mean_one_and_stored_in_the_config(natural_images, tmp_path):
    # Updated for the authors' definition (trimmed, 100 bins on (-1, 1) after dividing by eta, per-plane mean 1);
    # the numpy reference from the definition is in test_dct_conventions.py.
    transform = DCTTransform(block_size=2)
    images = F.avg_pool2d(natural_images, 4)  # (4, 3, 64, 64)
    eta, weights = estimate_dct_statistics(transform, images)
    assert weights.shape == (24,)
    for plane in (weights[:16], weights[16:20], weights[20:]):
        assert plane.mean().item() == pytest.approx(1.0)
    assert torch.equal(weights[0:16:4], weights[0].expand(4))  # the four Y slots share each frequency's weight
    assert weights[0] > weights[3]  # Y DC carries more information than the highest Y frequency
    assert transform.config.entropy_weights == pytest.approx(weights.tolist())
    transform.save_pretrained(tmp_path)
    loaded = DCTTransform.from_pretrained(tmp_path)
    assert loaded.config.entropy_weights == pytest.approx(weights.tolist())
    assert loaded.config.scaling_factor == pytest.approx(1 / eta)


def test_weighted_mse_applies_channel_weights():
    prediction, target = torch.randn(2, 6, 4, 4), torch.randn(2, 6, 4, 4)
    torch.testing.assert_close(
        dct_weighted_mse(prediction, target, torch.ones(6)), ((prediction - target) ** 2).mean(dim=(1, 2, 3))
    )
    weights = torch.arange(6.0)
    expected = (weights[None, :, None, None] * (prediction - target) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(dct_weighted_mse(prediction, target, weights), expected)


def test_snr_scaled_schedulers_multiply_the_snr_by_c():
    c = 4.0
    base = DDIMScheduler(beta_schedule="linear", clip_sample=False)
    scaled = snr_scaled_scheduler(base, c)
    timesteps = torch.arange(0, 1000, 37)
    ratio = DiffusionObjective("epsilon", scaled).snr(timesteps) / DiffusionObjective("epsilon", base).snr(timesteps)
    torch.testing.assert_close(ratio, torch.full_like(ratio, c), rtol=2e-3, atol=0)  # float32 betas in diffusers
    assert type(scaled) is DDIMScheduler and scaled.config.trained_betas is not None
    base_sigmas = np.linspace(0.95, 0.05, 10)
    flow = FlowMatchEulerDiscreteScheduler(shift=1.5)
    scaled_flow = snr_scaled_scheduler(flow, c)
    assert scaled_flow.config.shift == pytest.approx(1.5 / 2)
    flow.set_timesteps(sigmas=base_sigmas)
    scaled_flow.set_timesteps(sigmas=base_sigmas)  # the same base grid, each shifted by its scheduler
    sigmas, scaled_sigmas = flow.sigmas[:-1].double(), scaled_flow.sigmas[:-1].double()
    torch.testing.assert_close(snr_from_flow_time(scaled_sigmas), c * snr_from_flow_time(sigmas), rtol=1e-5, atol=0)
    dpm = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=1.0)
    scaled_dpm = snr_scaled_scheduler(dpm, c)
    dpm.set_timesteps(10)
    scaled_dpm.set_timesteps(10)
    sigmas, scaled_sigmas = dpm.sigmas[1:-1].double(), scaled_dpm.sigmas[1:-1].double()  # skip 1 and the final 0
    torch.testing.assert_close(snr_from_flow_time(scaled_sigmas), c * snr_from_flow_time(sigmas), rtol=1e-5, atol=0)


def test_dct_transform_round_trips_through_save_and_load(tmp_path):
    transform = DCTTransform(block_size=4, num_dropped=3, chroma_subsampling=False, scaling_factor=0.2)
    transform.save_pretrained(tmp_path)
    loaded = DCTTransform.from_pretrained(tmp_path)
    assert loaded.config.latent_channels == 12 * 13 and loaded.config.shift_factor is None
    keys = ("block_size", "num_dropped", "chroma_subsampling", "in_channels", "scaling_factor", "latent_channels")
    assert {key: loaded.config[key] for key in keys} == {key: transform.config[key] for key in keys}
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.encode(x).latent_dist.mode(), transform.encode(x).latent_dist.mode())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["epsilon", "flow"])
def test_tiny_dct_space_dit_trains_and_its_pipeline_samples_images(kind, natural_images, tmp_path):
    torch.manual_seed(0)
    images = F.avg_pool2d(natural_images, 16)  # (4, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3])
    transform = DCTTransform(block_size=2)
    estimate_dct_eta(transform, images)
    channel_weights = estimate_entropy_weights(transform, images)
    if kind == "epsilon":
        base = DDIMScheduler(beta_schedule="linear", clip_sample=False)
    else:
        base = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=1.0)
    scheduler = snr_scaled_scheduler(base, 2.0)
    objective = DiffusionObjective(kind, scheduler)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=transform.latent_channels,
        num_layers=2,
        sample_size=4,
        patch_size=1,
        num_embeds_ada_norm=1000,
        out_channels=transform.latent_channels,
    )
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=2e-3)
    latents = transform.encode(images).latent_dist.sample() * transform.config.scaling_factor  # (4, 24, 4, 4)

    def losses(generator):
        timesteps = objective.sample_timesteps(4, generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        x_t, model_timesteps = objective.noisy_inputs(latents, noise, timesteps)
        output = transformer(x_t, timestep=model_timesteps, class_labels=labels).sample
        diffusion = dct_weighted_mse(output, objective.target(latents, noise, timesteps), channel_weights)
        x0_hat = objective.predict_x0(output, x_t, timesteps)
        weights = objective.regularizer_weights(timesteps)
        fourier = fourier_loss(x0_hat, latents, reduction="none")
        wavelet = wavelet_loss(x0_hat, latents, levels=2, reduction="none")
        return diffusion.mean(), (weights * fourier).mean(), (weights * wavelet).mean()

    with torch.no_grad():
        before = sum(losses(torch.Generator().manual_seed(123)))
    for step in range(40):
        diffusion, fourier, wavelet = losses(torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        (diffusion + 0.1 * fourier + 0.1 * wavelet).backward()
        optimizer.step()
    with torch.no_grad():
        after = sum(losses(torch.Generator().manual_seed(123)))
    assert torch.isfinite(after) and after < before

    DiTPipeline(transformer=transformer, vae=transform, scheduler=scheduler).save_pretrained(tmp_path)
    pipeline = DiffusionPipeline.from_pretrained(tmp_path)
    assert isinstance(pipeline, DiTPipeline) and isinstance(pipeline.vae, DCTTransform)
    assert pipeline.vae.config.scaling_factor == pytest.approx(transform.config.scaling_factor)
    torch.testing.assert_close(pipeline.scheduler.alphas_cumprod, scheduler.alphas_cumprod)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    samples = pipeline(
        class_labels=[0, 1], guidance_scale=1.5, num_inference_steps=4, generator=generator, output_type="np"
    ).images
    assert samples.shape == (2, 16, 16, 3) and np.isfinite(samples).all()
    assert samples.min() >= 0 and samples.max() <= 1 and samples.std() > 0
