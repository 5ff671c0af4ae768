"""`DCTTransform` moved to `diffusers_spectrum.models.dct_transform`; this name stays so that pipeline folders exported
before the move (whose `model_index.json` names this module for their `vae`) still load. diffusers' loader looks the
loadable base classes up on the module it names, so `ModelMixin` is imported here too."""

from diffusers import ModelMixin

from ..models.dct_transform import DCTLatentDistribution, DCTTransform


__all__ = ["DCTLatentDistribution", "DCTTransform", "ModelMixin"]
