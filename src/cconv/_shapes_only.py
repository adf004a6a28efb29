"""Building layers for their weights' shapes alone: no memory, no initialisation.

A model file declares its architecture (layer sizes, the input shape) and holds the weights.
Loading it builds the architecture and compares the weights it expects with the file's; a
small file that declares a huge layer would cost the memory and time of that layer before
the comparison refuses it. Inside :func:`shapes_only`, :meth:`cconv.layers.Layer.add_weight`
gives every weight a stand-in (:func:`stand_in`): an array of the declared shape and dtype
whose elements all share one scalar, so a model of any declared size is built in time and
memory proportional to its number of layers. Such a model is for comparing shapes only:
its weights are not real.

The setting belongs to the calling thread: a model built in another thread meanwhile gets
its weights as usual.
"""
import threading
from contextlib import contextmanager

import numpy as np

_local = threading.local()


@contextmanager
def shapes_only():
    """Within the block, layers built by this thread get stand-in weights."""
    depth = getattr(_local, "depth", 0)
    _local.depth = depth + 1
    try:
        yield
    finally:
        _local.depth = depth


def active():
    """Whether the calling thread is inside :func:`shapes_only`."""
    return getattr(_local, "depth", 0) > 0


def stand_in(shape, dtype):
    """A writable array of ``shape`` and ``dtype`` that occupies one element (all strides 0).

    Raises ValueError for a shape numpy cannot describe (a size beyond its index type).
    """
    shape = tuple(int(s) for s in shape)
    one = np.zeros(1, dtype)
    try:
        return np.lib.stride_tricks.as_strided(one, shape=shape, strides=(0,) * len(shape),
                                               writeable=True)
    except OverflowError:            # a dimension beyond numpy's index type
        raise ValueError(f"array is too big: shape {shape}") from None
