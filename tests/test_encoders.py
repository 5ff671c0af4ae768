"""RepresentationEncoder follows REPA's target pipeline: normalise + bicubic resize without antialias, and DINOv2's
position table resampled once to the token grid with bicubic *with* antialias (timm's convention), on a tiny DINOv2
whose embedding grid (6 x 6) is larger than the token grid (4 x 4)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

from diffusers_spectrum import RepresentationEncoder


MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def dinov2_6x6(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dinov2_6x6")
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=12, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, patch_size=14, image_size=84
    )
    model = Dinov2Model(config).eval()
    with torch.no_grad():  # a position table with structure at every scale, so resampling choices matter
        model.embeddings.position_embeddings.normal_(std=0.5)
    model.save_pretrained(folder)
    BitImageProcessor(image_mean=MEAN, image_std=STD).save_pretrained(folder)
    return folder, model


def test_preprocessing_is_normalise_then_bicubic_without_antialias(dinov2_6x6):
    folder, _ = dinov2_6x6
    encoder = RepresentationEncoder.from_pretrained(str(folder), input_range="[-1,1]")
    images = torch.rand(2, 3, 96, 96) * 2 - 1
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    expected = F.interpolate(((images + 1) / 2 - mean) / std, size=(56, 56), mode="bicubic", align_corners=False)
    torch.testing.assert_close(encoder.preprocess(images, (56, 56)), expected, atol=1e-6, rtol=0)
    antialiased = F.interpolate(((images + 1) / 2 - mean) / std, size=(56, 56), mode="bicubic", antialias=True)
    assert (encoder.preprocess(images, (56, 56)) - antialiased).abs().max() > 1e-2  # the choice is visible


def test_position_table_is_resampled_once_with_antialiased_bicubic(dinov2_6x6):
    folder, model = dinov2_6x6
    encoder = RepresentationEncoder.from_pretrained(str(folder), input_range="[-1,1]")
    images = torch.rand(2, 3, 56, 56) * 2 - 1
    tokens = encoder(images, (4, 4))

    # reference: the 6 x 6 patch rows resized in one go to 4 x 4 (bicubic, antialias), the CLS row kept as it is
    table = model.embeddings.position_embeddings.detach()  # (1, 37, 12)
    grid = table[:, 1:].reshape(1, 6, 6, 12).permute(0, 3, 1, 2)
    patches = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False, antialias=True)
    expected_table = torch.cat([table[:, :1], patches.permute(0, 2, 3, 1).reshape(1, 16, 12)], dim=1)
    reference = copy.deepcopy(model)
    reference.embeddings.position_embeddings = torch.nn.Parameter(expected_table)
    pixels = encoder.preprocess(images, (56, 56))
    with torch.no_grad():
        expected = reference(pixel_values=pixels).last_hidden_state[:, 1:]
        per_call = model(pixel_values=pixels).last_hidden_state[:, 1:]  # HF's per-call interpolation
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)
    assert (tokens - per_call).abs().max() > 1e-3  # differs from interpolating at every call

    # once: the table stays resampled; a second call gives the same tokens and does not resample the resampled table
    torch.testing.assert_close(encoder.backbone.embeddings.position_embeddings.data, expected_table)
    torch.testing.assert_close(encoder(images, (4, 4)), tokens, atol=0, rtol=0)
    # the native grid gets the checkpoint's table back
    native = encoder(torch.rand(1, 3, 84, 84) * 2 - 1, (6, 6))
    assert native.shape == (1, 36, 12)
    torch.testing.assert_close(encoder.backbone.embeddings.position_embeddings.data, table)
