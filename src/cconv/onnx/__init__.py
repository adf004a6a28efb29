"""ONNX export and import. Needs the ``onnx`` package (``pip install 'cconv[onnx]'``); it is
imported when these functions run, never by ``import cconv``.

Export: :func:`export` (``model.export(path)``) writes an inference-mode graph for ONNX
Runtime and other ONNX tools. Import: :func:`load` (``cconv.load_model("model.onnx")``)
builds a trainable cconv model from an ONNX graph, e.g. one PyTorch exported.
"""
import os

from .._atomic import write_atomic
from ._common import EXPORT_OPSETS, require_onnx

__all__ = ["export", "to_onnx", "exportable_layers", "EXPORT_OPSETS"]


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
      running statistics.
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
