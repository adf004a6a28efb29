"""What the two halves of :mod:`cconv.onnx` share: the lazy import of the ``onnx`` package,
the opsets cconv writes, and the NHWC <-> NCHW axis maps."""
from importlib import import_module

#: Opsets :func:`cconv.onnx.export` can write (17 is the default).
EXPORT_OPSETS = range(17, 22)
#: The oldest default-domain opset :func:`cconv.onnx.load` reads (older ones define
#: Softmax, Pad, Resize, Dropout and Reshape differently).
MIN_IMPORT_OPSET = 13

#: An NHWC tensor is ``nchw.transpose(TO_NHWC)``; an NCHW one ``nhwc.transpose(TO_NCHW)``.
TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)


def require_onnx():
    """The ``onnx`` package, or an ImportError that says how to install it."""
    try:
        return import_module("onnx")
    except ImportError as exc:
        raise ImportError("cconv's ONNX export and import need the onnx package: "
                          'pip install "cconv[onnx]"') from exc


def nhwc_axis_to_nchw(axis, rank):
    """The NCHW axis of an axis of a rank-4 NHWC tensor (negative axes allowed)."""
    a = axis % rank
    return TO_NCHW.index(a) if rank == 4 else a


def unique_name(base, taken):
    """``base``, or ``base_1``, ``base_2``... whichever is not in ``taken`` (then added)."""
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name
