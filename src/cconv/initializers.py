"""Weight initializers: He (Kaiming) and Glorot (Xavier), normal and uniform, and zeros.

Every initializer has the signature ``init(shape, rng, dtype=np.float32) -> ndarray`` and
draws from the :class:`numpy.random.Generator` it is given, so the same seed gives the
same weights.

Fan-in and fan-out
------------------
* dense kernel ``(in, out)``: ``fan_in = in``, ``fan_out = out``;
* convolution kernel HWIO ``(KH, KW, C_in // groups, C_out)``:
  ``fan_in = KH * KW * C_in // groups``, ``fan_out = KH * KW * C_out``
  (the rule of PyTorch and Keras);
* a vector ``(n,)``: ``fan_in = fan_out = n``.

===================  ================================  ===================================
name                 distribution                      scale
===================  ================================  ===================================
``he_normal``        normal, mean 0                    std ``sqrt(2 / fan_in)``
``he_uniform``       uniform on ``[-limit, limit]``    limit ``sqrt(6 / fan_in)``
``glorot_normal``    normal, mean 0                    std ``sqrt(2 / (fan_in + fan_out))``
``glorot_uniform``   uniform on ``[-limit, limit]``    limit ``sqrt(6 / (fan_in + fan_out))``
``zeros``/``ones``   constant
===================  ================================  ===================================

The normal initializers are plain (untruncated) normals, as PyTorch's ``kaiming_normal_``
and ``xavier_normal_``; Keras truncates at two standard deviations instead.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["compute_fans", "he_normal", "he_uniform", "glorot_normal", "glorot_uniform",
           "zeros", "ones", "get"]


def compute_fans(shape) -> tuple[int, int]:
    """Return ``(fan_in, fan_out)`` of a weight of this shape (see the module docstring)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return receptive * shape[-2], receptive * shape[-1]


def _check(shape, rng, dtype):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must hold non-negative sizes, got {shape}")
    return shape, dtype


def _normal(shape, rng, dtype, std):
    shape, dtype = _check(shape, rng, dtype)
    w = rng.standard_normal(shape, dtype=dtype)
    w *= dtype.type(std)
    return w


def _uniform(shape, rng, dtype, limit):
    shape, dtype = _check(shape, rng, dtype)
    w = rng.random(shape, dtype=dtype)     # [0, 1)
    w *= dtype.type(2.0 * limit)
    w -= dtype.type(limit)
    return w


def he_normal(shape, rng, dtype=np.float32):
    """He (Kaiming) normal: ``N(0, 2 / fan_in)``.

    Parameters
    ----------
    shape : tuple of int
        ``(in, out)`` for a dense kernel, HWIO for a convolution kernel.
    rng : numpy.random.Generator
    dtype : float32 or float64

    Returns
    -------
    ndarray of the given shape and dtype
    """
    fan_in, _ = compute_fans(shape)
    return _normal(shape, rng, dtype, math.sqrt(2.0 / max(fan_in, 1)))


def he_uniform(shape, rng, dtype=np.float32):
    """He (Kaiming) uniform: ``U(-sqrt(6 / fan_in), sqrt(6 / fan_in))``.

    Parameters as :func:`he_normal`.
    """
    fan_in, _ = compute_fans(shape)
    return _uniform(shape, rng, dtype, math.sqrt(6.0 / max(fan_in, 1)))


def glorot_normal(shape, rng, dtype=np.float32):
    """Glorot (Xavier) normal: ``N(0, 2 / (fan_in + fan_out))``. Parameters as :func:`he_normal`."""
    fan_in, fan_out = compute_fans(shape)
    return _normal(shape, rng, dtype, math.sqrt(2.0 / max(fan_in + fan_out, 1)))


def glorot_uniform(shape, rng, dtype=np.float32):
    """Glorot (Xavier) uniform: ``U(-limit, limit)``, ``limit = sqrt(6 / (fan_in + fan_out))``.

    Parameters as :func:`he_normal`.
    """
    fan_in, fan_out = compute_fans(shape)
    return _uniform(shape, rng, dtype, math.sqrt(6.0 / max(fan_in + fan_out, 1)))


def zeros(shape, rng=None, dtype=np.float32):
    """All zeros (``rng`` is accepted for a uniform signature and not used)."""
    return np.zeros(tuple(int(s) for s in shape), dtype=dtype)


def ones(shape, rng=None, dtype=np.float32):
    """All ones (``rng`` is accepted for a uniform signature and not used)."""
    return np.ones(tuple(int(s) for s in shape), dtype=dtype)


_ALIASES = {
    "he_normal": he_normal, "kaiming_normal": he_normal,
    "he_uniform": he_uniform, "kaiming_uniform": he_uniform,
    "glorot_normal": glorot_normal, "xavier_normal": glorot_normal,
    "glorot_uniform": glorot_uniform, "xavier_uniform": glorot_uniform,
    "zeros": zeros, "ones": ones,
}


def get(name):
    """Return the initializer function called ``name`` (a callable is returned unchanged).

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if callable(name):
        return name
    if isinstance(name, str):
        fn = _ALIASES.get(name.lower())
        if fn is not None:
            return fn
    raise ValueError(f"unknown initializer {name!r}; choose one of "
                     f"{sorted(k for k in _ALIASES if k == _ALIASES[k].__name__)}")


def name_of(fn) -> str:
    """The registered name of an initializer function (for configs)."""
    for k, v in _ALIASES.items():
        if v is fn and k == fn.__name__:
            return k
    return getattr(fn, "__name__", repr(fn))
