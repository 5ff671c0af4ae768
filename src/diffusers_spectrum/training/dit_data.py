"""Where the DiT's diffusion inputs come from, resolved once from its flags: cached latents (`--latent_dataset`),
images through a VAE, or images in DCT space (DCTdiff); the labels and the REPA targets (cached, computed online by a
frozen encoder, or none). `DiTData(DiTDataSettings.of(args), Loading.of(args), device)` is complete when
constructed: the latent convention, shape and classes, DCTdiff's eta and entropy weights, the REPA mode and its
encoder."""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import torch

from .args import Loading, _FromFlags


__all__ = ["LATENT_CONFIG_KEYS", "DiTData", "DiTDataSettings", "standardize_latents"]

logger = logging.getLogger(__name__)

# What standardises raw VAE latents for diffusion (the family convention; see `models.latent_convention`).
LATENT_CONFIG_KEYS = ("scaling_factor", "shift_factor", "latents_mean", "latents_std")


def standardize_latents(
    latents: torch.Tensor,
    latent_config: dict,
    latents_std: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Diffusion input from raw VAE latents: optionally sample `mean + std * eps` (cached posterior), then the VAE
    family's standardisation (`models.latents_from_vae`: `z * scale`, `(z - shift) * scale` or per channel).

    Args:
        latents: `(B, C, h, w)` posterior mean (or sample), unscaled.
        latent_config: `scaling_factor`, `shift_factor` and (per-channel families) `latents_mean` / `latents_std`,
            from the VAE config or the cache's `cache_info.json`.
        latents_std: `(B, C, h, w)` posterior std: when given a fresh posterior sample is drawn with `generator`.
    """
    from ..models.latent_conventions import latents_from_vae

    if latents_std is not None:
        noise = torch.randn(latents.shape, generator=generator, device=generator.device if generator else "cpu")
        latents = latents + latents_std * noise.to(latents.device, latents.dtype)
    return latents_from_vae(latents, latent_config)


@dataclasses.dataclass(frozen=True)
class DiTDataSettings(_FromFlags):
    """Where the DiT's data comes from and how it is read (the trainer's flags of the same names): cached latents or
    images through a VAE, DCT or pixel space with DCTdiff's settings, labels, crops, and the REPA targets."""

    latent_dataset: str | None
    pretrained_vae: str | None
    vae_subfolder: str | None
    space: str
    dct_block_size: int
    dct_num_dropped: int
    dct_eta: float | None
    dct_entropy_weights: bool
    dataset_name: str | None
    train_data_dir: str | None
    dataset_split: str
    image_column: str
    label_column: str | None
    unconditional: bool
    num_classes: int | None
    streaming: bool
    no_streaming: bool
    resolution: int
    center_crop: bool
    random_flip: bool
    reduced_jpeg_decode: bool
    seed: int
    repa_targets: str
    repa_encoder: str | None
    repa_coeff: float


class DiTData:
    """The diffusion inputs `x0` (standardised latents), labels and REPA targets of one DiT run.

    Attributes:
        cache_info: the latent cache's `cache_info.json` (`None` on image data).
        latent_config, latent_shape: how latents are standardised, and their `(C, h, w)`.
        id2label, conditional: class names (or `None`) and whether labels are used.
        num_classes: the classes sampled at validation and named in the exported pipeline.
        max_classes: labels a batch may hold (`[0, max_classes)`): `--num_classes`, the named classes, or 1000.
        dct_eta, entropy_weights: DCTdiff's scale and per-channel loss weights (DCT space; else `None`).
        repa: the REPA targets used: `"cached"`, `"online"` or `"none"` (`--repa_targets auto` resolved, and none
            when `--repa_coeff 0`); `encoder` (online targets) and `repa_target_dim` go with it.
    """

    def __init__(self, settings: DiTDataSettings, loading: Loading, device):
        from ..data.latents import read_cache_info
        from ..data.sources import embedded_class_names

        args = settings
        self.settings, self.loading, self.device = settings, loading, device
        self.cache_info, self.vae, self.encoder = None, None, None
        self.id2label = None
        self.dct_eta = self.entropy_weights = None
        # 1. Latents: recorded by the cache, or measured on the decoding VAE / DCT transform
        if args.latent_dataset is not None:
            self.cache_info = read_cache_info(args.latent_dataset)
            settings = self.cache_info["settings"]
            self.latent_config = {key: settings.get(key) for key in LATENT_CONFIG_KEYS}
            self.latent_shape = tuple(self.cache_info["latent_shape"])
            if settings.get("id2label"):
                self.id2label = {int(k): v for k, v in settings["id2label"].items()}
            self.conditional = settings["label_column"] is not None
            self._check_cache()
        else:
            self.vae = self._load_decoder().to(device).eval().requires_grad_(False)
            self.latent_config = {key: getattr(self.vae.config, key, None) for key in LATENT_CONFIG_KEYS}
            with torch.no_grad():
                probe = torch.zeros(1, 3, args.resolution, args.resolution, device=device)
                self.latent_shape = tuple(self.vae.encode(probe).latent_dist.mode().shape[1:])
            self.conditional = args.label_column is not None
            if args.dataset_name is None and args.train_data_dir is None and args.label_column == "label":
                self.id2label = dict(enumerate(embedded_class_names()))
        if args.unconditional:
            self.conditional, self.id2label = False, None
        if args.space == "dct":
            self._dct_statistics()
        # 2. Classes
        named = len(self.id2label) if self.id2label else None
        self.num_classes = args.num_classes or named or 1
        self.max_classes = args.num_classes or named or 1000
        # 3. REPA targets
        self._resolve_repa()

    def _check_cache(self) -> None:
        """Before training on cached latents: their recorded latent convention must be the decoding VAE's
        (`check_cache_against_vae`, an error), and a sample of them, standardised, should have a std near 1 (a loud
        warning with the fix otherwise)."""
        from ..data.latents import load_latent_dataset
        from .latent_cache import check_cache_against_vae, latent_statistics, warn_if_badly_scaled

        args, settings = self.settings, self.cache_info["settings"]
        vae_name = args.pretrained_vae or settings.get("pretrained_vae")
        check_cache_against_vae(settings, self.decoder().config, args.latent_dataset, vae_name)
        sample = load_latent_dataset(args.latent_dataset, streaming=True)
        statistics = latent_statistics(sample, self.latent_config, seed=args.seed, source=args.latent_dataset)
        warn_if_badly_scaled(statistics, settings, args.latent_dataset)

    def _dct_statistics(self) -> None:
        """DCTdiff's eta (`--dct_eta`, else measured on the data) and, with `--dct_entropy_weights`, the per-channel
        entropy weights of the loss: one streaming pass over up to 256 images."""
        from ..data.images import ImageTransform, image_batches
        from ..data.sources import load_image_dataset
        from ..models.dct_statistics import estimate_dct_statistics, estimate_entropy_weights

        args, dct = self.settings, self.vae
        probe = load_image_dataset(args.dataset_name, args.train_data_dir, args.dataset_split, args.image_column)
        batches = list(image_batches(probe, 32, ImageTransform(args.resolution), args.image_column, max_samples=256))
        if args.dct_eta is None:  # the authors' eta and entropy weights
            self.dct_eta, weights = estimate_dct_statistics(dct, batches)
        else:
            self.dct_eta = args.dct_eta
            dct.register_to_config(scaling_factor=1.0 / args.dct_eta)
            weights = estimate_entropy_weights(dct, batches) if args.dct_entropy_weights else None
        self.latent_config = {"scaling_factor": dct.config.scaling_factor, "shift_factor": None}
        self.entropy_weights = weights if args.dct_entropy_weights else None
        logger.info(f"DCT space: eta {self.dct_eta:.4f}, latent shape {self.latent_shape}")

    def _resolve_repa(self) -> None:
        from ..models.encoders import RepresentationEncoder

        args = self.settings
        cached = self.cache_info is not None and self.cache_info.get("repa_feature_shape") is not None
        mode = args.repa_targets
        if mode == "auto":
            mode = "cached" if cached else "online" if args.repa_encoder else "none"
        if mode == "cached" and not cached:
            raise ValueError("--repa_targets cached: the latent dataset stores no repa_features; pass --repa_encoder.")
        if mode == "online":
            if args.repa_encoder is None:
                raise ValueError("--repa_targets online needs --repa_encoder.")
            if self.cache_info is not None:
                raise ValueError("online REPA targets need images; cache them with cache_latents.py --repa_encoder.")
            self.encoder = RepresentationEncoder.from_pretrained(args.repa_encoder, device=self.device)
        self.repa = mode if mode != "none" and args.repa_coeff > 0 else "none"
        if mode == "cached":
            self.repa_target_dim = self.cache_info["repa_feature_shape"][1]
        else:
            self.repa_target_dim = self.encoder.feature_dim if self.encoder is not None else 768

    def _load_decoder(self):
        """The VAE that decodes samples: `--pretrained_vae`, else the one the cache records; in DCT space a
        `DCTTransform`, in pixel space the identity `PixelTransform`."""
        from ..models.dct_transform import DCTTransform
        from ..models.loading import load_autoencoder
        from ..models.pixel_transform import PixelTransform

        args = self.settings
        if args.space == "dct":
            return DCTTransform(block_size=args.dct_block_size, num_dropped=args.dct_num_dropped)
        if args.space == "pixel":
            return PixelTransform(in_channels=3)
        recorded = (self.cache_info or {}).get("settings", {})
        path = args.pretrained_vae or recorded.get("pretrained_vae")
        if path is None:
            raise ValueError("pass --pretrained_vae (the cache does not record its VAE).")
        return load_autoencoder(path, args.vae_subfolder or recorded.get("vae_subfolder"))

    def decoder(self):
        """The VAE (or DCT transform) that decodes samples, loaded on first use for cached latents."""
        if self.vae is None:
            self.vae = self._load_decoder().to(self.device).eval().requires_grad_(False)
        return self.vae

    def dataloader(self, accelerator, state: dict | None):
        """The training loader (cached latents or images), resumed from `state`."""
        from ..data.images import ImageReader, ImageTransform
        from ..data.latents import latent_batch, load_latent_dataset, unreadable_latents_error
        from ..data.sources import load_image_dataset
        from .loop import train_dataloader

        args, loading = self.settings, self.loading
        if self.cache_info is not None:
            local = Path(args.latent_dataset).exists()
            dataset = load_latent_dataset(args.latent_dataset, streaming=not local or args.streaming)
            describe = functools.partial(unreadable_latents_error, args.latent_dataset if local else None)
            return train_dataloader(
                dataset, None, accelerator, loading, state, collate_fn=latent_batch, describe_read_error=describe
            )
        streaming = (args.streaming or args.dataset_name is not None) and not args.no_streaming
        dataset = load_image_dataset(
            args.dataset_name,
            args.train_data_dir,
            args.dataset_split,
            args.image_column,
            streaming=streaming,
            label_column=args.label_column,
        )
        transform = ImageTransform(
            args.resolution,
            args.center_crop,
            args.random_flip,
            seed=args.seed,
            reduced_decode=args.reduced_jpeg_decode,
        )
        reader = ImageReader(transform, args.image_column, args.label_column)
        return train_dataloader(dataset, reader, accelerator, loading, state)

    @torch.no_grad()
    def prepare(self, batch: dict, generator: torch.Generator, grid_hw) -> dict:
        """`{"x0": (B, C, h, w), "labels": (B,), "targets": (B, N, D) or None}` on the device."""
        need_targets = self.repa != "none"
        if self.cache_info is not None:
            std = batch.get("latents_std")
            std = None if std is None else std.to(self.device)
            x0 = standardize_latents(batch["latents"].to(self.device), self.latent_config, std, generator)
            targets = batch["repa_features"].to(self.device) if self.repa == "cached" else None
            images = None
        else:
            images = batch["pixel_values"].to(self.device)
            posterior = self.vae.encode(images).latent_dist
            x0 = standardize_latents(posterior.sample(generator=generator), self.latent_config)
            targets = None
        if need_targets and targets is None:
            if images is None:
                raise ValueError("REPA targets are neither cached nor computable (images are not loaded).")
            targets = self.encoder(images, grid_hw)
        labels = batch["labels"] if self.conditional else torch.zeros_like(batch["labels"])
        if self.conditional and labels.numel() and (labels.min() < 0 or labels.max() >= self.max_classes):
            raise ValueError(  # CPU tensor from the loader: checked where data enters, no device sync
                f"a batch holds class label(s) outside [0, {self.max_classes - 1}] ({labels.tolist()[:8]}); pass "
                f"--num_classes to cover them, or remap the dataset's labels to 0..K-1."
            )
        return {"x0": x0.float(), "labels": labels.to(self.device), "targets": targets}
