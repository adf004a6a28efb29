"""ONNX export and import. Needs the ``onnx`` package (``pip install "cconv[onnx]"``); it is
imported when these functions run, never by ``import cconv``.

Export: :func:`export` (``model.export(path)``) writes an inference-mode graph for ONNX
Runtime and other ONNX tools. Import: :func:`load` (``cconv.load_model("model.onnx")``)
builds a trainable cconv model from an ONNX graph, e.g. one PyTorch exported.
"""
import os

from .._atomic import write_atomic
from ._common import EXPORT_OPSETS, require_onnx

__all__ = ["export", "to_onnx", "load", "exportable_layers", "supported_ops", "EXPORT_OPSETS"]


def to_onnx(model, opset_version=17, dtype=None):
    """The ``onnx.ModelProto`` that :func:`export` writes (checked by ``onnx.checker``)."""
    from . import _export
    return _export.build(model, opset_version=opset_version, dtype=dtype)


def export(model, path, opset_version=17, dtype=None):
    """Write ``model`` (built; Sequential or functional) to ``path`` as an ONNX file.

    The graph
    ---------
    - Inputs and outputs are **NHWC** like cconv's, named as the model's inputs and outputs
      (``model.input_names``, ``model.output_names``), with shape ``("N", *sample_shape)``:
      the batch size ``N`` is dynamic. Predictions of ONNX Runtime on ``x`` match
      ``model.predict(x)``.
    - Inside, every image (rank-4) tensor is **NCHW**, ONNX Runtime's native layout for Conv
      and pooling: a Transpose after each image input, before each image output and before
      a Flatten or Reshape of an image (so flattened features keep cconv's order); the
      kernels are converted once (HWIO -> OIHW) rather than activations transposed around
      every convolution.
    - Inference mode: Dropout is left out, BatchNorm2D is BatchNormalization with the
      running statistics. The random augmentations (RandomFlip, RandomTranslation,
      RandomRotation, RandomZoom, RandomContrast) are left out, RandomCrop is a Slice of
      its central window, Rescaling is Mul (and Add), Normalization is Sub and Div by its
      adapted mean and standard deviation (Mul and Add when inverted). The importer does
      not turn these back into layers.
    - GELU is the ``Gelu`` op from opset 20, before that ``0.5 x (1 + erf(x / sqrt 2))`` (or
      its tanh form); SiLU is ``x * Sigmoid(x)``; AvgPool2D counts padded zeros
      (``count_include_pad=1``); UpSampling2D is Resize (nearest: ``asymmetric``/``floor``,
      bilinear: ``linear``/``half_pixel``).

    Parameters
    ----------
    model : Model or Sequential
    path : str or os.PathLike
        Written atomically (the old file or the new one survives a crash).
    opset_version : int, default 17
        17 to 21.
    dtype : {None, "float32", "float64"}
        Of the weights and tensors; None: the model's. ONNX Runtime's CPU convolutions and
        pools take float32 only: export a float64 model with ``dtype="float32"`` for it.

    Raises
    ------
    ImportError
        The ``onnx`` package is missing.
    ValueError
        A model that is not built, or a layer cconv cannot export (named in the message;
        :func:`exportable_layers` lists the classes that can).
    """
    proto = to_onnx(model, opset_version=opset_version, dtype=dtype)
    data = proto.SerializeToString()
    write_atomic(os.fspath(path), lambda f: f.write(data))


def exportable_layers():
    """The names of the layer classes :func:`export` converts."""
    from . import _export
    return _export.exportable_layers()


def load(model, dtype=None):
    """Build a trainable cconv :class:`~cconv.Model` from an ONNX model (a path or an
    ``onnx.ModelProto``); ``cconv.load_model("model.onnx")`` calls this.

    Layout: a graph whose image inputs are NCHW (PyTorch's) becomes a cconv model with NHWC
    inputs: ``model.predict(x.transpose(0, 2, 3, 1))`` gives what the graph gives for
    ``x``; image outputs are NHWC (``out.transpose(0, 3, 1, 2)`` is the graph's). Kernels are
    converted (OIHW -> HWIO), and the Dense kernel after a flattened NCHW image has its rows
    permuted, because cconv flattens NHWC. A graph whose image input is NHWC followed by a
    Transpose to NCHW (as :func:`export` writes, or TensorFlow converters) keeps NHWC inputs
    and its outputs as they are, so an exported model imports with identical predictions.

    Supported operators (default domain, opset 13 or newer): ``SUPPORTED_OPS``. Conv with
    groups, dilations, pads (asymmetric too) or auto_pad; ConvTranspose (pads, output_padding,
    output_shape); Gemm, or MatMul with a constant weight (and the Add of a bias); MaxPool and
    AveragePool (2-D, no dilation, ceil_mode only where it gives the floor's size,
    count_include_pad=1 when padded); Global pools; BatchNormalization (inference form);
    Relu, LeakyRelu, Elu, Gelu, Sigmoid, Tanh, Softmax; elementwise maths of one tensor that
    computes GELU (PyTorch's erf form before opset 20, or the tanh form), SiLU, sigmoid, tanh
    or ReLU (recognised by evaluating it on sample points); Add/Sum, Sub, Mul of same-shaped
    tensors; Concat; Flatten, Reshape, Squeeze, Unsqueeze (the batch kept first; shapes
    computed with Shape/Gather/Unsqueeze/Concat/Cast/Slice are folded); Transpose between
    NCHW and NHWC; Resize by whole factors, nearest or linear, where it samples as
    UpSampling2D does; Pad with zeros (negative pads crop) and Slice of height/width;
    Dropout (a cconv Dropout layer for fine-tuning), Identity, Constant.

    Anything else is refused with a ValueError naming the node and its operator. The model
    is built in float32 (float64 for a float64 graph), not compiled, and trainable: compile
    it and ``fit`` to fine-tune.

    Hostile files: the file is parsed by protobuf (a truncated or corrupt file is refused),
    every tensor's declared shape is checked against the bytes that hold it before an array
    is made, external data is read only from files inside the model's folder (no absolute
    paths, no '..', no links out) and ranges of it may not overlap, so a model costs at most
    the size of its files; nothing in the file is executed and nothing is written.

    Parameters
    ----------
    model : str, os.PathLike or onnx.ModelProto
    dtype : {None, "float32", "float64"}
        Of the cconv model; None: the graph's input dtype.

    Raises
    ------
    ImportError
        The ``onnx`` package is missing.
    ValueError
        A file that is not a valid ONNX model, an operator or attribute cconv cannot take
        (the message names the node), a tensor whose data does not match its shape.
    """
    onnx = require_onnx()
    from . import _import, _read
    if isinstance(model, onnx.ModelProto):
        proto, folder, where = model, None, "<ModelProto>"
    else:
        where = os.fspath(model)
        proto = _read.parse(where)
        folder = os.path.dirname(os.path.abspath(where))
    return _import.convert(proto, folder=folder, where=where, dtype=dtype)


def supported_ops():
    """The ONNX operators :func:`load` converts (default domain)."""
    from . import _import
    return list(_import.SUPPORTED_OPS)
