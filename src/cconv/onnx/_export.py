"""cconv model -> ONNX graph (see :func:`cconv.onnx.export` for the contract).

Layout: the graph's inputs and outputs are NHWC like cconv's, and every rank-4 tensor
*inside* the graph is NCHW, ONNX's (and ONNX Runtime's) native layout for Conv and the
pools: one Transpose after each image input, one before each image output and one before
a Flatten or Reshape of an image (so the features keep cconv's NHWC order and the Dense
kernel is written as it is). Weights are converted once (HWIO -> OIHW) instead of
transposing activations around every convolution.
"""
import math

import numpy as np

from .. import functional as F
from .. import layers as L
from .. import preprocessing as P
from .._version import __version__
from ._common import (EXPORT_OPSETS, TO_NCHW, TO_NHWC, nhwc_axis_to_nchw, require_onnx,
                      unique_name)


class _Graph:
    """The ONNX nodes and initializers under construction; tensor names are unique."""

    def __init__(self, onnx, dtype, opset):
        self.onnx = onnx
        self.dtype = np.dtype(dtype)
        self.opset = opset
        self.nodes, self.initializers = [], []
        self._taken = set()

    def name(self, base):
        return unique_name(base, self._taken)

    def reserve(self, names):
        """Keep ``names`` (the graph's inputs and outputs) from intermediate values."""
        self._taken.update(names)

    def const(self, base, value, dtype=None):
        """An initializer holding ``value`` (in the graph's float dtype unless ``dtype``)."""
        a = np.ascontiguousarray(value, dtype=self.dtype if dtype is None else dtype)
        name = self.name(base)
        self.initializers.append(self.onnx.numpy_helper.from_array(a, name))
        return name

    def scalar(self, base, value):
        return self.const(base, np.array(value))

    def op(self, op_type, inputs, base, **attrs):
        """Add one node; returns the name of its (single) output."""
        out = self.name(base)
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out],
                                                     name=self.name(f"{base}/{op_type}"), **attrs))
        return out


def _pads_attr(pads):
    """((top, bottom), (left, right)) -> ONNX's [top, left, bottom, right]."""
    (t, b), (l, r) = pads
    return [int(t), int(l), int(b), int(r)]


# ---------------------------------------------------------------------------------------
# Activations (as layers and fused into Conv / Dense)
# ---------------------------------------------------------------------------------------
def _gelu(g, layer, x, base):
    if g.opset >= 20:
        return g.op("Gelu", [x], base, approximate=layer.approximate)
    if layer.approximate == "tanh":
        # 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
        x3 = g.op("Mul", [g.op("Mul", [x, x], f"{base}/x2"), x], f"{base}/x3")
        inner = g.op("Add", [x, g.op("Mul", [x3, g.scalar(f"{base}/a", 0.044715)], f"{base}/ax3")],
                     f"{base}/inner")
        t = g.op("Tanh", [g.op("Mul", [inner, g.scalar(f"{base}/k", math.sqrt(2 / math.pi))],
                               f"{base}/kinner")], f"{base}/tanh")
        phi = g.op("Add", [t, g.scalar(f"{base}/one", 1.0)], f"{base}/1+t")
    else:
        # 0.5 x (1 + erf(x / sqrt(2))), PyTorch's decomposition before opset 20
        e = g.op("Erf", [g.op("Div", [x, g.scalar(f"{base}/sqrt2", math.sqrt(2.0))], f"{base}/xs")],
                 f"{base}/erf")
        phi = g.op("Add", [e, g.scalar(f"{base}/one", 1.0)], f"{base}/1+erf")
    return g.op("Mul", [g.op("Mul", [x, phi], f"{base}/xphi"), g.scalar(f"{base}/half", 0.5)], base)


def _activation(g, layer, x, rank, base):
    """Emit ``layer`` (an Activation) applied to the ONNX tensor ``x`` of ``rank``."""
    kind = type(layer)
    if kind is L.ReLU:
        return g.op("Relu", [x], base)
    if kind is L.LeakyReLU:
        return g.op("LeakyRelu", [x], base, alpha=float(layer.alpha))
    if kind is L.ELU:
        return g.op("Elu", [x], base, alpha=float(layer.alpha))
    if kind is L.Sigmoid:
        return g.op("Sigmoid", [x], base)
    if kind is L.Tanh:
        return g.op("Tanh", [x], base)
    if kind is L.Softmax:
        return g.op("Softmax", [x], base, axis=nhwc_axis_to_nchw(layer.axis, rank))
    if kind is L.SiLU:
        return g.op("Mul", [x, g.op("Sigmoid", [x], f"{base}/sigmoid")], base)
    if kind is L.GELU:
        return _gelu(g, layer, x, base)
    raise ValueError(f"cannot export activation {layer!r} to ONNX")


def _then_activation(g, layer, y, rank, base):
    act = getattr(layer, "activation", None)
    if act is None:
        return y
    return _activation(g, act, y, rank, base)


# ---------------------------------------------------------------------------------------
# One function per layer class: (graph, layer, input names, node) -> output name
# ---------------------------------------------------------------------------------------
def _hw(node):
    return node.inputs[0].shape[1:3]


def _conv2d(g, layer, xs, node, base):
    k, s, d = layer.kernel_size, layer.stride, layer.dilation
    pads = F.normalize_padding(layer.padding, k, d, s, _hw(node))
    inputs = [xs[0], g.const(f"{base}/weight", layer.params["kernel"].transpose(3, 2, 0, 1))]
    if layer.use_bias:
        inputs.append(g.const(f"{base}/bias", layer.params["bias"]))
    y = g.op("Conv", inputs, base if layer.activation is None else f"{base}/conv",
             kernel_shape=list(k), strides=list(s), dilations=list(d), pads=_pads_attr(pads),
             group=int(layer.groups))
    return _then_activation(g, layer, y, 4, base)


def _depthwise(g, layer, xs, node, base):
    k, s, d = layer.kernel_size, layer.stride, layer.dilation
    KH, KW, C, m = layer.params["kernel"].shape
    pads = F.normalize_padding(layer.padding, k, d, s, _hw(node))
    w = layer.params["kernel"].reshape(KH, KW, 1, C * m).transpose(3, 2, 0, 1)
    inputs = [xs[0], g.const(f"{base}/weight", w)]
    if layer.use_bias:
        inputs.append(g.const(f"{base}/bias", layer.params["bias"]))
    y = g.op("Conv", inputs, base if layer.activation is None else f"{base}/conv",
             kernel_shape=list(k), strides=list(s), dilations=list(d), pads=_pads_attr(pads),
             group=int(C))
    return _then_activation(g, layer, y, 4, base)


def _conv_transpose(g, layer, xs, node, base):
    k, s, d = layer.kernel_size, layer.stride, layer.dilation
    pads, op = F.normalize_transpose_padding(layer.padding, k, s, d, layer.output_padding)
    # cconv's kernel (KH, KW, filters / groups, C_in) -> ONNX's (C_in, filters / groups, KH, KW)
    inputs = [xs[0], g.const(f"{base}/weight", layer.params["kernel"].transpose(3, 2, 0, 1))]
    if layer.use_bias:
        inputs.append(g.const(f"{base}/bias", layer.params["bias"]))
    y = g.op("ConvTranspose", inputs, base if layer.activation is None else f"{base}/conv",
             kernel_shape=list(k), strides=list(s), dilations=list(d), pads=_pads_attr(pads),
             output_padding=[int(v) for v in op], group=int(layer.groups))
    return _then_activation(g, layer, y, 4, base)


def _dense(g, layer, xs, node, base):
    inputs = [xs[0], g.const(f"{base}/kernel", layer.params["kernel"])]
    if layer.use_bias:
        inputs.append(g.const(f"{base}/bias", layer.params["bias"]))
    y = g.op("Gemm", inputs, base if layer.activation is None else f"{base}/gemm")
    return _then_activation(g, layer, y, 2, base)


def _pool(op_type, **extra):
    def convert(g, layer, xs, node, base):
        k = layer.pool_size
        s = k if layer.stride is None else layer.stride
        pads = F.normalize_padding(layer.padding, k, (1, 1), s, _hw(node))
        return g.op(op_type, xs, base, kernel_shape=list(k), strides=list(s),
                    pads=_pads_attr(pads), **extra)
    return convert


def _global_pool(op_type):
    def convert(g, layer, xs, node, base):
        return g.op("Flatten", [g.op(op_type, xs, f"{base}/pool")], base, axis=1)
    return convert


def _to_nhwc_if_image(g, x, rank, base):
    return g.op("Transpose", [x], f"{base}/nhwc", perm=list(TO_NHWC)) if rank == 4 else x


def _flatten(g, layer, xs, node, base):
    x = _to_nhwc_if_image(g, xs[0], len(node.inputs[0].shape), base)
    return g.op("Flatten", [x], base, axis=1)


def _reshape(g, layer, xs, node, base):
    x = _to_nhwc_if_image(g, xs[0], len(node.inputs[0].shape), base)
    out = node.output.shape[1:]
    shape = g.const(f"{base}/shape", [0, *out], dtype=np.int64)    # 0: keep the batch size
    y = g.op("Reshape", [x, shape], base if len(out) != 3 else f"{base}/nhwc_out")
    if len(out) == 3:
        y = g.op("Transpose", [y], base, perm=list(TO_NCHW))
    return y


def _upsample(g, layer, xs, node, base):
    sh, sw = layer.size
    scales = g.const(f"{base}/scales", [1.0, 1.0, sh, sw], dtype=np.float32)
    if layer.interpolation == "nearest":
        attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                     nearest_mode="floor")
    else:
        attrs = dict(mode="linear", coordinate_transformation_mode="half_pixel")
    return g.op("Resize", [xs[0], "", scales], base, **attrs)


def _zero_pad(g, layer, xs, node, base):
    (t, b), (l, r) = layer.padding
    pads = g.const(f"{base}/pads", [0, 0, t, l, 0, 0, b, r], dtype=np.int64)
    return g.op("Pad", [xs[0], pads], base, mode="constant")


def _crop(g, layer, xs, node, base):
    (t, b), (l, r) = layer.cropping
    H, W = _hw(node)
    i64 = np.int64
    return g.op("Slice", [xs[0], g.const(f"{base}/starts", [t, l], dtype=i64),
                          g.const(f"{base}/ends", [H - b, W - r], dtype=i64),
                          g.const(f"{base}/axes", [2, 3], dtype=i64)], base)


def _identity(g, layer, xs, node, base):
    return xs[0]


def _augmentation(g, layer, xs, node, base):
    """A random augmentation at inference: the identity, or RandomCrop's central window."""
    if layer.inference_identity:
        return xs[0]
    t, l, h, w = layer.inference_box(node.inputs[0].shape[1:])
    i64 = np.int64
    return g.op("Slice", [xs[0], g.const(f"{base}/starts", [t, l], dtype=i64),
                          g.const(f"{base}/ends", [t + h, l + w], dtype=i64),
                          g.const(f"{base}/axes", [2, 3], dtype=i64)], base)


def _rescaling(g, layer, xs, node, base):
    y = g.op("Mul", [xs[0], g.scalar(f"{base}/scale", layer.scale)],
             base if not layer.offset else f"{base}/scaled")
    if layer.offset:
        y = g.op("Add", [y, g.scalar(f"{base}/offset", layer.offset)], base)
    return y


def _normalization(g, layer, xs, node, base):
    """``(x - mean) / std`` (``x * std + mean`` inverted) with the adapted statistics,
    shaped to broadcast along the feature axis of the graph's (NCHW) layout."""
    mean, std = layer.statistics()
    rank = len(node.inputs[0].shape)
    shape = [1] * rank
    if layer.axis is not None:
        shape[nhwc_axis_to_nchw(layer.axis, rank)] = mean.shape[0]
    mean, std = g.const(f"{base}/mean", mean.reshape(shape)), g.const(f"{base}/std", std.reshape(shape))
    if layer.invert:
        return g.op("Add", [g.op("Mul", [xs[0], std], f"{base}/scaled"), mean], base)
    return g.op("Div", [g.op("Sub", [xs[0], mean], f"{base}/centred"), std], base)


def _batch_norm(g, layer, xs, node, base):
    p, st = layer.params, layer.state
    rank = len(node.inputs[0].shape)
    if rank in (2, 4):
        return g.op("BatchNormalization",
                    [xs[0], g.const(f"{base}/gamma", p["gamma"]), g.const(f"{base}/beta", p["beta"]),
                     g.const(f"{base}/mean", st["running_mean"]),
                     g.const(f"{base}/var", st["running_var"])],
                    base, epsilon=float(layer.eps), momentum=float(layer.momentum))
    # other ranks normalise the last axis, which ONNX's BatchNormalization does not:
    # the inference-mode affine map, in float64 then rounded once
    scale = p["gamma"] / np.sqrt(st["running_var"].astype(np.float64) + layer.eps)
    shift = p["beta"] - st["running_mean"] * scale
    y = g.op("Mul", [xs[0], g.const(f"{base}/scale", scale)], f"{base}/scaled")
    return g.op("Add", [y, g.const(f"{base}/shift", shift)], base)


def _activation_layer(g, layer, xs, node, base):
    return _activation(g, layer, xs[0], len(node.inputs[0].shape), base)


def _merge(op_type):
    def convert(g, layer, xs, node, base):
        y = xs[0]
        for i, x in enumerate(xs[1:]):
            y = g.op(op_type, [y, x], base if i == len(xs) - 2 else f"{base}/{i}")
        return y
    return convert


def _concat(g, layer, xs, node, base):
    rank = len(node.inputs[0].shape)
    return g.op("Concat", xs, base, axis=nhwc_axis_to_nchw(layer.axis, rank))


_CONVERTERS = {
    L.Conv2D: _conv2d, L.DepthwiseConv2D: _depthwise, L.Conv2DTranspose: _conv_transpose,
    L.Dense: _dense, L.MaxPool2D: _pool("MaxPool"),
    L.AvgPool2D: _pool("AveragePool", count_include_pad=1),
    L.GlobalAvgPool2D: _global_pool("GlobalAveragePool"),
    L.GlobalMaxPool2D: _global_pool("GlobalMaxPool"),
    L.Flatten: _flatten, L.Reshape: _reshape, L.UpSampling2D: _upsample,
    L.ZeroPadding2D: _zero_pad, L.Cropping2D: _crop, L.Dropout: _identity,
    L.BatchNorm2D: _batch_norm,
    L.Add: _merge("Add"), L.Subtract: _merge("Sub"), L.Multiply: _merge("Mul"),
    L.Concatenate: _concat,
}
for _cls in (L.ReLU, L.LeakyReLU, L.ELU, L.Sigmoid, L.Tanh, L.Softmax, L.SiLU, L.GELU):
    _CONVERTERS[_cls] = _activation_layer
for _cls in (P.RandomFlip, P.RandomCrop, P.RandomTranslation, P.RandomRotation, P.RandomZoom,
             P.RandomContrast):
    _CONVERTERS[_cls] = _augmentation
_CONVERTERS[P.Rescaling] = _rescaling
_CONVERTERS[P.Normalization] = _normalization


def exportable_layers():
    """The layer classes :func:`export` converts."""
    return sorted(c.__name__ for c in _CONVERTERS)


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------
def _calls(outputs):
    """The layer calls from the inputs to ``outputs``, each after those it depends on."""
    order, done = [], set()
    for out in outputs:
        stack = [(out.node, False)]
        while stack:
            node, expanded = stack.pop()
            if id(node) in done:
                continue
            if expanded or not node.inputs:
                done.add(id(node))
                if node.inputs:
                    order.append(node)
                continue
            stack.append((node, True))
            stack.extend((t.node, False) for t in reversed(node.inputs) if id(t.node) not in done)
    return order


def _value_info(onnx, name, elem, shape):
    return onnx.helper.make_tensor_value_info(name, elem, ["N", *shape])


def _rename_outputs(g, renames):
    """Give each graph output its name: the node that computes it is renamed when no other
    node reads its value (and no earlier output took it), else an Identity copies it."""
    read = {i for n in g.nodes for i in n.input}
    producer = {o: n for n in g.nodes for o in n.output}
    for value, name in renames:
        n = producer.pop(value, None)
        if n is not None and value not in read:
            n.output[list(n.output).index(value)] = name
        else:
            g.nodes.append(g.onnx.helper.make_node("Identity", [value], [name],
                                                   name=g.name(f"{name}/Identity")))


def build(model, opset_version=17, dtype=None):
    """The ``onnx.ModelProto`` of ``model`` (see :func:`cconv.onnx.export`)."""
    onnx = require_onnx()
    if not getattr(model, "built", False):
        raise ValueError("cannot export a model that is not built: call model.build(input_shape) "
                         "or fit it first")
    if isinstance(opset_version, bool) or opset_version not in EXPORT_OPSETS:
        raise ValueError(f"opset_version must be an int from {EXPORT_OPSETS.start} to "
                         f"{EXPORT_OPSETS.stop - 1}, got {opset_version!r}")
    dtype = np.dtype(model.dtype if dtype is None else dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    elem = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    g = _Graph(onnx, dtype, opset_version)
    calls = _calls(model.outputs)
    for layer in {id(n.layer): n.layer for n in calls}.values():
        if type(layer) not in _CONVERTERS:
            raise ValueError(f"cannot export layer {layer.name!r} ({type(layer).__name__}) to ONNX: "
                             f"cconv exports {', '.join(exportable_layers())}")
        act = getattr(layer, "activation", None)
        if act is not None and type(act) not in _CONVERTERS:
            raise ValueError(f"cannot export the activation {act!r} of layer {layer.name!r}")
    out_names = []
    for name in model.output_names:          # the same tensor may be listed twice
        out_names.append(name if name not in out_names else f"{name}_{len(out_names)}")
    g.reserve(model.input_names + out_names)
    value = {}
    graph_inputs = []
    for t in model.inputs:
        name = t.layer.name
        graph_inputs.append(_value_info(onnx, name, elem, t.shape[1:]))
        value[id(t)] = (g.op("Transpose", [name], f"{name}/nchw", perm=list(TO_NCHW))
                        if len(t.shape) == 4 else name)
    seen = {}
    for node in calls:
        layer = node.layer
        k = seen.get(id(layer), 0)
        seen[id(layer)] = k + 1
        base = layer.name if k == 0 else f"{layer.name}:{k}"
        xs = [value[id(t)] for t in node.inputs]
        value[id(node.output)] = _CONVERTERS[type(layer)](g, layer, xs, node, base)
    graph_outputs, renames = [], []
    for t, name in zip(model.outputs, out_names):
        v = value[id(t)]
        if len(t.shape) == 4:
            v = g.op("Transpose", [v], f"{name}/nhwc", perm=list(TO_NHWC))
        renames.append((v, name))
        graph_outputs.append(_value_info(onnx, name, elem, t.shape[1:]))
    _rename_outputs(g, renames)
    graph = onnx.helper.make_graph(g.nodes, model.name, graph_inputs, graph_outputs, g.initializers,
                                   doc_string=DOC)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset_version)],
                                   producer_name="cconv", producer_version=__version__,
                                   doc_string=DOC)
    proto.ir_version = min(proto.ir_version, 8 if opset_version < 19 else 9 if opset_version < 21
                           else 10)
    onnx.helper.set_model_props(proto, {"cconv.layout": "inputs and outputs NHWC (N, H, W, C); "
                                        "rank-4 tensors inside the graph NCHW",
                                        "cconv.model": model.name})
    onnx.checker.check_model(proto)
    return proto


DOC = ("Exported by cconv. Inputs and outputs are NHWC (N, H, W, C) like cconv's, with a "
       "dynamic batch dimension 'N'; image tensors inside the graph are NCHW (a Transpose "
       "after each image input and before each image output or flatten). Inference mode: "
       "dropout removed, batch normalisation with its running statistics, random "
       "augmentations the identity (RandomCrop its central window).")
