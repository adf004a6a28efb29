"""ONNX graph -> trainable cconv model (see :func:`cconv.onnx.load` for the contract).

Each ONNX tensor is mapped to a cconv symbolic tensor and a *kind* that says how the two
relate:

``"plain"``  the cconv tensor is the ONNX tensor.
``"nchw"``   an image: the ONNX tensor is NCHW, the cconv tensor its NHWC transpose.
``"flat"``   the cconv tensor ``(N, F)`` is the ONNX tensor flattened, its features
             reordered by ``perm`` (``cconv[:, j] = onnx.reshape(N, -1)[:, perm[j]]``; None:
             not reordered). Flattening an NCHW image gives this: cconv flattens NHWC, and
             the Dense kernel that reads the features gets its rows permuted to match.

Elementwise functions written as several nodes (GELU as ``x * 0.5 * (1 + erf(x / sqrt 2))``,
SiLU as ``x * sigmoid(x)``...) are recognised by evaluating the subgraph on sample points
and comparing it with the activations cconv has; nothing of the file is executed.
"""
import math
import re
from collections import namedtuple

import numpy as np

from .. import layers as L
from ..model import Model
from ..symbolic import Input, InputLayer
from ._common import TO_NCHW, TO_NHWC, require_onnx, unique_name
from ._read import TensorReader, check_model

_BATCH = "N"          # the batch dimension inside folded shape values

#: Default-domain operators :func:`cconv.onnx.load` converts.
SUPPORTED_OPS = (
    "Add", "AveragePool", "BatchNormalization", "Cast", "Concat", "Constant", "ConstantOfShape",
    "Conv", "ConvTranspose", "Div", "Dropout", "Elu", "Erf", "Exp", "Flatten", "Gather", "Gelu",
    "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Identity", "LeakyRelu", "MatMul", "MaxPool",
    "Mul", "Neg", "Pad", "Pow", "Reciprocal", "ReduceMax", "ReduceMean", "Relu", "Reshape",
    "Resize", "Shape", "Sigmoid", "Slice", "Softmax", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh",
    "Transpose", "Unsqueeze",
)

# Elementwise maths: a connected group of these nodes computing f(x) of one tensor x (with
# scalar constants) is matched against cconv's activations.
_MATH = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power,
    "Sqrt": np.sqrt, "Neg": np.negative, "Reciprocal": np.reciprocal, "Tanh": np.tanh,
    "Exp": np.exp, "Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "Erf": None,   # scipy.special.erf, imported when needed
    "Relu": lambda x: np.maximum(x, 0.0),
}


def _gelu_exact(x):
    from scipy.special import ndtr
    return x * ndtr(x)


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


#: The functions a group of elementwise nodes may compute: (cconv layer class, kwargs, f).
_CANDIDATES = (
    (L.GELU, {"approximate": "none"}, _gelu_exact),
    (L.GELU, {"approximate": "tanh"}, _gelu_tanh),
    (L.SiLU, {}, lambda x: x / (1 + np.exp(-x))),
    (L.Sigmoid, {}, lambda x: 1 / (1 + np.exp(-x))),
    (L.Tanh, {}, np.tanh),
    (L.ReLU, {}, lambda x: np.maximum(x, 0)),
    (None, {}, lambda x: x),                      # the identity: no layer
)


class _Val:
    """An ONNX tensor in the cconv model: the cconv symbolic tensor and how they relate."""

    __slots__ = ("sym", "kind", "perm", "shape")

    def __init__(self, sym, kind="plain", perm=None, shape=None):
        self.sym, self.kind, self.perm = sym, kind, perm
        cshape = sym.shape[1:]
        if shape is None:
            shape = (cshape[2], cshape[0], cshape[1]) if kind == "nchw" else cshape
        self.shape = tuple(shape)          # the ONNX shape, without the batch dimension


#: What :meth:`_Converter.activation_of` needs to know of a value before it exists.
_Layout = namedtuple("_Layout", "kind perm shape")


#: The most features whose order :func:`_nchw_order` computes (a 128 MiB index): a graph may
#: declare any image size, and the index is made before the Dense kernel that would bound it.
MAX_REORDERED_FEATURES = 1 << 24


def _nchw_order(c, h, w):
    """``perm`` of an NCHW image flattened NHWC: cconv feature (h, w, c) is ONNX feature
    ``c * H * W + h * W + w``; None when that is the same order (C or H * W is 1)."""
    if c == 1 or h * w == 1:
        return None
    if c * h * w > MAX_REORDERED_FEATURES:
        raise _NodeError(f"flattening an NCHW image of {c} x {h} x {w} into more than "
                         f"{MAX_REORDERED_FEATURES} features is not supported")
    return np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()


#: The most nodes an elementwise group may have (GELU's tanh form has 9).
_MAX_GROUP = 64


class _NodeError(ValueError):
    pass


class _Converter:
    def __init__(self, proto, reader, name):
        self.onnx = require_onnx()
        self.opset = check_model(proto, name)
        self.graph = proto.graph
        self.reader = reader
        self.where = name
        self.const = {}
        self.vals = {}
        self.weights = []                  # (layer, {key: array})
        self.done = set()                  # ids of nodes already converted (fused)
        self.taken = set()
        self.dtype = None
        self.node = None

    # -- helpers -------------------------------------------------------------------------
    def fail(self, message):
        n = self.node
        raise _NodeError(f"node {n.name!r} ({n.op_type}): {message}")

    def attrs(self, node):
        out = {}
        for a in node.attribute:
            if a.type == self.onnx.AttributeProto.TENSOR:
                out[a.name] = self.reader.array(a.t, f"attribute {a.name!r} of node {node.name!r}")
            elif a.type in (self.onnx.AttributeProto.GRAPH, self.onnx.AttributeProto.GRAPHS):
                out[a.name] = None                              # refused by the op's handler
            else:
                out[a.name] = self.onnx.helper.get_attribute_value(a)
                if isinstance(out[a.name], bytes):
                    out[a.name] = out[a.name].decode("utf-8", "replace")
        return out

    def layer_name(self, base):
        return unique_name(re.sub(r"[^A-Za-z0-9_.:-]+", ".", base).strip("./") or "layer",
                           self.taken)

    def call(self, layer_cls, kwargs, inputs, weights=None, base=None):
        """Make a cconv layer and call it on ``inputs`` (symbolic tensors); returns its output."""
        n = self.node
        try:
            layer = layer_cls(name=self.layer_name(base or n.name or n.op_type.lower()), **kwargs)
            y = layer(inputs)
        except (ValueError, TypeError) as exc:
            self.fail(f"cconv's {layer_cls.__name__} cannot take it: {exc}")
        if weights:
            self.weights.append((layer, weights))
        return y

    def value(self, name):
        if name in self.vals:
            return self.vals[name]
        if name in self.const:
            self.fail(f"input {name!r} is a constant where cconv needs a tensor computed from the "
                      f"model's inputs")
        self.fail(f"input {name!r} is not computed by any earlier node (a truncated or unsorted "
                  f"graph?)")

    def constant(self, name, what):
        if name not in self.const:
            self.fail(f"{what} ({name!r}) must be a constant (an initializer or a Constant node)")
        return self.const[name]

    def optional_const(self, node, i, what):
        if len(node.input) > i and node.input[i]:
            return self.constant(node.input[i], what)
        return None

    def floats(self, array, what):
        a = np.asarray(array)
        if a.dtype.kind != "f":
            self.fail(f"{what} must be a float tensor, got {a.dtype}")
        return a

    def image(self, v):
        """The NHWC cconv tensor of a value that must be an NCHW image."""
        if v.kind == "nchw":
            return v.sym
        shape = ", ".join(map(str, v.shape))
        if v.kind != "flat" or len(v.shape) != 3:
            self.fail(f"needs an NCHW image, got a tensor of shape (N, {shape})"
                      + (" in NHWC order (add a Transpose to NCHW)" if v.kind == "plain"
                         and len(v.shape) == 3 else ""))
        c, h, w = v.shape
        if not ((v.perm is None and (h * w == 1 or c == 1)) or
                (v.perm is not None and v.perm.size == c * h * w
                 and np.array_equal(v.perm, _nchw_order(c, h, w)))):
            self.fail(f"reshaping features into an NCHW image (N, {shape}) would reorder them: "
                      f"cconv's Reshape fills images in NHWC order")
        return self.call(L.Reshape, {"target_shape": (h, w, c)}, v.sym,
                         base=f"{self.node.name or 'reshape'}.to_image")

    def plain(self, v):
        """The cconv tensor of a value, as the ONNX tensor is (NCHW images stay NHWC)."""
        if v.kind != "flat" or len(v.shape) == 1 and v.perm is None:
            return v.sym
        if v.perm is not None:
            self.fail(f"the tensor {v.shape} is a flattened NCHW image; cconv flattens NHWC and "
                      f"would give its features in another order")
        return self.call(L.Reshape, {"target_shape": v.shape}, v.sym,
                         base=f"{self.node.name or 'reshape'}.unflatten")

    def spatial(self, attrs, kernel, hw):
        """Explicit ((top, bottom), (left, right)) from ``pads`` / ``auto_pad``."""
        s = tuple(attrs.get("strides", (1, 1)))
        d = tuple(attrs.get("dilations", (1, 1)))
        auto = attrs.get("auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = []
            for i in range(2):
                eff = d[i] * (kernel[i] - 1) + 1
                total = max((-(-hw[i] // s[i]) - 1) * s[i] + eff - hw[i], 0)
                small, big = total // 2, total - total // 2
                pads.append((small, big) if auto == "SAME_UPPER" else (big, small))
            return s, d, tuple(pads)
        if auto == "VALID":
            return s, d, ((0, 0), (0, 0))
        if auto != "NOTSET":
            self.fail(f"unknown auto_pad {auto!r}")
        p = list(attrs.get("pads", (0, 0, 0, 0)))
        if len(p) != 4 or len(s) != 2 or len(d) != 2:
            self.fail("only 2-D convolutions and pools (4-D NCHW tensors) are supported")
        return s, d, ((p[0], p[2]), (p[1], p[3]))

    def single_consumer(self, name):
        """The node that is the only reader of ``name`` (not a graph output), or None."""
        users = self.consumers.get(name, [])
        if len(users) == 1 and name not in self.outputs:
            return users[0]
        return None

    # -- activations and their fusion ------------------------------------------------------
    def activation_of(self, node, v):
        """(layer class, kwargs) of an activation node applied to ``v``, or None."""
        op, a = node.op_type, self.attrs(node)
        if op == "Relu":
            return L.ReLU, {}
        if op == "LeakyRelu":
            return L.LeakyReLU, {"alpha": float(a.get("alpha", 0.01))}
        if op == "Elu":
            return L.ELU, {"alpha": float(a.get("alpha", 1.0))}
        if op == "Gelu":
            return L.GELU, {"approximate": a.get("approximate", "none")}
        if op == "Softmax":
            rank = len(v.shape) + 1
            axis = int(a.get("axis", -1)) % rank
            if v.kind == "nchw":
                axis = TO_NHWC.index(axis)
            elif v.kind == "flat":
                if axis != 1 or (len(v.shape) > 1 and tuple(v.shape[1:]) != (1,) * (len(v.shape) - 1)):
                    return None
                axis = rank - 1
            return L.Softmax, {"axis": -1 if axis == rank - 1 else axis}
        return None

    def fused_activation(self, out_name, v):
        """An activation that only reads ``out_name`` (of a Conv/Dense), to fuse into it:
        ``(activation layer, [(output name, nodes it covers)])`` or None."""
        node = self.single_consumer(out_name)
        if node is not None and node.op_type in ("Relu", "LeakyRelu", "Elu", "Gelu", "Softmax"):
            spec = self.activation_of(node, v)
            if spec is not None and (spec[0] is not L.Softmax or spec[1]["axis"] == -1):
                return spec, node.output[0], [node]
        escapes = self.escapes_of.get(out_name, [])
        if len(escapes) == 1 and out_name not in self.outputs:
            esc = escapes[0]
            cls, kwargs, members = self.regions[esc]
            users = self.consumers.get(out_name, [])
            if cls not in (None, "unknown") and all(id(u) in members for u in users):
                return (cls, kwargs), esc, [u for u in self.graph.node if id(u) in members]
        return None

    def with_activation(self, layer_cls, kwargs, out_name, v_kind, inputs, weights, shape):
        """Call a Conv/Dense layer with the activation that follows it fused in; registers
        the value of the last output it covers."""
        fused = self.fused_activation(out_name, _Layout(v_kind, None, shape))
        if fused is not None:
            (act_cls, act_kwargs), final, covered = fused
            kwargs = dict(kwargs, activation=act_cls(**act_kwargs))
            for n in covered:
                self.done.add(id(n))
            out_name = final
        y = self.call(layer_cls, kwargs, inputs, weights)
        self.vals[out_name] = _Val(y, v_kind)
        return out_name

    # -- the graph -----------------------------------------------------------------------
    def find_regions(self):
        """Groups of elementwise nodes computing f(x) of one tensor x, matched to cconv's
        activations: ``self.regions[output] = (layer class or None, kwargs, member ids)``
        for each member output read outside the group (an "escape")."""
        source, producer = {}, {}
        nodes = list(self.graph.node)
        for n in nodes:
            for o in n.output:
                producer[o] = n
        members = set()
        for n in nodes:
            if n.op_type not in _MATH or n.domain not in ("", "ai.onnx") or len(n.output) != 1:
                continue
            srcs = set()
            ok = True
            for i in n.input:
                if i in self.initial_consts:
                    ok = ok and self.initial_consts[i].size == 1
                    continue
                srcs.add(source.get(i, i))
            if ok and len(srcs) == 1:
                source[n.output[0]] = srcs.pop()
                members.add(id(n))
        self.regions, self.escapes_of = {}, {}
        outputs = self.outputs
        by_id = {id(n): n for n in nodes}
        order = {id(n): k for k, n in enumerate(nodes)}
        for n in nodes:
            if id(n) not in members:
                continue
            out = n.output[0]
            readers = self.consumers.get(out, [])
            if out not in outputs and all(id(r) in members for r in readers):
                continue
            # the group of `out`: its member ancestors with the same source (at most
            # _MAX_GROUP: cconv's activations take a few nodes, and a bound keeps a graph of
            # thousands of chained nodes, each read outside, from costing their square)
            group, stack = set(), [n]
            while stack and len(group) <= _MAX_GROUP:
                m = stack.pop()
                if id(m) in group:
                    continue
                group.add(id(m))
                stack.extend(producer[i] for i in m.input
                             if i in producer and id(producer[i]) in members)
            if len(group) > _MAX_GROUP:
                cls, kwargs = "unknown", {"ops": sorted({by_id[i].op_type for i in group})}
            else:
                cls, kwargs = self.classify(out, source[out], group, by_id, order)
            self.regions[out] = (cls, kwargs, group)
            self.escapes_of.setdefault(source[out], []).append(out)
        self.members = members
        self.source = source

    def classify(self, out, src, group, by_id, order):
        """Evaluate the group's function on sample points, its nodes in graph order (a loop,
        not a recursion: a chain of thousands of nodes is a valid graph)."""
        from scipy.special import erf
        x = np.concatenate([np.linspace(-8.0, 8.0, 321), [-30.0, -0.1, 0.0, 0.1, 30.0]])
        memo = {src: x}
        ops = sorted({by_id[i].op_type for i in group})
        for k in sorted(group, key=order.__getitem__):
            n = by_id[k]
            args = []
            for name in n.input:
                if name in memo:
                    args.append(memo[name])
                elif name in self.initial_consts:
                    args.append(float(np.asarray(self.initial_consts[name], np.float64).reshape(())))
                else:                   # computed by a later node: not a sorted graph
                    return "unknown", {"ops": ops}
            fn = erf if n.op_type == "Erf" else _MATH[n.op_type]
            with np.errstate(all="ignore"):
                memo[n.output[0]] = fn(*args)
        y = memo[out]
        for cls, kwargs, f in _CANDIDATES:
            with np.errstate(all="ignore"):
                ref = f(x)
            if np.all(np.abs(y - ref) <= 1e-5 * (1 + np.abs(ref))):
                return cls, kwargs
        return "unknown", {"ops": ops}

    def convert(self):
        g = self.graph
        self.outputs = {o.name for o in g.output}
        self.initial_consts = {}
        for t in g.initializer:
            self.initial_consts[t.name] = self.reader.array(t, f"initializer {t.name!r}")
        for t in g.sparse_initializer:
            raise ValueError(f"{self.where!r}: sparse initializer {t.values.name!r} is not supported")
        for n in g.node:          # Constant nodes count as constants for the grouping too
            if n.op_type == "Constant" and len(n.output) == 1:
                self.node = n
                self.initial_consts[n.output[0]] = self.constant_node(n)
        self.const = dict(self.initial_consts)
        self.consumers = {}
        for n in g.node:
            for i in set(n.input):
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.find_regions()
        inputs = self.make_inputs()
        for n in g.node:
            self.node = n
            if id(n) in self.done or (n.op_type == "Constant" and n.output[0] in self.const):
                continue
            if n.domain not in ("", "ai.onnx"):
                self.fail(f"operator domain {n.domain!r} is not supported; cconv converts the "
                          f"default-domain operators {', '.join(SUPPORTED_OPS)}")
            if id(n) in self.members:
                self.region_node(n)
                continue
            if all(i in self.const for i in n.input if i) and n.op_type in _FOLD:
                _FOLD[n.op_type](self, n)
                continue
            handler = _HANDLERS.get(n.op_type)
            if handler is None:
                self.fail(f"operator {n.op_type!r} is not supported; cconv converts "
                          f"{', '.join(SUPPORTED_OPS)}")
            handler(self, n, self.attrs(n))
        return self.make_model(inputs)

    def region_node(self, n):
        out = n.output[0]
        if out not in self.regions:
            return                                  # read only inside its group
        cls, kwargs, group = self.regions[out]
        if cls == "unknown":
            self.fail(f"the elementwise function computed by nodes {kwargs['ops']} from tensor "
                      f"{self.source[out]!r} is not one cconv has (GELU, SiLU, sigmoid, tanh, "
                      f"ReLU)")
        v = self.value(self.source[out])
        if cls is None:
            self.vals[out] = v
            return
        y = self.call(cls, kwargs, v.sym)
        self.vals[out] = _Val(y, v.kind, v.perm, v.shape)

    def make_inputs(self):
        consts = self.const
        inputs = []
        for gi in self.graph.input:
            if gi.name in consts:
                continue                           # an initializer listed as input (IR < 4)
            tt = gi.type.tensor_type if gi.type.HasField("tensor_type") else None
            if tt is None or tt.elem_type not in (1, 11):
                raise ValueError(f"{self.where!r}: input {gi.name!r} must be a float32 or float64 "
                                 f"tensor")
            dtype = np.float32 if tt.elem_type == 1 else np.float64
            if self.dtype is not None and self.dtype != dtype:
                raise ValueError(f"{self.where!r}: inputs of different dtypes")
            self.dtype = dtype
            dims = list(tt.shape.dim)
            shape = []
            for k, d in enumerate(dims[1:], 1):
                if not d.HasField("dim_value") or d.dim_value < 1:
                    raise ValueError(f"{self.where!r}: input {gi.name!r} has a dynamic or invalid "
                                     f"dimension {k} ({d.dim_param or d.dim_value!r}); cconv "
                                     f"needs fixed sample shapes (only the batch may vary)")
                shape.append(int(d.dim_value))
            if len(dims) < 2:
                raise ValueError(f"{self.where!r}: input {gi.name!r} must have a batch dimension "
                                 f"and at least one more")
            name = self.layer_name(gi.name)
            users = self.consumers.get(gi.name, [])
            nhwc = len(shape) == 3 and users and all(
                u.op_type == "Transpose" and list(self.attrs(u).get("perm", ())) == list(TO_NCHW)
                for u in users)
            if len(shape) == 3 and not nhwc:
                c, h, w = shape
                sym = Input((h, w, c), name=name)
                self.vals[gi.name] = _Val(sym, "nchw")
            else:
                sym = Input(tuple(shape), name=name)
                self.vals[gi.name] = _Val(sym, "plain")
            inputs.append(sym)
        if not inputs:
            raise ValueError(f"{self.where!r}: the graph has no inputs")
        return inputs

    def make_model(self, inputs):
        outs = []
        for go in self.graph.output:
            if go.name not in self.vals:
                raise ValueError(f"{self.where!r}: graph output {go.name!r} is not computed by any "
                                 f"node (a truncated file?)")
            v = self.vals[go.name]
            self.node = next((n for n in self.graph.node if go.name in n.output), None)
            sym = self.plain(v)
            if isinstance(sym.layer, InputLayer):
                raise ValueError(f"{self.where!r}: graph output {go.name!r} is a graph input")
            layer = sym.layer
            wanted = re.sub(r"[^A-Za-z0-9_.:-]+", ".", go.name).strip("./")
            if wanted and wanted not in self.taken and layer.name != wanted:
                self.taken.discard(layer.name)
                layer.name = wanted
                self.taken.add(wanted)
            outs.append(sym)
        model = Model(inputs if len(inputs) > 1 else inputs[0], outs if len(outs) > 1 else outs[0],
                      name=self.layer_name(self.graph.name or "onnx_model"),
                      dtype=self.forced_dtype or self.dtype,
                      seed=0)
        for layer, arrays in self.weights:
            for key, arr in arrays.items():
                target = layer.params.get(key, layer.state.get(key))
                if target is None or target.shape != arr.shape:
                    raise ValueError(f"{self.where!r}: layer {layer.name!r}: weight {key!r} of shape "
                                     f"{arr.shape} does not fit "
                                     f"{None if target is None else target.shape}")
                np.copyto(target, arr, casting="unsafe")
        return model

    def constant_node(self, n):
        a = self.attrs(n)
        for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            if key in a:
                v = a[key]
                return np.asarray(v, np.float32 if "float" in key else
                                  np.int64 if "int" in key else None)
        self.fail(f"a Constant node with attributes {sorted(a)} is not supported")


# ---------------------------------------------------------------------------------------
# Constant folding: shape arithmetic (x.view(x.size(0), -1) and the like)
# ---------------------------------------------------------------------------------------
def _shape(c, n, a):
    v = c.value(n.input[0])
    full = np.array([_BATCH, *v.shape], dtype=object)
    c.const[n.output[0]] = full[int(a.get("start", 0)):a.get("end", None)]


#: A folded constant holds at most as many elements as the constants it is computed from
#: together (each counted once), or this many (shape arithmetic): folding costs what the file
#: holds, not what broadcasting two of its vectors against each other, gathering with a long
#: index or concatenating one constant a thousand times would.
_FOLD_MIN = 1 << 16


def _check_fold_size(c, n, count):
    bound = max(_FOLD_MIN, sum(int(np.size(c.const[i])) for i in set(n.input) if i))
    if count > bound:
        c.fail(f"folding it would make a constant of {count:,} elements from constants of "
               f"{bound:,}; cconv folds constants that do not grow")


def _fold_gather(c, n):
    data = np.asarray(c.const[n.input[0]])
    index = _numeric(c, n.input[1], "the index")
    axis = int(c.attrs(n).get("axis", 0))
    if data.ndim == 0 or not -data.ndim <= axis < data.ndim:
        c.fail(f"axis {axis} is out of range for a constant of shape {data.shape}")
    _check_fold_size(c, n, data.size // max(data.shape[axis], 1) * index.size)
    c.const[n.output[0]] = np.asarray(np.take(data, index.astype(np.int64),
                                              axis=int(c.attrs(n).get("axis", 0))), data.dtype)


def _axes(c, n, a):
    if "axes" in a:
        return [int(v) for v in a["axes"]]
    return [int(v) for v in np.asarray(c.const[n.input[1]]).ravel()] if len(n.input) > 1 and n.input[1] else None


def _fold_unsqueeze(c, n):
    x = np.asarray(c.const[n.input[0]])
    for ax in sorted(k % (x.ndim + len(_axes(c, n, c.attrs(n)))) for k in _axes(c, n, c.attrs(n))):
        x = np.expand_dims(x, ax)
    c.const[n.output[0]] = x


def _fold_squeeze(c, n):
    x = np.asarray(c.const[n.input[0]])
    axes = _axes(c, n, c.attrs(n))
    c.const[n.output[0]] = np.squeeze(x, axis=None if axes is None else tuple(axes))


def _fold_concat(c, n):
    _check_fold_size(c, n, sum(max(int(np.size(c.const[i])), 1) for i in n.input))
    parts = [np.atleast_1d(c.const[i]) for i in n.input]
    if any(p.dtype == object for p in parts):            # shapes with the batch size in them
        parts = [p.astype(object) for p in parts]
    c.const[n.output[0]] = np.concatenate(parts, axis=int(c.attrs(n).get("axis", 0)))


def _fold_cast(c, n):
    x = c.const[n.input[0]]
    to = c.attrs(n).get("to")
    if x.dtype == object or to not in (1, 11, 7, 6):
        c.const[n.output[0]] = x
    else:
        c.const[n.output[0]] = x.astype({1: np.float32, 11: np.float64, 7: np.int64, 6: np.int32}[to])


def _fold_slice(c, n):
    x = c.const[n.input[0]]
    starts, ends = (np.asarray(c.const[i], np.int64) for i in n.input[1:3])
    axes = c.optional_const(n, 3, "axes")
    steps = c.optional_const(n, 4, "steps")
    axes = range(len(starts)) if axes is None else np.asarray(axes, np.int64)
    steps = [1] * len(starts) if steps is None else np.asarray(steps, np.int64)
    index = [slice(None)] * x.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        index[int(ax)] = slice(int(s), int(e), int(st))
    c.const[n.output[0]] = x[tuple(index)]


def _numeric(c, name, what):
    a = np.asarray(c.const[name])
    if a.dtype == object:
        c.fail(f"{what} depends on the batch size, which cconv leaves open")
    return a


def _fold_constant_of_shape(c, n):
    shape = [int(d) for d in _numeric(c, n.input[0], "the shape").ravel()]
    value = c.attrs(n).get("value", np.zeros(1, np.float32))
    if any(d < 0 for d in shape) or math.prod(shape) > 1 << 16:
        c.fail(f"a constant of shape {shape} (cconv folds small shape constants only)")
    c.const[n.output[0]] = np.full(shape, np.asarray(value).ravel()[0], np.asarray(value).dtype)


def _fold_reshape(c, n):
    x = np.asarray(c.const[n.input[0]])
    shape = [int(d) for d in _numeric(c, n.input[1], "the shape").ravel()]
    if not int(c.attrs(n).get("allowzero", 0)):
        shape = [x.shape[i] if d == 0 and i < x.ndim else d for i, d in enumerate(shape)]
    try:
        c.const[n.output[0]] = x.reshape(shape)
    except ValueError as exc:
        c.fail(f"cannot reshape a constant of shape {x.shape} to {shape} ({exc})")


def _fold_transpose(c, n):
    x = np.asarray(c.const[n.input[0]])
    perm = c.attrs(n).get("perm")
    c.const[n.output[0]] = np.transpose(x, None if perm is None else [int(p) for p in perm])


def _fold_shape(c, n):
    a = c.attrs(n)
    shape = np.asarray(np.shape(c.const[n.input[0]]), np.int64)
    c.const[n.output[0]] = shape[int(a.get("start", 0)):a.get("end", None)]


def _fold_identity(c, n):
    c.const[n.output[0]] = c.const[n.input[0]]


def _fold_math(c, n):
    args = [c.const[i] for i in n.input]
    if any(np.asarray(a).dtype == object for a in args):
        c.fail("arithmetic on the batch size is not supported")
    try:
        shape = np.broadcast_shapes(*(np.shape(a) for a in args))
    except ValueError:
        c.fail(f"constants of shapes {[np.shape(a) for a in args]} do not broadcast")
    _check_fold_size(c, n, math.prod(shape))
    fn = _MATH[n.op_type]
    if fn is None:
        from scipy.special import erf as fn
    c.const[n.output[0]] = np.asarray(fn(*args))


_FOLD = {"Gather": _fold_gather, "Unsqueeze": _fold_unsqueeze, "Squeeze": _fold_squeeze,
         "Concat": _fold_concat, "Cast": _fold_cast, "Slice": _fold_slice,
         "Identity": _fold_identity, "ConstantOfShape": _fold_constant_of_shape,
         "Shape": _fold_shape,
         "Reshape": _fold_reshape, "Transpose": _fold_transpose,
         **{op: _fold_math for op in _MATH}}


# ---------------------------------------------------------------------------------------
# Operators
# ---------------------------------------------------------------------------------------
def _conv_operands(c, n, a):
    """The NHWC input, the OIHW (IOHW for ConvTranspose) weight, the bias and the group."""
    x = c.image(c.value(n.input[0]))
    w = c.floats(c.constant(n.input[1], "the weight"), "the weight")
    b = c.optional_const(n, 2, "the bias")
    if w.ndim != 4:
        c.fail(f"only 2-D convolutions are supported (weight of shape {w.shape})")
    if "kernel_shape" in a and tuple(a["kernel_shape"]) != w.shape[2:]:
        c.fail(f"kernel_shape {a['kernel_shape']} differs from the weight's {w.shape[2:]}")
    return x, w, b, int(a.get("group", 1))


def _conv_layer(c, n, cls, kwargs, x, w, b):
    """Call ``cls`` with the weight converted to cconv's layout (both ONNX layouts put the
    kernel's height and width last, cconv first) and the activation after it fused in."""
    M = kwargs["filters"]
    if b is not None and b.shape != (M,):
        c.fail(f"bias of shape {b.shape} for {M} output channels")
    weights = {"kernel": w.transpose(2, 3, 1, 0)}
    if b is not None:
        weights["bias"] = b
    kwargs = dict(kwargs, kernel_size=w.shape[2:], use_bias=b is not None)
    c.with_activation(cls, kwargs, n.output[0], "nchw", x, weights, (M, 1, 1))


def _conv(c, n, a):
    x, w, b, group = _conv_operands(c, n, a)
    M, cg, KH, KW = w.shape
    C = x.shape[-1]
    if cg * group != C or M % group:
        c.fail(f"weight of shape {w.shape} with group={group} does not fit an input of {C} channels")
    s, d, pads = c.spatial(a, (KH, KW), x.shape[1:3])
    _conv_layer(c, n, L.Conv2D, dict(filters=M, stride=s, padding=pads, dilation=d, groups=group),
                x, w, b)


def _conv_transpose(c, n, a):
    x, w, b, group = _conv_operands(c, n, a)
    Cin, mg, KH, KW = w.shape
    M = mg * group
    if Cin != x.shape[-1] or Cin % group:
        c.fail(f"weight of shape {w.shape} with group={group} does not fit an input of "
               f"{x.shape[-1]} channels")
    s = tuple(a.get("strides", (1, 1)))
    d = tuple(a.get("dilations", (1, 1)))
    op = list(a.get("output_padding", (0, 0)))
    hw = x.shape[1:3]
    auto = a.get("auto_pad", "NOTSET")
    full = [(hw[i] - 1) * s[i] + op[i] + d[i] * ((KH, KW)[i] - 1) + 1 for i in range(2)]
    if "output_shape" in a or auto in ("SAME_UPPER", "SAME_LOWER"):
        target = list(a["output_shape"])[-2:] if "output_shape" in a else [h * st for h, st in zip(hw, s)]
        pads = []
        for i in range(2):
            total = full[i] - target[i]
            if total < 0:
                c.fail(f"output_shape {target} needs negative padding")
            small, big = total // 2, total - total // 2
            pads.append((small, big) if auto == "SAME_UPPER" else (big, small))
        pads = tuple(pads)
    elif auto == "VALID":
        pads = ((0, 0), (0, 0))
    else:
        p = list(a.get("pads", (0, 0, 0, 0)))
        pads = ((p[0], p[2]), (p[1], p[3]))
    _conv_layer(c, n, L.Conv2DTranspose, dict(filters=M, stride=s, padding=pads, output_padding=tuple(op),
                                              dilation=d, groups=group), x, w, b)


def _features(c, v, what):
    """The cconv tensor and feature permutation of a value that must be (N, F)."""
    if len(v.shape) != 1 and not (v.kind == "flat"):
        c.fail(f"{what} must be a 2-D (N, features) tensor, got shape "
               f"(N, {', '.join(map(str, v.shape))})")
    return v.sym, (v.perm if v.kind == "flat" else None)


def _dense(c, n, kernel, bias, x_name, out_name):
    v = c.value(x_name)
    x, perm = _features(c, v, "the input")
    K = x.shape[-1]
    if kernel.shape[0] != K:
        c.fail(f"weight of shape {kernel.shape} does not fit {K} input features")
    if perm is not None:
        kernel = kernel[perm]                 # cconv feature j is ONNX feature perm[j]
    weights = {"kernel": kernel}
    if bias is not None:
        weights["bias"] = bias
    kwargs = dict(units=kernel.shape[1], use_bias=bias is not None)
    c.with_activation(L.Dense, kwargs, out_name, "plain", x, weights, (kernel.shape[1],))


def _bias_vector(c, b, units, alpha=1.0):
    b = np.asarray(b, np.float64 if b.dtype == np.float64 else np.float32)
    if b.size == 1:
        return np.full(units, b.reshape(()) * alpha, b.dtype)
    if b.shape in ((units,), (1, units)):
        return (b.reshape(units) * alpha).astype(b.dtype)
    c.fail(f"bias of shape {b.shape} for {units} outputs")


def _gemm(c, n, a):
    if int(a.get("transA", 0)):
        c.fail("transA=1 is not supported")
    w = c.floats(c.constant(n.input[1], "the weight B"), "the weight B")
    if w.ndim != 2:
        c.fail(f"the weight B must be 2-D, got shape {w.shape}")
    w = w.T if int(a.get("transB", 0)) else w
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    if alpha != 1.0:
        w = (w * alpha).astype(w.dtype)
    b = c.optional_const(n, 2, "the bias C")
    bias = None if b is None else _bias_vector(c, c.floats(b, "the bias C"), w.shape[1], beta)
    _dense(c, n, np.ascontiguousarray(w), bias, n.input[0], n.output[0])


def _matmul(c, n, a):
    if n.input[1] not in c.const:
        c.fail("a product of two computed tensors is not supported; the second operand must be a "
               "constant weight matrix")
    w = c.floats(c.const[n.input[1]], "the weight")
    if w.ndim != 2:
        c.fail(f"the weight must be 2-D, got shape {w.shape}")
    bias, out = None, n.output[0]
    nxt = c.single_consumer(out)
    if nxt is not None and nxt.op_type == "Add" and len(nxt.input) == 2:
        other = nxt.input[1] if nxt.input[0] == n.output[0] else nxt.input[0]
        if other in c.const and c.const[other].size in (1, w.shape[1]) and \
                c.const[other].shape in ((), (1,), (w.shape[1],), (1, w.shape[1])):
            bias = _bias_vector(c, c.floats(c.const[other], "the bias"), w.shape[1])
            c.done.add(id(nxt))
            out = nxt.output[0]
    _dense(c, n, np.ascontiguousarray(w), bias, n.input[0], out)


def _pool_common(c, n, a):
    v = c.value(n.input[0])
    x = c.image(v)
    if len(n.output) > 1 and n.output[1]:
        c.fail("the indices output of MaxPool is not supported")
    k = tuple(int(i) for i in a.get("kernel_shape", ()))
    if len(k) != 2:
        c.fail(f"only 2-D pools are supported (kernel_shape {k})")
    s, d, pads = c.spatial(a, k, x.shape[1:3])
    if tuple(d) != (1, 1):
        c.fail(f"dilated pooling (dilations {d}) is not supported")
    if int(a.get("ceil_mode", 0)):
        hw = x.shape[1:3]
        for i in range(2):
            if (hw[i] + sum(pads[i]) - k[i]) % s[i]:
                c.fail("ceil_mode=1 gives an output size cconv's pools (floor) do not; it is "
                       "accepted only where both agree")
    return x, k, s, pads


def _max_pool(c, n, a):
    x, k, s, pads = _pool_common(c, n, a)
    y = c.call(L.MaxPool2D, dict(pool_size=k, stride=s, padding=pads), x)
    c.vals[n.output[0]] = _Val(y, "nchw")


def _avg_pool(c, n, a):
    x, k, s, pads = _pool_common(c, n, a)
    if not int(a.get("count_include_pad", 0)) and any(p for pp in pads for p in pp):
        c.fail("count_include_pad=0 with padding is not supported: cconv's AvgPool2D counts the "
               "padded zeros (PyTorch's default, count_include_pad=1)")
    y = c.call(L.AvgPool2D, dict(pool_size=k, stride=s, padding=pads), x)
    c.vals[n.output[0]] = _Val(y, "nchw")


def _global_pool(cls):
    def handler(c, n, a):
        x = c.image(c.value(n.input[0]))
        y = c.call(cls, {}, x)
        c.vals[n.output[0]] = _Val(y, "flat", None, (x.shape[-1], 1, 1))
    return handler


def _reshaped(c, v, rest):
    """``v`` reshaped to ``rest`` (the batch kept): a "flat" value, with a cconv Flatten
    only where ``v`` is not yet a flat (N, F) tensor."""
    rest = tuple(int(r) for r in rest)
    if rest == v.shape:
        return v
    if v.kind == "flat" or (v.kind == "plain" and len(v.shape) == 1):
        return _Val(v.sym, "flat", v.perm, rest)
    y = c.call(L.Flatten, {}, v.sym)
    perm = None
    if v.kind == "nchw":
        try:
            perm = _nchw_order(*v.shape)
        except _NodeError as exc:
            c.fail(str(exc))
    return _Val(y, "flat", perm, rest)


def _reduce(cls):
    """ReduceMean / ReduceMax over height and width: a global pool."""
    def handler(c, n, a):
        v = c.value(n.input[0])
        axes = a.get("axes")
        if axes is None and len(n.input) > 1 and n.input[1]:
            axes = np.asarray(c.constant(n.input[1], "axes")).ravel()
        rank = len(v.shape) + 1
        if axes is None or sorted(int(k) % rank for k in axes) != [2, 3] or rank != 4:
            c.fail(f"only a reduction over the height and width of an NCHW image (axes 2, 3) is "
                   f"supported, got axes {None if axes is None else list(axes)}")
        x = c.image(v)
        y = c.call(cls, {}, x)
        keep = int(a.get("keepdims", 1))
        c.vals[n.output[0]] = _Val(y, "flat", None, (x.shape[-1], 1, 1) if keep else (x.shape[-1],))
    return handler


def _flatten(c, n, a):
    v = c.value(n.input[0])
    axis = int(a.get("axis", 1))
    if axis % (len(v.shape) + 1) != 1:
        c.fail(f"axis={axis} is not supported: cconv flattens every axis but the batch (axis=1)")
    c.vals[n.output[0]] = _reshaped(c, v, (math.prod(v.shape),))


def _reshape(c, n, a):
    v = c.value(n.input[0])
    target = list(np.asarray(c.constant(n.input[1], "the shape")).ravel())
    allowzero = int(a.get("allowzero", 0))
    size = math.prod(v.shape)
    where = f"cannot reshape (N, {', '.join(map(str, v.shape))}) to {target}"
    if not target or not (target[0] == _BATCH or target[0] == -1 or (target[0] == 0 and not allowzero)):
        c.fail(f"{where}: the batch dimension must stay first")
    rest = []
    for i, t in enumerate(target[1:]):
        if isinstance(t, str):
            c.fail(f"{where}: the batch size may only be the first dimension")
        t = int(t)
        if t == 0 and not allowzero:
            if i >= len(v.shape):
                c.fail(f"{where}: 0 copies a dimension the input lacks")
            t = v.shape[i]
        if t < -1 or t == 0:
            c.fail(f"{where}: invalid dimension {t}")
        rest.append(t)
    if rest.count(-1) > 1 or (target[0] == -1 and -1 in rest):
        c.fail(f"{where}: more than one -1")
    known = math.prod(t for t in rest if t != -1)
    if -1 in rest:
        if size % known:
            c.fail(where)
        rest[rest.index(-1)] = size // known
    if math.prod(rest) != size:
        c.fail(f"{where}: the sizes differ (the batch size would change)")
    c.vals[n.output[0]] = _reshaped(c, v, rest)


def _squeeze(c, n, a):
    v = c.value(n.input[0])
    axes = _axes(c, n, a)
    rank = len(v.shape) + 1
    full = [_BATCH, *v.shape]
    if n.op_type == "Squeeze":
        drop = {k % rank for k in axes} if axes is not None else {
            i for i, d in enumerate(full) if d == 1}
        if 0 in drop or any(full[k] != 1 for k in drop):
            c.fail(f"cannot squeeze axes {sorted(drop)} of (N, {', '.join(map(str, v.shape))})")
        rest = [d for i, d in enumerate(full) if i not in drop][1:]
    else:
        out_rank = rank + len(axes)
        add = sorted(k % out_rank for k in axes)
        if 0 in add:
            c.fail("cannot add an axis before the batch dimension")
        it = iter(full)
        rest = [1 if i in add else next(it) for i in range(out_rank)][1:]
    c.vals[n.output[0]] = _reshaped(c, v, rest)


def _transpose(c, n, a):
    v = c.value(n.input[0])
    perm = tuple(int(p) for p in a.get("perm", reversed(range(len(v.shape) + 1))))
    if perm == tuple(range(len(v.shape) + 1)):
        c.vals[n.output[0]] = v
        return
    if v.kind == "flat" and len(v.shape) == 3:
        if perm == TO_NCHW and v.perm is None:     # an NHWC image held flat -> an NCHW one
            h, w, ch = v.shape
            y = c.call(L.Reshape, {"target_shape": (h, w, ch)}, v.sym)
            c.vals[n.output[0]] = _Val(y, "nchw")
            return
        v = _Val(c.image(v), "nchw")
    if v.kind == "plain" and len(v.shape) == 3 and perm == TO_NCHW:
        c.vals[n.output[0]] = _Val(v.sym, "nchw")
    elif v.kind == "nchw" and perm == TO_NHWC:
        c.vals[n.output[0]] = _Val(v.sym, "plain")
    else:
        c.fail(f"perm {list(perm)} on a tensor of shape (N, {', '.join(map(str, v.shape))}) is "
               f"not a layout change cconv can follow (NHWC <-> NCHW only)")


def _batch_norm(c, n, a):
    v = c.value(n.input[0])
    if int(a.get("training_mode", 0)) or any(o for o in n.output[1:]):
        c.fail("training-mode batch normalization (running statistics as outputs) is not supported")
    gamma, beta, mean, var = (c.floats(c.constant(n.input[i], name), name) for i, name in
                              ((1, "scale"), (2, "B"), (3, "input_mean"), (4, "input_var")))
    if v.kind == "flat" and len(v.shape) == 3:
        v = _Val(c.image(v), "nchw")
    if v.kind == "nchw":
        x, perm = v.sym, None
    elif len(v.shape) == 1:
        x, perm = v.sym, v.perm
    else:
        c.fail(f"batch normalization of a tensor of shape (N, {', '.join(map(str, v.shape))}) "
               f"held as {v.kind!r} is not supported")
    C = x.shape[-1]
    if any(p.shape != (C,) for p in (gamma, beta, mean, var)):
        c.fail(f"parameters of shapes {[p.shape for p in (gamma, beta, mean, var)]} for {C} channels")
    if perm is not None:
        gamma, beta, mean, var = (p[perm] for p in (gamma, beta, mean, var))
    y = c.call(L.BatchNorm2D, dict(eps=float(a.get("epsilon", 1e-5)),
                                   momentum=float(a.get("momentum", 0.9))), x,
               {"gamma": gamma, "beta": beta, "running_mean": mean, "running_var": var})
    c.vals[n.output[0]] = _Val(y, v.kind, v.perm, v.shape)


def _dropout(c, n, a):
    v = c.value(n.input[0])
    if len(n.output) > 1 and n.output[1] and n.output[1] in c.consumers:
        c.fail("the mask output of Dropout is not supported")
    ratio = c.optional_const(n, 1, "ratio")
    rate = float(a.get("ratio", 0.5) if ratio is None else np.asarray(ratio).reshape(()))
    if rate == 0.0:
        c.vals[n.output[0]] = v
        return
    y = c.call(L.Dropout, {"rate": rate}, v.sym)
    c.vals[n.output[0]] = _Val(y, v.kind, v.perm, v.shape)


def _identity(c, n, a):
    c.vals[n.output[0]] = c.value(n.input[0])


def _activation(c, n, a):
    v = c.value(n.input[0])
    if n.op_type == "Softmax" and v.kind == "flat" and len(v.shape) > 1:
        v = _Val(c.plain(v), "plain")
    spec = c.activation_of(n, v)
    if spec is None:
        c.fail(f"softmax over axis {a.get('axis')} of a flattened NCHW image is not supported")
    y = c.call(spec[0], spec[1], v.sym)
    c.vals[n.output[0]] = _Val(y, v.kind, v.perm, v.shape)


def _common_kind(c, vals):
    """Images held flat (after a global pool, say) as NCHW images when another input is one."""
    if any(v.kind == "nchw" for v in vals):
        return [_Val(c.image(v), "nchw") if v.kind == "flat" else v for v in vals]
    return vals


def _merge(cls):
    def handler(c, n, a):
        names = [i for i in n.input]
        if any(i in c.const for i in names):
            c.fail("adding, subtracting or multiplying a constant tensor is not supported (only "
                   "the bias after MatMul and scalar constants inside activations)")
        vals = _common_kind(c, [c.value(i) for i in names])
        if len(vals) == 1:
            c.vals[n.output[0]] = vals[0]
            return
        first = vals[0]
        for v in vals[1:]:
            if v.shape != first.shape or v.kind != first.kind or not (
                    (v.perm is None and first.perm is None) or (
                        v.perm is not None and first.perm is not None
                        and np.array_equal(v.perm, first.perm))):
                c.fail(f"inputs of shapes {[tuple(w.shape) for w in vals]} (held as "
                       f"{[w.kind for w in vals]}): cconv merges tensors of one shape, without "
                       f"broadcasting")
        y = c.call(cls, {}, [v.sym for v in vals])
        c.vals[n.output[0]] = _Val(y, first.kind, first.perm, first.shape)
    return handler


def _concat(c, n, a):
    if any(i in c.const for i in n.input):
        c.fail("concatenating a constant tensor is not supported")
    vals = _common_kind(c, [c.value(i) for i in n.input])
    rank = len(vals[0].shape) + 1
    axis = int(a.get("axis", 0)) % rank
    if axis == 0:
        c.fail("concatenation along the batch axis is not supported")
    kinds = {v.kind for v in vals}
    if kinds == {"nchw"}:
        y = c.call(L.Concatenate, {"axis": TO_NHWC.index(axis)}, [v.sym for v in vals])
        c.vals[n.output[0]] = _Val(y, "nchw")
        return
    if len(kinds) == 1 and kinds != {"flat"}:
        y = c.call(L.Concatenate, {"axis": axis}, [v.sym for v in vals])
        c.vals[n.output[0]] = _Val(y, "plain")
        return
    if rank == 2 and kinds <= {"flat", "plain"} and all(v.perm is None for v in vals):
        y = c.call(L.Concatenate, {"axis": -1}, [v.sym for v in vals])
        c.vals[n.output[0]] = _Val(y, "flat", None, (sum(v.shape[0] for v in vals),))
        return
    if rank == 2 and kinds <= {"flat", "plain"}:
        if sum(v.shape[0] for v in vals) > MAX_REORDERED_FEATURES:
            c.fail(f"concatenating more than {MAX_REORDERED_FEATURES} reordered features is "
                   f"not supported")
        perms, offset = [], 0
        for v in vals:
            perms.append((np.arange(v.shape[0]) if v.perm is None else v.perm) + offset)
            offset += v.shape[0]
        y = c.call(L.Concatenate, {"axis": -1}, [v.sym for v in vals])
        perm = np.concatenate(perms)
        c.vals[n.output[0]] = _Val(y, "flat", None if np.array_equal(perm, np.arange(offset))
                                   else perm, (offset,))
        return
    c.fail(f"inputs held as {sorted(kinds)} cannot be concatenated")


def _onnx_resize_matrix(c, a, n_in, scale):
    """The (n_in * scale, n_in) matrix of ONNX's Resize along one axis."""
    mode = a.get("mode", "nearest")
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    n_out = n_in * scale
    o = np.arange(n_out, dtype=np.float64)
    if ctm in ("half_pixel", "half_pixel_symmetric"):
        x = (o + 0.5) / scale - 0.5
    elif ctm == "pytorch_half_pixel":
        x = (o + 0.5) / scale - 0.5 if n_out > 1 else np.zeros_like(o)
    elif ctm == "asymmetric":
        x = o / scale
    elif ctm == "align_corners":
        x = o * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(o)
    elif ctm == "tf_half_pixel_for_nn":
        x = (o + 0.5) / scale
    else:
        c.fail(f"coordinate_transformation_mode {ctm!r} is not supported")
    m = np.zeros((n_out, n_in))
    if mode == "nearest":
        nm = a.get("nearest_mode", "round_prefer_floor")
        rounding = {"round_prefer_floor": lambda t: np.ceil(t - 0.5),
                    "round_prefer_ceil": lambda t: np.floor(t + 0.5),
                    "floor": np.floor, "ceil": np.ceil}.get(nm)
        if rounding is None:
            c.fail(f"nearest_mode {nm!r} is not supported")
        idx = np.clip(rounding(x), 0, n_in - 1).astype(int)
        m[np.arange(n_out), idx] = 1.0
    elif mode == "linear":
        x = np.clip(x, 0, n_in - 1)
        i0 = np.floor(x).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        f = x - i0
        np.add.at(m, (np.arange(n_out), i0), 1 - f)
        np.add.at(m, (np.arange(n_out), i1), f)
    else:
        c.fail(f"mode {mode!r} is not supported (nearest and linear are)")
    return m


def _cconv_upsample_matrix(n_in, scale, interpolation):
    from ..functional import upsample2d
    eye = np.eye(n_in).reshape(1, n_in, 1, n_in)
    return upsample2d(eye, (scale, 1), interpolation)[0, :, 0, :]


def _resize(c, n, a):
    x = c.image(c.value(n.input[0]))
    H, W = x.shape[1:3]
    if int(a.get("antialias", 0)) or a.get("keep_aspect_ratio_policy", "stretch") != "stretch" \
            or "axes" in a or int(a.get("exclude_outside", 0)):
        c.fail("antialias, axes, exclude_outside and keep_aspect_ratio_policy are not supported")
    scales = c.optional_const(n, 2, "scales")
    sizes = c.optional_const(n, 3, "sizes")
    if scales is not None and np.asarray(scales).size:
        sc = [float(s) for s in np.asarray(scales).ravel()]
        if len(sc) != 4 or sc[:2] != [1.0, 1.0]:
            c.fail(f"scales {sc}: only height and width may be scaled")
        factors = sc[2:]
    elif sizes is not None:
        sz = list(np.asarray(sizes).ravel())
        if len(sz) != 4 or sz[1] != x.shape[-1]:
            c.fail(f"sizes {sz}: only height and width may change")
        factors = [int(sz[2]) / H, int(sz[3]) / W]
    else:
        c.fail("needs constant scales or sizes")
    if any(f != int(f) or f < 1 for f in factors):
        c.fail(f"scale factors {factors}: cconv upsamples by whole factors >= 1")
    sh, sw = int(factors[0]), int(factors[1])
    if max(sh, sw) > 1 << 12:
        c.fail(f"scale factors {factors} above {1 << 12} are not supported")
    # The sampling pattern repeats along the axis (only align_corners depends on the size,
    # and differs from cconv's for every size above 1): 16 pixels decide as well as H.
    for interpolation in ("nearest", "bilinear"):
        if all(np.allclose(_onnx_resize_matrix(c, a, size, s),
                           _cconv_upsample_matrix(size, s, interpolation), atol=1e-9)
               for size, s in ((min(H, 16), sh), (min(W, 16), sw))):
            y = c.call(L.UpSampling2D, {"size": (sh, sw), "interpolation": interpolation}, x)
            c.vals[n.output[0]] = _Val(y, "nchw")
            return
    c.fail(f"mode {a.get('mode', 'nearest')!r} with coordinate_transformation_mode "
           f"{a.get('coordinate_transformation_mode', 'half_pixel')!r} samples other points than "
           f"cconv's UpSampling2D (nearest: repeat; bilinear: half-pixel centres)")


def _pad(c, n, a):
    v = c.value(n.input[0])
    if a.get("mode", "constant") != "constant":
        c.fail(f"mode {a.get('mode')!r} is not supported (only zero padding)")
    pads = [int(p) for p in np.asarray(c.constant(n.input[1], "pads")).ravel()]
    value = c.optional_const(n, 2, "constant_value")
    if value is not None and np.asarray(value).size and float(np.asarray(value).ravel()[0]) != 0:
        c.fail("only zero padding is supported")
    axes = c.optional_const(n, 3, "axes")
    rank = len(v.shape) + 1
    axes = list(range(rank)) if axes is None else [int(x) % rank for x in np.asarray(axes).ravel()]
    if len(pads) != 2 * len(axes):
        c.fail(f"pads {pads} for axes {axes}")
    full = {ax: (pads[i], pads[i + len(axes)]) for i, ax in enumerate(axes)}
    if any(full.get(ax, (0, 0)) != (0, 0) for ax in (0, 1)) or rank != 4:
        c.fail(f"pads {pads}: only the height and width of an NCHW image may be padded")
    x = c.image(v)
    hw = (full.get(2, (0, 0)), full.get(3, (0, 0)))
    flat = [p for pp in hw for p in pp]
    if all(p >= 0 for p in flat):
        y = c.call(L.ZeroPadding2D, {"padding": hw}, x)
    elif all(p <= 0 for p in flat):
        y = c.call(L.Cropping2D, {"cropping": tuple((-t, -b) for t, b in hw)}, x)
    else:
        c.fail(f"pads {pads} both pad and crop")
    c.vals[n.output[0]] = _Val(y, "nchw")


def _slice(c, n, a):
    v = c.value(n.input[0])
    if v.kind != "nchw":
        c.fail("only slicing the height and width of an NCHW image is supported")
    x = v.sym
    starts, ends = (np.asarray(c.constant(n.input[i], w), np.int64).ravel()
                    for i, w in ((1, "starts"), (2, "ends")))
    axes = c.optional_const(n, 3, "axes")
    steps = c.optional_const(n, 4, "steps")
    axes = list(range(len(starts))) if axes is None else [int(t) % 4 for t in np.asarray(axes).ravel()]
    if steps is not None and any(int(s) != 1 for s in np.asarray(steps).ravel()):
        c.fail("only step 1 is supported")
    dims = {2: x.shape[1], 3: x.shape[2]}
    crop = {2: (0, 0), 3: (0, 0)}
    for s, e, ax in zip(starts, ends, axes):
        if ax not in dims:
            c.fail("only the height and width (axes 2 and 3) may be sliced")
        size = dims[ax]
        s = min(max(int(s) + size if s < 0 else int(s), 0), size)
        e = min(max(int(e) + size if e < 0 else int(e), 0), size)
        if e <= s:
            c.fail("the slice is empty")
        crop[ax] = (s, size - e)
    y = c.call(L.Cropping2D, {"cropping": (crop[2], crop[3])}, x)
    c.vals[n.output[0]] = _Val(y, "nchw")


def _constant(c, n, a):
    c.const[n.output[0]] = c.constant_node(n)


_HANDLERS = {
    "Conv": _conv, "ConvTranspose": _conv_transpose, "Gemm": _gemm, "MatMul": _matmul,
    "MaxPool": _max_pool, "AveragePool": _avg_pool,
    "GlobalAveragePool": _global_pool(L.GlobalAvgPool2D),
    "GlobalMaxPool": _global_pool(L.GlobalMaxPool2D),
    "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose,
    "BatchNormalization": _batch_norm, "Dropout": _dropout, "Identity": _identity,
    "Relu": _activation, "LeakyRelu": _activation, "Elu": _activation, "Gelu": _activation,
    "Softmax": _activation,
    "Add": _merge(L.Add), "Sum": _merge(L.Add), "Sub": _merge(L.Subtract), "Mul": _merge(L.Multiply),
    "Concat": _concat, "Resize": _resize, "Pad": _pad, "Slice": _slice, "Shape": _shape,
    "Squeeze": _squeeze, "Unsqueeze": _squeeze,
    "ReduceMean": _reduce(L.GlobalAvgPool2D), "ReduceMax": _reduce(L.GlobalMaxPool2D),
    "Constant": _constant,
}


def convert(proto, folder=None, where="<model>", dtype=None):
    """A cconv :class:`~cconv.Model` from an ``onnx.ModelProto``."""
    c = _Converter(proto, TensorReader(folder), where)
    c.forced_dtype = None if dtype is None else np.dtype(dtype)
    try:
        return c.convert()
    except _NodeError as exc:
        raise ValueError(f"{where!r}: cannot import {exc}") from None
