"""Argument checks shared by cconv's modules.

Each helper returns the value in canonical form (a Python ``int``/``float``, a tuple, a
numpy dtype) or raises with the argument's name and the value received: ``TypeError`` for a
value of the wrong kind (``bool`` is never taken for a number), ``ValueError`` for one of the
right kind out of range.
"""
import math
import numbers

import numpy as np


def integer(value, name, low=None):
    """An int (numpy integers too, not bool) that is ``>= low`` when ``low`` is given."""
    if type(value) is int and (low is None or value >= low):     # the common case, quickly
        return value
    what = {None: "an int", 0: "a non-negative int", 1: "a positive int"}.get(low, f"an int >= {low}")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def positive_int(value, name):
    return integer(value, name, 1)


def non_negative_int(value, name):
    return integer(value, name, 0)


def number(value, name, low=None, high=None, low_open=False, high_open=False):
    """A finite real number (not bool) within the optional bounds, as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    bad = not math.isfinite(value)
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        if low is not None and high is not None:
            where = f"in {lo}, {hi}"
        elif low is not None:
            where = f"{'>' if low_open else '>='} {low:g}"
        elif high is not None:
            where = f"{'<' if high_open else '<='} {high:g}"
        else:
            where = "finite"
        raise ValueError(f"{name} must be {where}, got {value!r}")
    return value


def seed(value, name="seed"):
    """None or a non-negative int."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
        raise TypeError(f"{name} must be a non-negative int or None, got {value!r}")
    return int(value)


def float_dtype(dtype, name="dtype"):
    """float32 or float64, as a numpy dtype."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}")
    return dt


#: The largest entry of a sample shape: the kernels take sizes up to 2**31 - 1.
MAX_DIM = 2**31 - 1
#: The most elements one sample may have: a batch of one float64 sample must be addressable.
MAX_SAMPLE_SIZE = 2**60


def _dim(s, name, value):
    """One entry of a shape as an int (integral floats too); TypeError or ValueError naming
    ``name`` otherwise."""
    if isinstance(s, (bool, np.bool_)):
        raise TypeError(f"{name} must be a tuple of ints (without the batch dimension), got {value!r}")
    if isinstance(s, numbers.Integral):
        return int(s)
    if isinstance(s, numbers.Real):
        f = float(s)
        if math.isfinite(f) and f == int(f):
            return int(f)
        raise ValueError(f"{name} must hold finite whole numbers (without the batch dimension), "
                         f"got {value!r}")
    try:
        return int(s)           # e.g. a numeric string from a command line
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a tuple of ints (without the batch dimension), "
                        f"got {value!r}") from None


def shape(value, name="input_shape"):
    """A non-empty tuple of positive ints: the shape of one sample, without the batch axis.

    Entries are at most :data:`MAX_DIM` and a sample at most :data:`MAX_SAMPLE_SIZE`
    elements, so that a shape from a file or a config (``Infinity``, ``1e30``) is a
    ValueError naming ``name`` rather than an OverflowError or a huge allocation later.
    """
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of ints (without the batch dimension), "
                        f"got {value!r}") from None
    out = tuple(_dim(s, name, value) for s in items)
    if not out or min(out) < 1:
        raise ValueError(f"{name} must be a non-empty tuple of positive ints (without the "
                         f"batch dimension), got {value!r}")
    if max(out) > MAX_DIM or math.prod(out) > MAX_SAMPLE_SIZE:
        raise ValueError(f"{name} must have entries of at most {MAX_DIM:,} and at most "
                         f"{MAX_SAMPLE_SIZE:,} elements per sample, got {value!r}")
    return out
