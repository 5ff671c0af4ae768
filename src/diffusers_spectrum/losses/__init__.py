"""Loss terms, each a small function returning an unreduced or scalar loss; trainers choose the weights."""

from ..spectral import esm_loss


__all__ = ["esm_loss"]
