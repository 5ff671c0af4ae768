"""Whether images of a resolution fit an autoencoder (and its DSM blocks): one check, one message, for the VAE
trainer, the latent cache, analyze and the evaluation scripts alike."""

__all__ = ["check_resolution", "downsample_factor"]


def downsample_factor(vae) -> int:
    """Spatial downsampling of an `AutoencoderKL`-like model: 2^(number of encoder blocks - 1); a `DCTTransform`
    (or anything with a `downsample_factor` attribute) reports its own."""
    factor = getattr(vae, "downsample_factor", None)
    if isinstance(factor, int):
        return factor
    channels = getattr(vae.config, "block_out_channels", None)
    if not channels:
        raise ValueError(
            f"{type(vae).__name__}'s config has no block_out_channels, so its downsampling factor is unknown; is "
            "this an AutoencoderKL folder?"
        )
    return 2 ** (len(channels) - 1)


def check_resolution(vae, resolution: int, dsm_levels=(0,), block_size: int = 8, flag: str = "--resolution") -> int:
    """Raise a `ValueError` naming `flag` unless `resolution` is a positive multiple of the VAE's downsampling factor
    (and, when any DSM level > 0, of factor x `block_size`, so latents split into whole DCT blocks). Returns the
    latent side."""
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
        raise ValueError(f"{flag} must be a positive integer, got {resolution!r}.")
    factor = downsample_factor(vae)
    if resolution % factor:
        lower, upper = resolution // factor * factor, (resolution // factor + 1) * factor
        raise ValueError(
            f"{flag} {resolution} is not divisible by the VAE's downsampling factor {factor} (latents would be "
            f"{resolution / factor:g} px wide); pass a multiple of {factor}, e.g. {lower or upper} or {upper}."
        )
    if any(int(level) > 0 for level in dsm_levels) and resolution % (factor * block_size):
        raise ValueError(
            f"DSM splits latents ({resolution // factor} px) into {block_size} x {block_size} blocks; pass {flag} as "
            f"a multiple of {factor * block_size}, or DSM levels 0."
        )
    return resolution // factor
