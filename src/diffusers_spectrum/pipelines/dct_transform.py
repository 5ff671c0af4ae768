"""`DCTTransform` moved to `diffusers_spectrum.models.dct_transform`; this name stays so that pipeline folders exported
before the move (whose `model_index.json` names this module for their `vae`) still load."""

from ..models.dct_transform import DCTLatentDistribution, DCTTransform


__all__ = ["DCTLatentDistribution", "DCTTransform"]
