"""Input checks shared by the spectral functions: each raises a ValueError/TypeError naming the argument and the fix.

Non-finite values (NaN/Inf): the rule
-------------------------------------
A finiteness check needs the host to read a device value (a sync), so where and when it runs is a choice:

1. **Never on a recorded training step.** When autograd is recording through a call (grad mode on and an input
   requires grad), a check would stall every optimizer step. Non-finite values then flow through to the loss, and the
   trainers' non-finite guard (one check per step, which the guard pays anyway) skips the step.
2. **Otherwise on by default, on the cheapest tensor that carries the information**: the reduced ``(B, n_bins)``
   spectra for radial spectra and ESM (NaN/Inf anywhere in the input reaches every band: the DCT mixes all pixels
   of a channel), and one sum-reduction of the output for full-size outputs (``dsm_lowpass``, ``dog_filter``,
   ``spatial_normalize``), never a boolean mask as large as the input (no per-batch buffers kept by the allocator).
3. **``check_finite`` overrides it**: every function that checks takes ``check_finite: bool | None = None`` where
   ``None`` applies rules 1-2, ``True`` always checks and ``False`` never does. Callers on a training or sampling hot
   path whose inputs do not require grad (the image branch of DSM in the VAE step, REPA targets under ``no_grad``)
   pass ``check_finite=False`` and rely on the guard. The pure transforms (``dct_2d``, ``blockwise_dct_2d``, the DWT)
   never check: they are building blocks with no reduced tensor of their own.

Values so large that their square overflows float32 (|x| > ~1e19) read as non-finite too; the message says so.
"""

import math
import numbers

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype spectral maths runs in: float64 stays float64, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------------------------------------
# Tensors


def require_tensor(x, func: str, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{func}: `{name}` must be a torch.Tensor, got {type(x).__name__}.")
    if not torch.is_floating_point(x):
        raise TypeError(
            f"{func}: `{name}` must be a floating-point tensor, got dtype {x.dtype}; call `.float()` first."
        )


def require_min_dims(x, ndim: int, func: str, name: str) -> None:
    require_tensor(x, func, name)
    if x.ndim < ndim:
        raise ValueError(f"{func}: `{name}` needs at least {ndim} dimensions, got shape {tuple(x.shape)}.")
    if ndim and 0 in x.shape[x.ndim - ndim :]:
        raise ValueError(f"{func}: `{name}` has an empty axis among its last {ndim}, shape {tuple(x.shape)}.")


def require_4d(x, func: str, name: str, channels: int | None = None) -> None:
    """``x`` must be a float ``(B, C, H, W)`` tensor with ``H, W >= 1`` (and ``C == channels`` when given)."""
    require_tensor(x, func, name)
    if x.ndim != 4:
        raise ValueError(
            f"{func}: `{name}` must be a 4-D (B, C, H, W) tensor, got shape {tuple(x.shape)}"
            + ("; add a batch axis with `x[None]`." if x.ndim == 3 else ".")
        )
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{func}: `{name}` must have {channels} channels (RGB), got shape {tuple(x.shape)}; "
            "convert grayscale/RGBA images to RGB first."
        )
    if x.shape[1] == 0 or x.shape[-2] == 0 or x.shape[-1] == 0:
        raise ValueError(f"{func}: `{name}` has an empty channel or spatial axis, shape {tuple(x.shape)}.")


def require_nonempty_batch(x: torch.Tensor, func: str, name: str) -> None:
    """A batch mean over zero samples is undefined (NaN): refuse it where the function averages over the batch."""
    if x.shape[0] == 0:
        raise ValueError(f"{func}: `{name}` is an empty batch (shape {tuple(x.shape)}); pass at least one sample.")


# ------------------------------------------------------------------------------------------------
# Non-finite values (see the module docstring for when these run)


def should_check_finite(check_finite: bool | None, *tensors: torch.Tensor) -> bool:
    """Rules 1-3 of the module docstring: ``None`` checks unless autograd is recording through ``tensors``."""
    if check_finite is not None:
        if not isinstance(check_finite, bool):
            raise TypeError(f"`check_finite` must be True, False or None, got {check_finite!r}.")
        return check_finite
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def require_finite(x: torch.Tensor, func: str, name: str) -> None:
    """Raise if ``x`` holds NaN/Inf. One host sync: call it on small (reduced) tensors or outside hot paths."""
    if not bool(torch.isfinite(x.detach()).all()):
        raise ValueError(
            f"{func}: `{name}` contains NaN or Inf values (or values too large to square in float32); check the data "
            "and the model's outputs (a diverged step or a corrupt image)."
        )


def require_finite_sum(x: torch.Tensor, func: str, name: str) -> None:
    """Like :func:`require_finite` for a full-size tensor, through one float64 sum (no input-sized boolean mask).

    NaN or Inf anywhere makes the sum non-finite; a finite tensor sums to a finite float64 for any float32 input.
    """
    if not math.isfinite(float(x.detach().sum(dtype=torch.float64))):
        raise ValueError(
            f"{func}: `{name}` contains NaN or Inf values; check the data and the model's outputs "
            "(a diverged step or a corrupt image), or pass check_finite=False to let them through."
        )


# ------------------------------------------------------------------------------------------------
# Scalars


def as_int(value, func: str, name: str, minimum: int | None = None) -> int:
    """``value`` as a Python int: accepts ``int``, NumPy integer scalars and one-element integer tensors.

    Raises TypeError for a non-number and ValueError for a non-integer number (``2.5`` or ``2.0``) or one below
    ``minimum``: never truncates silently.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"{func}: `{name}` must be an integer, got a tensor of shape {tuple(value.shape)}.")
        if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
            raise ValueError(f"{func}: `{name}` must be an integer, got a {value.dtype} tensor ({value.item()!r}).")
        value = int(value.item())
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{func}: `{name}` must be an integer, got {type(value).__name__} {value!r}.")
    elif not isinstance(value, numbers.Integral):
        raise ValueError(f"{func}: `{name}` must be an integer, got {value!r}; pass e.g. {int(value)!r}.")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{func}: `{name}` must be an integer >= {minimum}, got {value}.")
    return value


def as_float(value, func: str, name: str, minimum: float | None = None, strict: bool = False) -> float:
    """``value`` as a finite Python float (int, float, NumPy scalar or one-element float/int tensor).

    ``minimum`` is a lower bound (exclusive when ``strict``). Raises TypeError for a non-number, ValueError for NaN,
    Inf or a value out of range.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            raise TypeError(
                f"{func}: `{name}` must be a real number, got a {value.dtype} tensor of shape {tuple(value.shape)}."
            )
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{func}: `{name}` must be a real number, got {type(value).__name__} {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{func}: `{name}` must be a finite number, got {value}.")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{func}: `{name}` must be {'>' if strict else '>='} {minimum}, got {value}.")
    return value


def as_optional_bool(value, func: str, name: str) -> bool | None:
    """``True``, ``False`` or ``None`` (NumPy booleans accepted); anything else is a TypeError (no truthiness test)."""
    if value is None or isinstance(value, bool):
        return value
    if type(value).__name__ == "bool_":  # numpy.bool_ without importing numpy
        return bool(value)
    raise TypeError(f"{func}: `{name}` must be True, False or None, got {type(value).__name__} {value!r}.")
