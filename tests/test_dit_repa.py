"""REPA DiT, label handling, repa_loss and the frozen representation encoder, on tiny seeded CPU models."""

import logging

import pytest
import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

from diffusers_spectrum import (
    REPADiTTransformer2DModel,
    REPADiTTransformer2DModelOutput,
    RepresentationEncoder,
    drop_labels,
    repa_loss,
)
from diffusers_spectrum.models.dit_repa import check_class_labels, default_repa_depth


TINY = dict(
    num_attention_heads=2,
    attention_head_dim=8,
    in_channels=4,
    num_layers=3,
    sample_size=8,
    patch_size=2,
    norm_num_groups=1,
    repa_depth=2,
    repa_target_dim=12,
    repa_projector_dim=32,
)
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _model(**overrides) -> REPADiTTransformer2DModel:
    torch.manual_seed(0)
    model = REPADiTTransformer2DModel(**{**TINY, **overrides})
    # Non-zero random weights everywhere so that every path matters (diffusers' default init is not adaLN-zero).
    return model.eval()


def _inputs(batch: int = 2, channels: int = 4, size: int = 8):
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, channels, size, size, generator=generator)
    timesteps = torch.randint(0, 1000, (batch,), generator=generator)
    labels = torch.tensor([3, 1000][:batch] + [0] * max(0, batch - 2))
    return latents, timesteps, labels


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory):
    """A 2-layer random DINOv2 (patch 14, width 12) and its image processor, saved like a Hub checkpoint."""
    folder = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=12, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, patch_size=14, image_size=56
    )
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD).save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------------
# Forward contract


def test_plain_call_returns_the_parents_output_and_repa_call_adds_tokens_from_the_same_pass():
    model = _model()
    latents, timesteps, labels = _inputs()
    plain = model(latents, timesteps, labels)
    assert type(plain) is Transformer2DModelOutput
    assert isinstance(model(latents, timesteps, labels, return_dict=False), tuple)
    calls = []
    model.transformer_blocks[0].register_forward_hook(lambda *args: calls.append(1))
    out = model(latents, timesteps, labels, return_repa_tokens=True)
    assert len(calls) == 1  # one pass through the blocks
    assert isinstance(out, REPADiTTransformer2DModelOutput)
    assert torch.equal(out.sample, plain.sample)
    assert out.repa_tokens.shape == (2, 16, TINY["repa_target_dim"])
    sample, tokens = model(latents, timesteps, labels, return_dict=False, return_repa_tokens=True)
    assert torch.equal(tokens, out.repa_tokens)


@pytest.mark.parametrize("projector", ["mlp", "conv"])
def test_repa_tokens_equal_a_manual_run_of_the_first_k_blocks(projector):
    model = _model(repa_projector=projector)
    latents, timesteps, labels = _inputs()
    hidden = model.pos_embed(latents)  # (B, N, D)
    for block in model.transformer_blocks[: TINY["repa_depth"]]:
        hidden = block(hidden, timestep=timesteps, class_labels=labels)
    if projector == "mlp":
        expected = model.projector(hidden)
    else:
        grid = hidden.transpose(1, 2).reshape(2, -1, 4, 4)
        expected = model.projector(grid).flatten(2).transpose(1, 2)
    out = model(latents, timesteps, labels, return_repa_tokens=True)
    torch.testing.assert_close(out.repa_tokens, expected, rtol=0, atol=0)


def test_gradient_checkpointing_keeps_repa_tokens_and_gradients():
    latents, timesteps, labels = _inputs()
    target = torch.randn(2, 16, TINY["repa_target_dim"])
    grads = []
    for checkpointing in (False, True):
        model = _model().train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        out = model(latents, timesteps, labels, return_repa_tokens=True)
        (out.sample.square().mean() + 0.5 * repa_loss(out.repa_tokens, target)).backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any(name.startswith("projector.") for name in grads[1])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# Checkpoints and the stock architecture


@pytest.mark.parametrize("out_channels", [None, 8])  # learned sigma off / on
def test_stock_dit_loaded_from_the_same_folder_gives_bit_identical_outputs(tmp_path, out_channels):
    model = _model(out_channels=out_channels)
    model.save_pretrained(tmp_path)
    stock = DiTTransformer2DModel.from_pretrained(tmp_path).eval()
    assert type(stock) is DiTTransformer2DModel
    latents, timesteps, labels = _inputs()
    with torch.no_grad():
        ours = model(latents, timesteps, labels).sample
        theirs = stock(latents, timesteps, labels).sample
    assert ours.shape[1] == (out_channels or 4)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("projector", ["mlp", "conv"])
def test_save_load_round_trip_keeps_config_projector_and_outputs(tmp_path, projector):
    model = _model(repa_projector=projector, repa_kernel_size=3)
    model.save_pretrained(tmp_path)
    loaded = REPADiTTransformer2DModel.from_pretrained(tmp_path).eval()
    assert loaded.config.repa_projector == projector and loaded.config.repa_depth == TINY["repa_depth"]
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    latents, timesteps, labels = _inputs()
    with torch.no_grad():
        a = model(latents, timesteps, labels, return_repa_tokens=True)
        b = loaded(latents, timesteps, labels, return_repa_tokens=True)
    assert torch.equal(a.sample, b.sample) and torch.equal(a.repa_tokens, b.repa_tokens)


def test_stock_dit_checkpoint_loads_with_a_fresh_projector_and_no_meta_tensors(tmp_path):
    config = {k: v for k, v in TINY.items() if not k.startswith("repa_")}
    torch.manual_seed(0)
    stock = DiTTransformer2DModel(**config)
    stock.save_pretrained(tmp_path)
    model = REPADiTTransformer2DModel.from_pretrained(
        tmp_path, repa_depth=1, repa_target_dim=12, repa_projector_dim=32
    )
    assert not any(p.is_meta for p in model.parameters())
    assert all(torch.isfinite(p).all() and p.abs().sum() > 0 for p in model.projector.parameters() if p.ndim > 1)
    assert torch.equal(model.proj_out_2.weight, stock.proj_out_2.weight)
    latents, timesteps, labels = _inputs()
    out = model.eval()(latents, timesteps, labels, return_repa_tokens=True)
    assert torch.isfinite(out.repa_tokens).all()


def test_initialize_weights_follows_the_dit_paper():
    model = _model().initialize_weights()
    for block in model.transformer_blocks:
        assert not block.norm1.linear.weight.any() and not block.norm1.linear.bias.any()  # adaLN-zero
    assert not model.proj_out_2.weight.any() and not model.proj_out_1.weight.any()
    emb_std = model.transformer_blocks[0].norm1.emb.class_embedder.embedding_table.weight.std().item()
    assert 0.015 < emb_std < 0.025
    latents, timesteps, labels = _inputs()
    assert not model(latents, timesteps, labels).sample.any()  # zero output layer: starts by predicting 0


# ------------------------------------------------------------------------------------------------
# Labels


def test_label_dropout_is_one_draw_per_sample_shared_by_every_block():
    model = _model().train()
    seen = []
    for block in model.transformer_blocks:
        table = block.norm1.emb.class_embedder.embedding_table  # sees the labels after any internal dropout
        table.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    labels = torch.arange(64) % 10
    dropped = drop_labels(labels, 0.5, generator=torch.Generator().manual_seed(0))
    model(torch.randn(64, 4, 8, 8), torch.full((64,), 10), dropped)
    # Every block (and the output layer, which reuses block 0's embedder) sees exactly the same labels.
    assert len(seen) == len(model.transformer_blocks) + 1
    assert all(torch.equal(s, dropped) for s in seen)
    is_null = dropped == 1000
    assert 10 < int(is_null.sum()) < 54 and torch.equal(dropped[~is_null], labels[~is_null])
    assert torch.equal(drop_labels(labels, 0.5, generator=torch.Generator().manual_seed(0)), dropped)
    assert torch.equal(drop_labels(labels, 1.0), torch.full_like(labels, 1000))
    assert drop_labels(labels, 0.0) is labels


def test_stock_dit_draws_a_different_label_dropout_in_every_block_which_we_disable():
    torch.manual_seed(0)
    stock = DiTTransformer2DModel(**{k: v for k, v in TINY.items() if not k.startswith("repa_")}).train()
    seen = []
    for block in stock.transformer_blocks:
        table = block.norm1.emb.class_embedder.embedding_table
        table.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    stock(torch.randn(64, 4, 8, 8), torch.full((64,), 10), torch.arange(64) % 10)
    assert not torch.equal(seen[0], seen[1])  # inconsistent conditioning across blocks
    assert all(b.norm1.emb.class_embedder.dropout_prob == 0 for b in _model().transformer_blocks)


def test_unconditional_and_ten_class_labels_run_and_bad_labels_raise():
    # Out-of-range values are caught by `check_class_labels` where data enters: forward no longer reads label
    # values (that was a host sync on every training and sampling step).
    model = _model()
    latents, timesteps, _ = _inputs()
    for labels in (torch.zeros(2, dtype=torch.long), torch.tensor([9, 1000])):
        assert torch.isfinite(model(latents, timesteps, labels).sample).all()
        check_class_labels(labels, model.null_class)
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 1000\]"):
        check_class_labels(torch.tensor([0, 1001]), 1000)
    with pytest.raises(ValueError, match="class_labels must lie"):
        check_class_labels(torch.tensor([-1, 0]), 1000)
    with pytest.raises(TypeError, match="integer"):
        check_class_labels(torch.tensor([0.0, 1.0]), 1000)
    with pytest.raises(ValueError, match="class_labels are required"):
        model(latents, timesteps, None)
    with pytest.raises(TypeError, match="integer"):
        model(latents, timesteps, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="dropout_prob"):
        drop_labels(torch.tensor([1, 2]), 1.5)


def test_forward_reads_no_label_values():
    # A label tensor whose values cannot be read (meta device) passes the checks: they use shapes and dtypes only.
    model = _model()
    latents, _, _ = _inputs()
    model._check_inputs(latents, torch.empty(2, dtype=torch.long, device="meta"))


def test_bad_latent_shapes_label_shapes_and_dtypes_raise_clear_errors():
    model = _model()
    latents, timesteps, labels = _inputs()
    # the stock forward returns (3, 4, 8, 8) for (2, 4, 8, 12) and (2, 4, 8, 8) for (2, 4, 9, 9)
    for shape in ((2, 4, 8, 12), (2, 4, 9, 9), (2, 3, 8, 8)):
        with pytest.raises(ValueError, match=r"must have shape \(B, 4, S, S\).*\(2, 4, 8, 8\)"):
            model(torch.randn(shape), timesteps, labels)
    with pytest.raises(ValueError, match=r"shape \(2,\).*\(2, 1\)"):
        model(latents, timesteps, labels[:, None])
    with pytest.raises(TypeError, match="torch.float16 differs from the model's torch.float32"):
        model(latents.half(), timesteps, labels)
    assert model(torch.randn(2, 4, 4, 4), timesteps, labels).sample.shape == (2, 4, 4, 4)  # other square sizes


def test_default_repa_depth_follows_the_authors_per_size_table():
    assert [default_repa_depth(n) for n in (12, 24, 28)] == [4, 8, 8]  # SiT-B/2, SiT-L/2, SiT-XL/2
    assert [default_repa_depth(n) for n in (1, 2, 3, 6)] == [1, 1, 1, 2]
    assert _model(repa_depth="auto").config.repa_depth == 1  # 3 layers; recorded as an integer
    with pytest.raises(ValueError, match="num_layers"):
        default_repa_depth(0)


def test_a_stock_two_layer_dit_folder_loads(tmp_path):
    torch.manual_seed(0)
    config = {k: v for k, v in TINY.items() if not k.startswith("repa_")}
    stock = DiTTransformer2DModel(**{**config, "num_layers": 2}).eval()
    stock.save_pretrained(tmp_path)
    model = REPADiTTransformer2DModel.from_pretrained(tmp_path).eval()
    assert model.config.repa_depth == 1 and model.projector is not None
    latents, timesteps, labels = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(latents, timesteps, labels).sample, stock(latents, timesteps, labels).sample)
        assert model(latents, timesteps, labels, return_repa_tokens=True).repa_tokens.shape == (2, 16, 768)
    model.save_pretrained(tmp_path / "ours")
    assert REPADiTTransformer2DModel.from_pretrained(tmp_path / "ours").config.repa_depth == 1


def test_bad_repa_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="repa_depth must be in \\[1, num_layers=3\\]"):
        _model(repa_depth=4)
    with pytest.raises(ValueError, match="repa_depth must be in"):
        _model(repa_depth=0)
    with pytest.raises(ValueError, match="repa_projector must be one of"):
        _model(repa_projector="attention")
    with pytest.raises(ValueError, match="odd"):
        _model(repa_projector="conv", repa_kernel_size=2)
    plain = _model(repa_depth=None)
    latents, timesteps, labels = _inputs()
    with pytest.raises(ValueError, match="repa_depth=None"):
        plain(latents, timesteps, labels, return_repa_tokens=True)


# ------------------------------------------------------------------------------------------------
# Loss and encoder


def test_repa_loss_is_minus_one_on_identical_inputs_and_matches_cosine_definition():
    x = torch.randn(3, 5, 7)
    torch.testing.assert_close(repa_loss(x, x), torch.tensor(-1.0))
    torch.testing.assert_close(repa_loss(x, -2 * x), torch.tensor(1.0))
    y = torch.randn(3, 5, 7)
    expected = -F.cosine_similarity(x, y, dim=-1).mean(dim=1)
    torch.testing.assert_close(repa_loss(x, y, reduction="none"), expected)
    with pytest.raises(ValueError, match="repa_target_dim=9"):
        repa_loss(x, torch.randn(3, 5, 9))
    with pytest.raises(ValueError, match="token grids differ"):
        repa_loss(x, torch.randn(3, 6, 7))


def test_encoder_returns_dinov2_patch_tokens_on_the_dit_grid(dinov2_folder):
    encoder = RepresentationEncoder.from_pretrained(str(dinov2_folder), input_range="[-1,1]")
    assert encoder.feature_dim == 12 and encoder.patch_size == 14
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    tokens = encoder(images, (4, 4))
    # Independent path: the same resize and normalisation by hand, CLS token dropped.
    pixels = F.interpolate((images + 1) / 2, size=(56, 56), mode="bicubic", align_corners=False)
    pixels = (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    reference = Dinov2Model.from_pretrained(dinov2_folder).eval()(pixel_values=pixels).last_hidden_state[:, 1:]
    assert tokens.shape == (2, 16, 12) and not tokens.requires_grad
    torch.testing.assert_close(tokens, reference, atol=1e-5, rtol=1e-4)
    encoder.train()
    assert not encoder.backbone.training and not any(p.requires_grad for p in encoder.parameters())
    zero_one = RepresentationEncoder.from_pretrained(str(dinov2_folder), input_range="[0,1]")
    torch.testing.assert_close(zero_one((images + 1) / 2, (4, 4)), tokens, atol=1e-5, rtol=1e-4)


def test_encoder_interpolates_unmatched_grids_once_logged_or_raises_when_not_allowed(dinov2_folder, caplog):
    encoder = RepresentationEncoder.from_pretrained(str(dinov2_folder), resolution=56)  # fixed 4 x 4 grid
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    with caplog.at_level(logging.WARNING, logger="diffusers_spectrum.models.encoders"):
        first = encoder(images, (8, 8))
        encoder(images, (8, 8))
    assert first.shape == (1, 64, 12)
    assert sum("interpolating features" in r.getMessage() for r in caplog.records) == 1
    strict = RepresentationEncoder.from_pretrained(
        str(dinov2_folder), resolution=56, allow_feature_interpolation=False
    )
    with pytest.raises(ValueError, match="cannot match the requested grid"):
        strict(images, (8, 8))
    with pytest.raises(ValueError, match="grid_size"):
        encoder(images, (0, 4))


def test_repa_gradient_reaches_transformer_and_projector_but_not_the_encoder(dinov2_folder):
    encoder = RepresentationEncoder.from_pretrained(str(dinov2_folder))
    model = _model(repa_target_dim=encoder.feature_dim).train()
    encoder.check_transformer(model)
    with pytest.raises(ValueError, match="repa_target_dim=12"):
        encoder.check_transformer(_model(repa_target_dim=16))
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    target = encoder(images, (4, 4))
    latents, timesteps, labels = _inputs()
    loss = repa_loss(model(latents, timesteps, labels, return_repa_tokens=True).repa_tokens, target)
    loss.backward()
    assert model.projector[0].weight.grad.abs().sum() > 0
    assert model.transformer_blocks[0].attn1.to_q.weight.grad.abs().sum() > 0
    assert model.transformer_blocks[2].attn1.to_q.weight.grad is None  # after repa_depth: untouched
    assert all(p.grad is None for p in encoder.parameters())


@pytest.mark.parametrize("family", ["dinov2_with_registers", "clip", "siglip"])
def test_encoder_drops_cls_and_register_tokens_for_other_vision_backbones(tmp_path, family):
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    config_cls, model_cls, prefix = {
        "dinov2_with_registers": (Dinov2WithRegistersConfig, Dinov2WithRegistersModel, 1 + 4),
        "clip": (CLIPVisionConfig, CLIPVisionModel, 1),
        "siglip": (SiglipVisionConfig, SiglipVisionModel, 0),
    }[family]
    torch.manual_seed(0)
    sizes = dict(hidden_size=12, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24)
    model = model_cls(config_cls(patch_size=8, image_size=32, **sizes)).eval()
    model.save_pretrained(tmp_path)
    CLIPImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(tmp_path)
    encoder = RepresentationEncoder.from_pretrained(str(tmp_path), input_range="[-1,1]")
    images = torch.rand(2, 3, 24, 24) * 2 - 1
    tokens = encoder(images, (2, 3))  # 16 x 24 input: not the checkpoint's 32 x 32
    # REPA's preprocessing: bicubic without antialias (updated: was antialiased when shrinking)
    pixels = F.interpolate((images + 1) / 2, size=(16, 24), mode="bicubic", align_corners=False)
    kwargs = {} if family.startswith("dinov2") else {"interpolate_pos_encoding": True}
    hidden = model(pixel_values=(pixels - 0.5) / 0.5, **kwargs).last_hidden_state
    assert hidden.shape[1] == prefix + 6
    if family == "clip":  # CLIP normalises only its pooled token; we apply the same final LayerNorm to patches
        hidden = getattr(model, "vision_model", model).post_layernorm(hidden)
    torch.testing.assert_close(tokens, hidden[:, prefix:], atol=1e-5, rtol=1e-4)
