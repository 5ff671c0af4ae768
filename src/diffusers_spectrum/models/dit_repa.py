"""`REPADiTTransformer2DModel`: diffusers' `DiTTransformer2DModel` with a REPA projector (Yu et al., 2024).

Called as the parent is, it *is* a `DiTTransformer2DModel` (same modules, same outputs), so `DiTPipeline` and every
sampler drive it unchanged. `forward(..., return_repa_tokens=True)` also returns the hidden tokens after block
`repa_depth`, mapped by the projector to the target encoder's width, from the same forward pass. Training also gets
the DiT paper's initialisation (`initialize_weights`) and one label dropout per sample (`drop_labels`) instead of
the stock per-block dropout, which draws a different mask in every block.
"""

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DiTTransformer2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config

# diffusers' pipeline loader resolves a custom component by importing the module recorded in `model_index.json`
# (this module's path) and looking the base classes up on it, so they must be attributes of this module.
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput, logging
from torch import nn


__all__ = [
    "ConfigMixin",
    "ModelMixin",
    "REPADiTTransformer2DModel",
    "REPADiTTransformer2DModelOutput",
    "REPA_DEFAULTS",
    "check_class_labels",
    "default_repa_depth",
    "drop_labels",
]

logger = logging.get_logger(__name__)

REPA_PROJECTORS = ("mlp", "conv")

# The authors' per-size alignment depth (1-based block whose output is aligned), keyed by the transformer's depth:
# REPA (Yu et al. 2024) aligns after block 4 of SiT-B/2 (12 blocks) and block 8 of SiT-L/2 (24) and SiT-XL/2 (28);
# iREPA's SiT-B/2 runs use 4 as well. DiT-S/2 (12 blocks, not in REPA) shares B's depth.
REPA_DEPTH_BY_NUM_LAYERS = {12: 4, 24: 8, 28: 8}

# The authors' projector defaults. REPA: MLP projector, loss weight 0.5. iREPA (Singh et al. 2025): a 3 x 3
# convolution over the token grid (the paper's and README's kernel; its SiT model and JiT script default to 3, its
# LDM script's flag to 1), loss weight 1.0 (`configs/irepa.yaml`), targets spatially normalised with alpha = 0.6.
REPA_DEFAULTS = {
    "mlp": {"loss_weight": 0.5, "projector_dim": 2048},
    "conv": {"loss_weight": 1.0, "kernel_size": 3, "spatial_norm_alpha": 0.6},
}


def default_repa_depth(num_layers: int) -> int:
    """The authors' alignment depth for a transformer with `num_layers` blocks: 4 for 12 blocks (SiT-B/2), 8 for 24
    (SiT-L/2) and 28 (SiT-XL/2) (`REPA_DEPTH_BY_NUM_LAYERS`); other depths keep B/L's one third, at least block 1.

    Raises:
        ValueError: `num_layers` is not a positive integer.
    """
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
        raise ValueError(f"default_repa_depth: `num_layers` must be a positive integer, got {num_layers!r}.")
    return REPA_DEPTH_BY_NUM_LAYERS.get(num_layers, max(1, num_layers // 3))


def check_class_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Validate class labels where data enters (dataset, sampling request), not in the model's forward: this reads
    the values (a host sync on accelerators).

    Args:
        labels: `(B,)` integer labels; `num_classes` is the null (unconditional) class.
        num_classes: `num_embeds_ada_norm` of the transformer (1000 for `DiTPipeline`).

    Raises:
        TypeError: not a 1-D integer tensor.
        ValueError: a value outside [0, num_classes].
    """
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError("class_labels must be an integer tensor of shape (B,).")
    if labels.ndim != 1:
        raise ValueError(f"class_labels must have shape (B,), got {tuple(labels.shape)}; flatten (B, 1) labels.")
    if labels.numel() and bool(((labels < 0) | (labels > num_classes)).any()):
        raise ValueError(
            f"class_labels must lie in [0, {num_classes}] ({num_classes} = null class), got values in "
            f"[{int(labels.min())}, {int(labels.max())}]; remap dataset labels to 0..K-1 with K <= {num_classes}."
        )


@dataclass
class REPADiTTransformer2DModelOutput(BaseOutput):
    """Output of [`REPADiTTransformer2DModel`] called with `return_repa_tokens=True`.

    Args:
        sample (`torch.Tensor` of shape `(B, C_out, H, W)`): the usual DiT prediction.
        repa_tokens (`torch.Tensor` of shape `(B, N, repa_target_dim)`): projected hidden tokens after block
            `repa_depth`, row-major over the `(H / p, W / p)` token grid.
    """

    sample: torch.Tensor
    repa_tokens: torch.Tensor


def drop_labels(
    labels: torch.Tensor,
    dropout_prob: float,
    generator: torch.Generator | None = None,
    null_class: int = 1000,
) -> torch.Tensor:
    """Replace each label by `null_class` with probability `dropout_prob`, one draw per sample (classifier-free
    guidance training, Ho & Salimans 2022). `DiTPipeline` hard-codes the null class as 1000.

    Args:
        labels: `(B,)` integer class labels.
        dropout_prob: probability in [0, 1].
        generator: drives the draw (its device is used for the random numbers).

    Returns:
        `(B,)` labels on the input's device.
    """
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.ndim != 1:
        raise TypeError("drop_labels: `labels` must be a 1-D integer tensor of shape (B,).")
    if not 0.0 <= dropout_prob <= 1.0:
        raise ValueError(f"drop_labels: `dropout_prob` must be in [0, 1], got {dropout_prob}.")
    if dropout_prob == 0.0:
        return labels
    device = generator.device if generator is not None else labels.device
    drop = torch.rand(labels.shape[0], generator=generator, device=device).to(labels.device) < dropout_prob
    return torch.where(drop, torch.full_like(labels, null_class), labels)


class REPADiTTransformer2DModel(DiTTransformer2DModel):
    r"""A [`DiTTransformer2DModel`] with a REPA projector on the hidden tokens after block `repa_depth`.

    All parent arguments are listed (and passed on by keyword) so that diffusers records and reloads every one. The
    label table has `num_embeds_ada_norm` classes plus the null class `num_embeds_ada_norm` (keep 1000 for
    `DiTPipeline`, which uses 1000 as the null class); the stock per-block label dropout is disabled, use
    [`drop_labels`] once per sample instead.

    Args:
        repa_depth (`int` or `"auto"`, *optional*, defaults to `"auto"`): 1-based block after which tokens are
            aligned. `"auto"` = [`default_repa_depth`] of `num_layers` (REPA: 4 for SiT-B/2, 8 for SiT-L/2 and
            SiT-XL/2), recorded as an integer in the config, so any stock DiT config loads. `None` = no projector
            (plain DiT with the label fixes).
        repa_target_dim (`int`, *optional*, defaults to 768): the target encoder's feature width (DINOv2-B: 768).
        repa_projector_dim (`int`, *optional*, defaults to 2048): hidden width of the MLP projector (REPA: 2048).
        repa_projector (`str`, *optional*, defaults to `"mlp"`): `"mlp"` = Linear-SiLU-Linear-SiLU-Linear per token
            (REPA); `"conv"` = one `repa_kernel_size` convolution over the token grid (iREPA).
        repa_kernel_size (`int`, *optional*, defaults to 3): kernel side of the `"conv"` projector (odd; iREPA: 3).
    """

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 72,
        in_channels: int = 4,
        out_channels: int | None = None,
        num_layers: int = 28,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        attention_bias: bool = True,
        sample_size: int = 32,
        patch_size: int = 2,
        activation_fn: str = "gelu-approximate",
        num_embeds_ada_norm: int | None = 1000,
        upcast_attention: bool = False,
        norm_type: str = "ada_norm_zero",
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-5,
        repa_depth: int | str | None = "auto",
        repa_target_dim: int = 768,
        repa_projector_dim: int = 2048,
        repa_projector: str = "mlp",
        repa_kernel_size: int = 3,
    ):
        super().__init__(
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=out_channels,
            num_layers=num_layers,
            dropout=dropout,
            norm_num_groups=norm_num_groups,
            attention_bias=attention_bias,
            sample_size=sample_size,
            patch_size=patch_size,
            activation_fn=activation_fn,
            num_embeds_ada_norm=num_embeds_ada_norm,
            upcast_attention=upcast_attention,
            norm_type=norm_type,
            norm_elementwise_affine=norm_elementwise_affine,
            norm_eps=norm_eps,
        )
        # `DiTPipeline` reads `config.out_channels` to detect learned sigma, so record it explicitly.
        if out_channels is None:
            self.register_to_config(out_channels=in_channels)
        # One label dropout per sample is drawn outside the model (`drop_labels`); the stock embedders would each
        # draw their own mask in train mode. The table keeps its null row (index `num_embeds_ada_norm`).
        for block in self.transformer_blocks:
            block.norm1.emb.class_embedder.dropout_prob = 0.0

        self.projector = None
        if repa_depth is None:
            return
        if repa_depth == "auto":
            repa_depth = default_repa_depth(num_layers)
            self.register_to_config(repa_depth=repa_depth)
        if not isinstance(repa_depth, int) or not 1 <= repa_depth <= num_layers:
            raise ValueError(
                f"repa_depth must be in [1, num_layers={num_layers}] (the 1-based block whose output is aligned), "
                f"got {repa_depth}; pass e.g. repa_depth={max(1, num_layers // 3)} or None to disable REPA."
            )
        if repa_target_dim < 1 or repa_projector_dim < 1:
            raise ValueError(
                f"repa_target_dim and repa_projector_dim must be positive, got {repa_target_dim} and "
                f"{repa_projector_dim}."
            )
        if repa_projector == "mlp":
            self.projector = nn.Sequential(
                nn.Linear(self.inner_dim, repa_projector_dim),
                nn.SiLU(),
                nn.Linear(repa_projector_dim, repa_projector_dim),
                nn.SiLU(),
                nn.Linear(repa_projector_dim, repa_target_dim),
            )
        elif repa_projector == "conv":
            if repa_kernel_size < 1 or repa_kernel_size % 2 == 0:
                raise ValueError(f"repa_kernel_size must be a positive odd integer, got {repa_kernel_size}.")
            self.projector = nn.Conv2d(
                self.inner_dim, repa_target_dim, repa_kernel_size, padding=repa_kernel_size // 2
            )
        else:
            raise ValueError(f"repa_projector must be one of {REPA_PROJECTORS}, got {repa_projector!r}.")

    # ------------------------------------------------------------------------------------------------------------
    @property
    def null_class(self) -> int:
        """Index of the null (unconditional) label: `num_embeds_ada_norm` (1000 for `DiTPipeline`)."""
        return int(self.config.num_embeds_ada_norm)

    def _check_inputs(self, hidden_states: torch.Tensor, class_labels: torch.Tensor | None) -> None:
        """Shape, dtype and type checks on Python metadata only (no host sync): the stock forward silently changes
        the batch for non-square latents and crops sizes not divisible by the patch."""
        if not isinstance(hidden_states, torch.Tensor) or hidden_states.ndim != 4:
            raise ValueError(
                f"hidden_states must be a (B, {self.config.in_channels}, H, W) tensor, got "
                f"{tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else type(hidden_states)}."
            )
        batch, channels, height, width = hidden_states.shape
        p = self.config.patch_size
        if channels != self.config.in_channels or height != width or height % p:
            side = self.config.sample_size
            raise ValueError(
                f"hidden_states must have shape (B, {self.config.in_channels}, S, S): square, with S divisible by "
                f"patch_size={p} (e.g. ({batch}, {self.config.in_channels}, {side}, {side})), got "
                f"{tuple(hidden_states.shape)}; resize or crop the latents."
            )
        model_dtype = self.pos_embed.proj.weight.dtype
        if hidden_states.dtype != model_dtype and not torch.is_autocast_enabled(hidden_states.device.type):
            raise TypeError(
                f"hidden_states dtype {hidden_states.dtype} differs from the model's {model_dtype}; pass "
                f"hidden_states.to({model_dtype}), cast the model with .to({hidden_states.dtype}), or run under "
                "torch.autocast."
            )
        if class_labels is None:
            raise ValueError(
                "class_labels are required (adaLN-zero conditioning); for unconditional data pass zeros, and "
                f"{self.null_class} for the null class."
            )
        if not isinstance(class_labels, torch.Tensor) or class_labels.dtype.is_floating_point:
            raise TypeError("class_labels must be an integer tensor of shape (B,).")
        if class_labels.shape != (batch,):
            raise ValueError(
                f"class_labels must have shape ({batch},) (one label per latent), got {tuple(class_labels.shape)}; "
                "flatten (B, 1) labels with labels.view(-1)."
            )

    def project_tokens(self, tokens: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Map hidden tokens `(B, N, inner_dim)` to `(B, N, repa_target_dim)` with the projector."""
        if self.projector is None:
            raise ValueError("This model has no REPA projector (repa_depth=None); set repa_depth to use REPA.")
        if self.config.repa_projector == "mlp":
            return self.projector(tokens)
        h, w = grid_hw
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)  # (B, D, h, w)
        return self.projector(grid).flatten(2).transpose(1, 2)  # (B, N, repa_target_dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.LongTensor | None = None,
        class_labels: torch.LongTensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
        return_repa_tokens: bool = False,
    ):
        """The parent's forward; with `return_repa_tokens` also the projected tokens of block `repa_depth`.

        Args:
            hidden_states: `(B, C, H, W)` noisy latents.
            timestep: `(B,)` timesteps (integers or floats, e.g. `t * 1000` for flow matching).
            class_labels: `(B,)` labels in [0, `num_embeds_ada_norm`] (the last one is the null class). Their values
                are not read here (that would sync the host every step): validate them where data enters with
                [`check_class_labels`]; out-of-range values fail inside the embedding lookup.
            return_repa_tokens: also return `repa_tokens` `(B, N, repa_target_dim)` from the same pass.

        Returns:
            Exactly the parent's output when `return_repa_tokens` is False; otherwise
            [`REPADiTTransformer2DModelOutput`] (or the tuple `(sample, repa_tokens)` with `return_dict=False`).
        """
        self._check_inputs(hidden_states, class_labels)
        if not return_repa_tokens:
            return super().forward(hidden_states, timestep, class_labels, cross_attention_kwargs, return_dict)
        if self.projector is None:
            raise ValueError("return_repa_tokens=True needs a REPA projector; this model has repa_depth=None.")

        # Capture the output of block `repa_depth` with a forward hook: one pass through the parent's forward. With
        # diffusers' (non-reentrant) gradient checkpointing the captured tensor is the checkpoint's output, so
        # gradients flow through it; the hook is gone before backward recomputes the block.
        captured = []
        block = self.transformer_blocks[self.config.repa_depth - 1]
        handle = block.register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            sample = super().forward(hidden_states, timestep, class_labels, cross_attention_kwargs).sample
        finally:
            handle.remove()
        grid_hw = (hidden_states.shape[-2] // self.patch_size, hidden_states.shape[-1] // self.patch_size)
        repa_tokens = self.project_tokens(captured[0], grid_hw)  # (B, N, repa_target_dim)
        if not return_dict:
            return (sample, repa_tokens)
        return REPADiTTransformer2DModelOutput(sample=sample, repa_tokens=repa_tokens)

    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def initialize_weights(self) -> "REPADiTTransformer2DModel":
        """The DiT paper's initialisation (Peebles & Xie, 2023, Sec. 3.2) for training from scratch; returns self."""
        # Xavier-uniform linear layers with zero bias (attention, MLPs, projector)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # Patch embedding as a linear layer over the flattened patch
        proj = self.pos_embed.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        for block in self.transformer_blocks:
            emb = block.norm1.emb
            # Label table and timestep MLP: normal(0, 0.02)
            nn.init.normal_(emb.class_embedder.embedding_table.weight, std=0.02)
            nn.init.normal_(emb.timestep_embedder.linear_1.weight, std=0.02)
            nn.init.normal_(emb.timestep_embedder.linear_2.weight, std=0.02)
            # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(block.norm1.linear.weight)
            nn.init.zeros_(block.norm1.linear.bias)
        # Zero final modulation and output layer: the model starts by predicting 0
        for layer in (self.proj_out_1, self.proj_out_2):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        return self

    # ------------------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load our checkpoints or a stock `DiTTransformer2DModel` folder / Hub id.

        A stock checkpoint has no projector weights: they are freshly initialised (PyTorch defaults), never left on
        the meta device. Pass `repa_depth=...` etc. to choose the projector for a stock checkpoint.
        """
        model = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if model.projector is not None and any(p.is_meta for p in model.projector.parameters()):
            # diffusers' low-memory loader leaves weights absent from the checkpoint on the meta device.
            reference = model.pos_embed.proj.weight
            model.projector.to_empty(device=reference.device)
            for module in model.projector.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            model.projector.to(dtype=reference.dtype)
            logger.info("Checkpoint has no REPA projector weights; initialised a fresh projector.")
        meta = [name for name, p in model.named_parameters() if p.is_meta]
        if meta:
            raise ValueError(f"from_pretrained: weights {meta[:5]} are missing from {pretrained_model_name_or_path}.")
        return model
