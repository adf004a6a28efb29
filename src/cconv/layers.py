"""Layers: the building blocks of cconv models, and how to write your own.

The preprocessing and augmentation layers (``Rescaling``, ``Normalization``,
``RandomFlip``, ``RandomCrop``, ``RandomTranslation``, ``RandomRotation``, ``RandomZoom``,
``RandomContrast``) are defined in :mod:`cconv.preprocessing` and importable from here.

Activations are NHWC ``(N, H, W, C)``; convolution kernels HWIO
``(KH, KW, C_in // groups, C_out)`` (:class:`Conv2DTranspose`: the HWIO kernel of the
convolution it transposes, ``(KH, KW, C_out // groups, C_in)``; :class:`DepthwiseConv2D`:
``(KH, KW, C_in, depth_multiplier)``, both as Keras); dense kernels ``(in, out)``. Layers
with weights compute in the dtype they were built with (float32 or float64).

Writing a layer
---------------
Subclass :class:`Layer` and implement the methods you need; all are public and none has an
underscore:

``build(self, input_shape)``
    Create the weights with :meth:`Layer.add_weight` once the shape of one input sample
    (without the batch axis) is known. Layers without weights leave it out.
``call(self, x, training=False) -> (y, saved)``
    The forward computation on a batch (a model passes C-contiguous arrays of its dtype).
    ``saved`` is whatever ``backward`` will need (None when it needs nothing); the model
    keeps it, one per call, so a layer used twice in a model has two. Never modify ``x``:
    other layers may read it too.
``backward(self, dy, saved) -> dx``
    ``dy`` is ``dL/dy`` for the ``y`` that ``call`` returned with this ``saved``. *Add* each
    weight's gradient into ``self.grads[name]`` (``+=``: a layer called twice in a model
    receives the sum of both uses; the model zeroes the gradients before each backward
    pass) and return ``dL/dx``. Never modify ``dy`` or the saved arrays. When
    ``self.need_input_grad`` is False (the layer sits right after the model's input) you may
    skip ``dx`` and return None.
``compute_output_shape(self, input_shape) -> tuple``
    The output sample shape; raise ``ValueError`` for an input the layer cannot take.
    The default returns ``input_shape`` (elementwise layers).
``get_config(self) -> dict``
    The constructor arguments, for saving: ``{**super().get_config(), "units": self.units}``.
    :meth:`Layer.from_config` calls ``cls(**config)``; pass your class to
    ``cconv.load_model(path, custom_objects={"MyLayer": MyLayer})``.

For example, a learned per-channel scale::

    class Scale(Layer):
        def build(self, input_shape):
            self.add_weight("gamma", (input_shape[-1],), initializer="ones")

        def call(self, x, training=False):
            return x * self.params["gamma"], x

        def backward(self, dy, x):
            self.grads["gamma"] += np.sum(dy * x, axis=tuple(range(dy.ndim - 1)))
            return dy * self.params["gamma"]

``cconv.gradcheck(Scale(), x)`` checks such a layer against finite differences.

Blocks (layers made of layers). A layer held in an attribute of another layer (or in a
list or tuple attribute) is its *sublayer*. Build sublayers in ``build`` (``self.conv.build
(input_shape)``: they take the block's dtype and random generator) and call their ``call``
and ``backward`` from the block's own. Their weights and gradients belong to the block:
the model and its optimizer find them (named ``"block/conv/kernel"``), and nothing is copied
by hand. The README shows a residual block written this way.

Several inputs. A layer with ``multiple_inputs = True`` is called on a list of tensors:
``call`` gets a list of arrays, ``backward`` returns a list of gradients (views of ``dy``
are fine), ``build`` and ``compute_output_shape`` get a list of shapes. :class:`Add`,
:class:`Subtract`, :class:`Multiply` and :class:`Concatenate` are such layers.

Argument names
--------------
The layers take Keras's arguments under cconv's names, and Keras's spellings as aliases:
``strides`` for ``stride``, ``dilation_rate`` for ``dilation``, ``epsilon`` for ``eps``,
``negative_slope`` for ``alpha``, ``depthwise_initializer`` for ``kernel_initializer``.
PyTorch's spellings raise a TypeError naming cconv's (``out_channels`` -> ``filters``,
``kernel_size`` of a pool -> ``pool_size``, ``bias`` -> ``use_bias``, ``p`` -> ``rate``;
``in_channels`` is not needed: a layer takes its input channels from its input), and
``Conv2D(3, 16, 3)`` (PyTorch's ``Conv2d(in, out, kernel)`` order, which cconv reads as 3
filters of 16x16 with stride 3) warns.

Using layers
------------
In a model, layers are called on symbolic tensors (``y = Dense(10)(x)``, see
:class:`cconv.Model`) or stacked in a :class:`cconv.Sequential`. On their own:
``layer.forward(x, training=True)`` checks ``x``, builds the layer on first use, runs
``call`` and keeps ``saved``; ``layer.backward(dy)`` (without ``saved``) then
backpropagates through that call and *overwrites* ``grads``. cconv wraps ``build`` and
``backward`` (as Keras wraps ``build``) so these calls work for every subclass; inside a
subclass, ``super().build(input_shape)`` and ``super().backward(dy, saved)`` work as usual.

Elementwise work on activations runs vectorised in place: an activation fused into a
convolution or :class:`Dense` overwrites the layer's fresh output (except GELU and SiLU,
whose gradient needs the input), and every built-in backward makes at most one new array
(the returned gradient).
"""
from __future__ import annotations

import functools
import inspect
import math
import numbers
import threading
import warnings

import numpy as np
from scipy.special import expit, ndtr

from . import _keywords
from . import _shapes_only
from . import _validate as V
from . import functional as F
from . import initializers
from ._printable import printable
from .symbolic import Node, SymbolicTensor

__all__ = [
    "Layer", "Conv2D", "Conv2DTranspose", "DepthwiseConv2D", "MaxPool2D", "AvgPool2D",
    "GlobalAvgPool2D", "GlobalMaxPool2D", "GlobalMaxPooling2D", "Dense", "Flatten", "Reshape",
    "UpSampling2D", "ZeroPadding2D", "Cropping2D", "Dropout", "BatchNorm2D", "Activation",
    "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "ELU", "GELU", "SiLU", "Swish",
    "Add", "Subtract", "Multiply", "Concatenate",
    "serialize", "deserialize", "get_activation",
]


# ---------------------------------------------------------------------------------
# Argument helpers
# ---------------------------------------------------------------------------------
def _tuplify(v):
    """Lists (e.g. from JSON) -> tuples, recursively."""
    if isinstance(v, (list, tuple)):
        return tuple(_tuplify(e) for e in v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def _check_padding(padding):
    """Validate the form of a padding argument and return it in canonical form."""
    padding = _tuplify(padding)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode not in ("valid", "same"):
            raise ValueError(f"padding must be an int, a pair, ((top, bottom), (left, right)), "
                             f"'valid' or 'same', got {padding!r}")
        return mode
    F.normalize_padding(padding, 1)          # raises TypeError / ValueError on a bad form
    return padding


def _spatial_output(layer, hw, kernel, stride, padding, dilation, what, pool=False):
    """Output (OH, OW) of a sliding window over an input of size hw (ValueError if < 1)."""
    pads = F.normalize_padding(padding, kernel, dilation, stride, hw)
    out = []
    for i, axis in enumerate(("height", "width")):
        eff = dilation[i] * (kernel[i] - 1) + 1
        padded = hw[i] + pads[i][0] + pads[i][1]
        if eff > padded:
            raise ValueError(f"{layer}: {what} {kernel} (extent {eff} in {axis}) is larger than "
                             f"the padded input: {axis} {hw[i]} + padding {pads[i]} = {padded}")
        if pool and max(pads[i]) >= kernel[i]:
            raise ValueError(f"{layer}: padding {pads[i]} in {axis} must be smaller than "
                             f"pool_size {kernel}")
        out.append(F.conv_output_size(hw[i], kernel[i], stride[i], pads[i][0], pads[i][1],
                                      dilation[i]))
    return tuple(out)


def _shape_list(input_shape, name="input_shape"):
    """A list of sample shapes (several inputs) -> list of tuples."""
    if not isinstance(input_shape, (list, tuple)) or not all(
            isinstance(s, (list, tuple)) for s in input_shape):
        raise TypeError(f"{name} must be a list of shapes (one per input), got {input_shape!r}")
    return [V.shape(s, name) for s in input_shape]


# ---------------------------------------------------------------------------------
# Base class: the framework side of the contract
# ---------------------------------------------------------------------------------
_KEPT = object()                 # backward(dy) without saved: use the last forward's
_builds = threading.local()      # the builds in progress (a block builds its sublayers)


def _build_stack():
    if not hasattr(_builds, "stack"):
        _builds.stack = []
    return _builds.stack


def _wrap_build(build):
    """``build(input_shape)`` as written -> ``build(input_shape, rng=None, dtype=None)``."""

    @functools.wraps(build)
    def wrapped(self, input_shape, rng=None, dtype=None):
        if self._building:                      # super().build(...) inside a subclass's build
            return build(self, input_shape)
        stack = _build_stack()
        outer = stack[-1] if stack else None
        if rng is None and outer is not None:
            rng = outer._weight_rng
        elif rng is None or isinstance(rng, (numbers.Integral, np.random.SeedSequence)):
            rng = np.random.default_rng(rng)
        elif not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, "
                            f"got {type(rng).__name__}")
        dtype = V.float_dtype(dtype if dtype is not None else
                              (outer.dtype if outer is not None else np.float32))
        shape = _shape_list(input_shape) if self.multiple_inputs else V.shape(input_shape)
        if not self.multiple_inputs:
            self._check_rank(len(shape) + 1, (None,) + shape)
        self.compute_output_shape(shape)                 # validates the geometry
        self.built = False
        self.params, self.grads, self.state = {}, {}, {}
        self.dtype, self._weight_rng, self._building = dtype, rng, True
        stack.append(self)
        try:
            build(self, shape)
        finally:
            stack.pop()
            self._building, self._weight_rng = False, None
        for path, sub in self.sublayers:
            if not sub.built and type(sub).build is not Layer.build:
                raise RuntimeError(f"{self._label()}: sublayer {path!r} ({type(sub).__name__}) was "
                                   f"not built; call self.{path}.build(shape) in build()")
        self.input_shape = shape
        self.built = True
        self._kept = None

    return wrapped


def _wrap_backward(backward):
    """``backward(dy, saved)`` as written -> also ``backward(dy)`` after ``forward``."""

    @functools.wraps(backward)
    def wrapped(self, dy, saved=_KEPT):
        if saved is not _KEPT:
            return backward(self, dy, saved)
        if self._kept is None:
            raise RuntimeError(f"{self._label()}: backward(dy) needs a preceding "
                               f"forward(x, training=True) (or cache=True); forward's context "
                               f"is released by each backward")
        saved, out_shape, out_dtype = self._kept
        dy = np.asarray(dy)
        if dy.shape != out_shape:
            raise ValueError(f"{self._label()}: dy must have the output's shape {out_shape}, "
                             f"got {dy.shape}")
        if dy.dtype.kind not in "fiu":
            raise TypeError(f"{self._label()}: dy must be a real float array, got dtype {dy.dtype}")
        dy = np.ascontiguousarray(dy, dtype=out_dtype)
        self._kept = None
        self.zero_grads()
        return backward(self, dy, saved)

    return wrapped


class Layer:
    """Base class of every layer (see the module docstring for how to write one).

    Attributes
    ----------
    name : str or None
        Unique within a model (a model names unnamed layers ``"conv2d"``, ``"conv2d_1"``...).
    trainable : bool
        Whether an optimizer should update the weights (of the sublayers too).
    built : bool
        True once ``build`` has created the weights.
    params, grads : dict of str -> ndarray
        Trainable weights and their gradients (same keys, shapes, dtype; C-contiguous).
    state : dict of str -> ndarray
        Non-trainable saved arrays (:class:`BatchNorm2D`'s running statistics).
    need_input_grad : bool
        Read by ``backward``: when False, ``dL/dx`` may be skipped (None returned).
    dy_writable : bool
        Read by ``backward``: when True (set by the model for one call, never otherwise),
        ``dy`` is a gradient that the model owns and no one else reads, and ``backward`` may
        overwrite it (cconv's layers take a fused ReLU's gradient in place then). False by
        default: ``backward`` must not modify ``dy`` (see the module docstring).
    fresh_input_grad : bool (class attribute)
        ``backward`` returns ``dL/dx`` as a new array that nothing else references, so the
        model may pass it on as writable (read from the layer's own class only, not
        inherited: a subclass's ``backward`` may return something else).
    input_shape : tuple, list of tuple, or None
        The input sample shape(s) the layer was built for.
    dtype : numpy.dtype or None
        float32 or float64, set by ``build``.
    multiple_inputs : bool (class attribute)
        The layer takes a list of inputs.
    """

    multiple_inputs = False
    #: Rank of the input without the batch dimension (None: any rank >= 1).
    _input_rank: int | None = None
    #: Whether the last input dimension (channels/features) is fixed once built.
    _fixed_channels = False
    fresh_input_grad = False
    dy_writable = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "build" in vars(cls):
            cls.build = _wrap_build(vars(cls)["build"])
        if "backward" in vars(cls):
            cls.backward = _wrap_backward(vars(cls)["backward"])
        if "__init__" in vars(cls):
            # Keras's spellings as aliases, PyTorch's with an error naming cconv's
            _keywords.wrap_init(cls, vars(cls).get("_positional_check"))

    def __init__(self, name=None, trainable=True):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        self.name = name
        self.trainable = bool(trainable)
        self.built = False
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.state: dict[str, np.ndarray] = {}
        self.need_input_grad = True
        self.input_shape = None
        self.dtype = None
        self._kept = None
        self._building = False
        self._weight_rng = None
        self._nodes: list = []

    # -- the contract: override these ------------------------------------------------
    def build(self, input_shape):
        """Create the weights (with :meth:`add_weight`) for inputs of this sample shape.

        Called by cconv as ``layer.build(input_shape, rng=None, dtype=None)``: ``rng`` (a
        ``numpy.random.Generator`` or an int seed) and ``dtype`` (float32 or float64) are
        what :meth:`add_weight` uses; inside a block's ``build`` they default to the block's.
        """

    def call(self, x, training=False):
        """Forward computation: return ``(y, saved)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement call(x, training)")

    def backward(self, dy, saved):
        """Add the weights' gradients into ``grads`` and return ``dL/dx``."""
        raise NotImplementedError(f"{type(self).__name__} must implement backward(dy, saved)")

    def infer(self, x):
        """Inference-mode forward without what ``backward`` would need: the ``y`` of
        ``call(x, training=False)``. The model's ``predict``/``forward`` without a cache use
        it; layers override it to skip their training bookkeeping."""
        return self.call(x, False)[0]

    def inference_fusion(self, following):
        """A function ``f(x)`` equal to ``following.infer(self.infer(x))`` that computes it
        faster, or None (the default). The model's inference uses it for two consecutive
        steps when the second alone consumes the first's output."""
        return None

    def inference_function(self, input_shape, following=None):
        """For inputs of ``input_shape`` (the batch dimension included; a list of shapes
        for a layer of several inputs): a function ``f(x)`` equal to :meth:`infer`, or with
        ``following`` to :meth:`inference_fusion` (None when the two do not fuse).

        The model's inference plan keeps these functions while the input shapes and
        :func:`cconv.functional.route_state` stay the same, so that a layer can check its
        arguments and plan its kernels once for a shape (the default does neither). The
        function reads the layer's weights when it runs, and a layer's configuration is
        fixed once it is built (as in Keras)."""
        if following is None:
            return self.infer
        return self.inference_fusion(following)

    def training_fusion(self, following):
        """A function ``f(x, training) -> (y, saved, following_saved)`` equal to
        ``self.call`` then ``following.call`` on its output (``y`` the second's output,
        the ``saved`` of each for its own ``backward``) that keeps less for the backward
        pass, or None (the default). The model's training forward uses it under the same
        conditions as :meth:`inference_fusion`.

        The function may carry a ``backward`` attribute, ``backward(dy, saved,
        following_saved) -> dx``: ``following.backward`` then ``self.backward`` in one call
        (``dy`` the gradient of ``following``'s output; it adds into ``self.grads`` and
        returns the gradient of ``self``'s input, under ``self.need_input_grad`` and
        ``self.dy_writable`` as :meth:`backward` would). The model's backward pass then
        calls it instead of the two."""
        return None

    def compute_output_shape(self, input_shape) -> tuple:
        """The output shape (without the batch dimension) for ``input_shape``."""
        return tuple(input_shape)

    def get_config(self) -> dict:
        """JSON-serialisable constructor arguments (subclasses add theirs to these)."""
        return {"name": self.name, "trainable": self.trainable}

    @classmethod
    def from_config(cls, config: dict) -> "Layer":
        """Re-create a layer (without weights) from :meth:`get_config`."""
        return cls(**config)

    # -- for layer authors ---------------------------------------------------------------
    def add_weight(self, name, shape, initializer="zeros", trainable=True):
        """Create a weight during ``build`` and return it.

        Parameters
        ----------
        name : str
            Key in ``params`` (trainable) or ``state`` (not trainable; saved with the model,
            e.g. running statistics).
        shape : tuple of int
        initializer : str or callable
            See :mod:`cconv.initializers`; a callable gets ``(shape, rng, dtype)``.
        trainable : bool
            A trainable weight gets a zero gradient array in ``grads``.
        """
        if not self._building:
            raise RuntimeError(f"{self._label()}: add_weight is for use inside build()")
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"weight name must be a non-empty str without '/', got {name!r}")
        if name in self.params or name in self.state:
            raise ValueError(f"{self._label()} already has a weight named {name!r}")
        shape = tuple(int(s) for s in shape)
        stand_in = _shapes_only.active()    # a model file's architecture, checked before it is built
        if stand_in:
            value = _shapes_only.stand_in(shape, self.dtype)
        else:
            value = initializers.get(initializer)(shape, self._weight_rng, self.dtype)
            value = np.ascontiguousarray(value, dtype=self.dtype)
        if trainable:
            self.params[name] = value
            self.grads[name] = _shapes_only.stand_in(shape, self.dtype) if stand_in else np.zeros_like(value)
        else:
            self.state[name] = value
        return value

    # -- sublayers ------------------------------------------------------------------------
    def __setattr__(self, name, value):
        # Remember the attributes that may hold sublayers (a Layer, or a list or tuple that
        # holds one or is empty and may be filled later), so that finding the sublayers
        # costs nothing on every step.
        object.__setattr__(self, name, value)
        if isinstance(value, Layer) or (isinstance(value, (list, tuple)) and (
                not value or any(isinstance(v, Layer) for v in value))):
            self.__dict__.setdefault("_sublayer_keys", {})[name] = None

    @property
    def sublayers(self):
        """``[(attribute path, layer)]`` of the layers this one holds (list items as ``"name.i"``),
        each once: a layer held under two attributes keeps the first path."""
        out, seen = [], set()
        d = self.__dict__
        for key in d.get("_sublayer_keys", ()):
            value = d.get(key)
            if isinstance(value, Layer):
                items = [(key, value)]
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Layer) for v in value):
                items = [(f"{key}.{i}", v) for i, v in enumerate(value)]
            else:
                continue
            for path, layer in items:
                if id(layer) not in seen and layer is not self:
                    seen.add(id(layer))
                    out.append((path, layer))
        return out

    def named_layers(self, prefix=""):
        """``[(prefix, layer)]`` for this layer and every sublayer, depth first."""
        out = [(prefix, self)]
        for path, sub in self.sublayers:
            out += sub.named_layers(f"{prefix}{path}/")
        return out

    def parameters(self):
        """``[(name, param, grad)]`` of the trainable weights, sublayers' included
        (``"kernel"``, ``"conv/kernel"``); empty when the layer is not trainable."""
        if not self.trainable:
            return []
        out = [(k, p, self.grads[k]) for k, p in self.params.items()]
        for path, sub in self.sublayers:
            out += [(f"{path}/{n}", p, g) for n, p, g in sub.parameters()]
        return out

    def weights(self):
        """``[(role, name, array)]`` of every weight, role ``"param"`` or ``"state"``, in a
        fixed order (own params, own state, then each sublayer's): what a file stores."""
        out = [("param", k, a) for k, a in self.params.items()]
        out += [("state", k, a) for k, a in self.state.items()]
        for path, sub in self.sublayers:
            out += [(role, f"{path}/{n}", a) for role, n, a in sub.weights()]
        return out

    def zero_grads(self):
        """Set every gradient (sublayers' included) to zero."""
        for g in self.grads.values():
            g.fill(0)
        for _, sub in self.sublayers:
            sub.zero_grads()

    def count_params(self) -> int:
        """Number of weights: params plus state, sublayers' included (0 until built)."""
        return int(sum(a.size for _, _, a in self.weights()))

    def get_rng_state(self) -> dict:
        """The states of the ``numpy.random.Generator`` objects the layer (and its
        sublayers) own, e.g. :class:`Dropout`'s, by attribute path."""
        out = {}
        for prefix, layer in self.named_layers():
            for key, value in vars(layer).items():
                if isinstance(value, np.random.Generator):
                    out[prefix + key] = value.bit_generator.state
        return out

    def set_rng_state(self, state: dict) -> None:
        """Inverse of :meth:`get_rng_state`."""
        owners = {}
        for prefix, layer in self.named_layers():
            for key, value in vars(layer).items():
                if isinstance(value, np.random.Generator):
                    owners[prefix + key] = value
        for key, st in state.items():
            if key not in owners:
                raise ValueError(f"{self._label()} has no random generator {key!r} "
                                 f"(it has {sorted(owners)})")
            owners[key].bit_generator.state = st

    # -- running a layer on its own ------------------------------------------------------
    def __call__(self, inputs, training=False, **kwargs):
        """On symbolic tensors: a new symbolic tensor (a call in a functional model).
        On arrays: :meth:`forward`."""
        items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        if any(isinstance(t, SymbolicTensor) for t in items):
            if kwargs or training:
                raise TypeError(f"{self._label()}: a call on symbolic tensors takes no options; "
                                f"the model decides training mode when it runs")
            return self._call_symbolic(inputs)
        return self.forward(inputs, training, **kwargs)

    def forward(self, inputs, training=False, *, cache=None, **kwargs):
        """Compute the layer's output for a batch.

        Parameters
        ----------
        inputs : ndarray of shape (N, *input_shape), or a list of them (several inputs)
        training : bool
            Training behaviour (dropout active, batch statistics in batch norm).
        cache : bool or None
            Keep ``call``'s ``saved`` for :meth:`backward`; defaults to ``training``. Pass
            ``cache=True`` with ``training=False`` to differentiate the inference-mode
            function.
        **kwargs
            Passed to ``call`` (``apply_activation=False`` for :class:`Conv2D`/:class:`Dense`).
        """
        x = self._prepare(inputs)
        cache = bool(training) if cache is None else bool(cache)
        y, saved = self.call(x, bool(training), **kwargs)
        self._kept = (saved, y.shape, y.dtype) if cache else None
        return y

    def _prepare(self, inputs):
        """Check inputs against the layer, build on first use, cast to the layer's dtype."""
        if self.multiple_inputs:
            if not isinstance(inputs, (list, tuple)) or len(inputs) < 1:
                raise TypeError(f"{self._label()} takes a list of input arrays, got "
                                f"{type(inputs).__name__}")
            xs = [self._checked_array(x, f"inputs[{i}]") for i, x in enumerate(inputs)]
        else:
            if isinstance(inputs, (list, tuple)) and len(inputs) and isinstance(inputs[0], np.ndarray):
                raise TypeError(f"{self._label()} takes one input array, got a list of {len(inputs)}")
            xs = [self._checked_array(inputs, "x")]
            self._check_rank(xs[0].ndim, xs[0].shape)
        if not self.built:
            dtype = next((x.dtype for x in xs if x.dtype in (np.float32, np.float64)), np.float32)
            shapes = [x.shape[1:] for x in xs]
            self.build(shapes if self.multiple_inputs else shapes[0], None, dtype)
        elif self._fixed_channels and xs[0].shape[-1] != self.input_shape[-1]:
            expected = ", ".join(map(str, self.input_shape))
            raise ValueError(f"{self._label()}: expected input of shape (N, {expected}) "
                             f"({self.input_shape[-1]} in the last axis), got x of shape {xs[0].shape}")
        dtype = self.dtype if (self.params or self.state) else None
        out = []
        for x in xs:
            if dtype is not None and x.dtype != dtype:
                x = x.astype(dtype)
            elif x.dtype not in (np.float32, np.float64):
                x = x.astype(np.float32)
            out.append(np.ascontiguousarray(x))
        return out if self.multiple_inputs else out[0]

    def _checked_array(self, x, what):
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise TypeError(f"{self._label()}: {what} must be a real numeric array, got dtype "
                            f"{x.dtype} (shape {x.shape})")
        if x.ndim < 2:
            raise ValueError(f"{self._label()}: expected an input with a batch dimension "
                             f"(at least 2-D), got shape {x.shape}")
        return x

    def _check_rank(self, ndim, shape):
        rank = self._input_rank
        if rank is not None and ndim != rank + 1:
            layout = {3: "(N, H, W, C)", 1: "(N, features)"}.get(rank, f"{rank + 1}-D")
            hint = " (add a Flatten layer before it)" if rank == 1 and ndim > 2 else ""
            if self.built:
                layout += f" = (N, {', '.join(map(str, self.input_shape))})"
            raise ValueError(f"{self._label()}: expected a {rank + 1}-D input {layout}, "
                             f"got shape {tuple(shape)}{hint}")
        if (rank is None and self.built and self._fixed_channels
                and ndim != len(self.input_shape) + 1):
            raise ValueError(f"{self._label()}: built for inputs of shape (N, "
                             f"{', '.join(map(str, self.input_shape))}), got shape {tuple(shape)}")
        if ndim < 2:
            raise ValueError(f"{self._label()}: expected an input with a batch dimension "
                             f"(at least 2-D), got shape {tuple(shape)}")

    # -- symbolic calls (functional models) ----------------------------------------------
    def _call_symbolic(self, inputs):
        multiple = isinstance(inputs, (list, tuple))
        tensors = list(inputs) if multiple else [inputs]
        for i, t in enumerate(tensors):
            if not isinstance(t, SymbolicTensor):
                raise TypeError(f"{self._label()}: input {i} is a {type(t).__name__}, not a "
                                f"symbolic tensor; every input of a layer call in a functional "
                                f"model comes from cconv.Input or another layer call")
        if multiple != self.multiple_inputs:
            if self.multiple_inputs:
                raise TypeError(f"{self._label()} takes a list of tensors, got one tensor")
            if len(tensors) != 1:
                raise TypeError(f"{self._label()} takes one tensor, got a list of {len(tensors)}")
            multiple = False
        shapes = [t.shape[1:] for t in tensors]
        try:
            out_shape = self.check_input_shape(shapes if multiple else shapes[0])
        except (ValueError, TypeError) as exc:
            where = " and ".join(t.describe() for t in tensors)
            raise type(exc)(f"layer {self._label()!r} ({type(self).__name__}) cannot take "
                            f"input{'s' if multiple else ''} {where}: {exc}") from exc
        node = Node(self, tensors, out_shape, multiple)
        self._nodes.append(node)
        return node.output

    def check_input_shape(self, input_shape):
        """The output shape for ``input_shape``, or ValueError if the layer (with its
        weights, once built) cannot take it."""
        if not self.multiple_inputs:
            input_shape = tuple(input_shape)
            self._check_rank(len(input_shape) + 1, (None,) + input_shape)
            if self.built and self._fixed_channels and input_shape[-1] != self.input_shape[-1]:
                raise ValueError(f"it was built for {self.input_shape[-1]} channels "
                                 f"(input shape {self.input_shape}), got {input_shape[-1]}")
        return tuple(int(s) for s in self.compute_output_shape(input_shape))

    @property
    def output(self):
        """The symbolic output of this layer's first call in a functional model."""
        if not self._nodes:
            raise AttributeError(f"{self._label()} has not been called on a symbolic tensor")
        return self._nodes[0].output

    # -- description ---------------------------------------------------------------------
    def output_shape(self, input_shape) -> tuple:
        """Same as :meth:`compute_output_shape` (the name of earlier cconv versions)."""
        return tuple(self.compute_output_shape(input_shape))

    def _label(self) -> str:
        """The layer's name for messages (control characters escaped), else its class."""
        return printable(self.name) if self.name else type(self).__name__

    def __repr__(self) -> str:
        cfg = self.get_config()
        sig = inspect.signature(type(self).__init__)
        required = [p.name for p in list(sig.parameters.values())[1:]
                    if p.default is inspect.Parameter.empty
                    and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        try:
            defaults = type(self)(**{k: cfg[k] for k in required}).get_config()
        except Exception:  # pragma: no cover - a subclass with an unusual signature
            defaults = {}
        parts = [repr(cfg[k]) for k in required if k in cfg]
        parts += [f"{k}={v!r}" for k, v in cfg.items()
                  if k not in required and (k not in defaults or defaults[k] != v)]
        return f"{type(self).__name__}({', '.join(parts)})"


Layer.build = _wrap_build(Layer.build)
Layer.backward = _wrap_backward(Layer.backward)
_keywords.wrap_init(Layer)


# ---------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------
class Activation(Layer):
    """Base of the elementwise activation layers.

    Subclasses implement ``_apply(x, out)`` (writes into ``out``, which may be ``x``) and
    ``_grad(dy, y)`` (``dL/dx`` from the output ``y``, as a new array; from the input ``x``
    instead when ``grad_from_input`` is True); the same two methods serve
    :class:`Conv2D`/:class:`Dense` when the activation is fused into them.
    """

    #: The string accepted by :func:`get_activation`.
    activation_name = ""
    #: Whether ``_grad`` takes the input rather than the output: True for the functions
    #: whose output does not determine their slope (GELU, SiLU). Such an activation fused
    #: into a layer is not applied in place.
    grad_from_input = False

    def call(self, x, training=False):
        y = self._apply(x, np.empty_like(x))
        return y, (x if self.grad_from_input else y)

    def backward(self, dy, y):
        if not self.need_input_grad:
            return None
        return self._grad_over_dy(dy, y) if self.dy_writable else self._grad(dy, y)

    def _grad_over_dy(self, dy, y):
        """:meth:`_grad`, written over ``dy`` where the activation can (a gradient that the
        training engine owns and no one else reads: ``Layer.dy_writable``)."""
        return self._grad(dy, y)


class ReLU(Activation):
    """``y = max(x, 0)``; the gradient is 1 where ``y > 0`` and 0 elsewhere (also at 0)."""

    activation_name = "relu"

    def _apply(self, x, out):
        if (type(x) is np.ndarray and x.dtype in (np.float32, np.float64) and x.flags.c_contiguous
                and (out is x or (type(out) is np.ndarray and out.dtype == x.dtype
                                  and out.shape == x.shape and out.flags.c_contiguous))):
            return F.relu(x, out=out)          # compiled, on cconv's threads
        return np.maximum(x, 0, out=out)

    def _grad(self, dy, y):
        return F.relu_backward(dy, y)   # one compiled pass

    def _grad_over_dy(self, dy, y):
        return F.relu_backward(dy, y, out=dy)


class _WithAlpha(Activation):
    """An activation with one non-negative parameter ``alpha``."""

    def __init__(self, alpha, **kwargs):
        super().__init__(**kwargs)
        self.alpha = V.number(alpha, "alpha", low=0.0)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


class LeakyReLU(_WithAlpha):
    """``y = x`` for ``x > 0``, ``alpha * x`` otherwise.

    Parameters
    ----------
    alpha : float >= 0
        Slope for negative inputs (default 0.01, PyTorch's; Keras uses 0.3).
    """

    activation_name = "leaky_relu"

    def __init__(self, alpha=0.01, **kwargs):
        super().__init__(alpha, **kwargs)

    def _apply(self, x, out):
        if out is not x:
            np.copyto(out, x)
        np.multiply(out, out.dtype.type(self.alpha), out=out, where=out < 0)
        return out

    def _grad(self, dy, y):
        # y > 0 exactly where x > 0 (alpha >= 0): the slope is 1 there, alpha elsewhere.
        dx = np.greater(y, 0, out=np.empty_like(dy))
        a = dx.dtype.type(self.alpha)
        dx *= 1 - a
        dx += a
        return np.multiply(dx, dy, out=dx)


class Sigmoid(Activation):
    """``y = 1 / (1 + exp(-x))`` (scipy's stable ``expit``); ``dy/dx = y (1 - y)``."""

    activation_name = "sigmoid"

    def _apply(self, x, out):
        return expit(x, out=out)

    def _grad(self, dy, y):
        dx = np.subtract(1, y, out=np.empty_like(dy))
        dx *= y
        return np.multiply(dx, dy, out=dx)


class Tanh(Activation):
    """``y = tanh(x)``; ``dy/dx = 1 - y**2``."""

    activation_name = "tanh"

    def _apply(self, x, out):
        return np.tanh(x, out=out)

    def _grad(self, dy, y):
        dx = np.square(y, out=np.empty_like(dy))
        np.subtract(1, dx, out=dx)
        return np.multiply(dx, dy, out=dx)


class Softmax(Activation):
    """``y = exp(x - max x) / sum(exp(x - max x))`` along ``axis`` (the last by default).

    ``backward`` is the full Jacobian-vector product ``dx = y * (dy - sum(dy * y))``.
    A model that ends with a softmax and is compiled with the cross-entropy trains on the
    fused, exact ``softmax(z) - onehot`` gradient (see :class:`cconv.losses.SoftmaxCrossEntropy`).
    """

    activation_name = "softmax"

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = V.integer(axis, "axis")

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if not -(len(input_shape) + 1) <= self.axis <= len(input_shape):
            raise ValueError(f"{self._label()}: axis {self.axis} is out of range for an input "
                             f"of shape (N, {', '.join(map(str, input_shape))})")
        return input_shape

    def _prepare(self, inputs):
        x = super()._prepare(inputs)
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"{self._label()}: axis {self.axis} is out of range for an input "
                             f"of shape {x.shape}")
        return x

    def _apply(self, x, out):
        # The ufuncs' reduce methods: np.max and np.sum are the same reductions behind a
        # wrapper that costs more than the whole softmax of one image.
        np.subtract(x, np.maximum.reduce(x, axis=self.axis, keepdims=True), out=out)
        np.exp(out, out=out)
        return np.divide(out, np.add.reduce(out, axis=self.axis, keepdims=True), out=out)

    def _grad(self, dy, y):
        dx = np.multiply(dy, y, out=np.empty_like(dy))
        s = np.sum(dx, axis=self.axis, keepdims=True)
        np.subtract(dy, s, out=dx)
        return np.multiply(dx, y, out=dx)


class ELU(_WithAlpha):
    """``y = x`` for ``x > 0``, ``alpha * (exp(x) - 1)`` otherwise (Clevert et al. 2015).

    The gradient is taken from the output: 1 where ``y > 0``, ``y + alpha`` elsewhere (which
    needs ``alpha >= 0``; PyTorch and Keras also accept a negative alpha).

    Parameters
    ----------
    alpha : float >= 0
        The value approached for large negative inputs is ``-alpha`` (default 1.0, as
        PyTorch and Keras).
    """

    activation_name = "elu"

    def __init__(self, alpha=1.0, **kwargs):
        super().__init__(alpha, **kwargs)

    def _apply(self, x, out):
        negative = x <= 0                          # (NaN is neither: it passes through)
        e = np.expm1(np.minimum(x, 0))
        e *= e.dtype.type(self.alpha)
        if out is not x:
            np.copyto(out, x)
        np.copyto(out, e, where=negative)
        return out

    def _grad(self, dy, y):
        dx = np.add(y, y.dtype.type(self.alpha))   # alpha * exp(x) where x <= 0
        np.copyto(dx, 1, where=y > 0)
        return np.multiply(dx, dy, out=dx)


class GELU(Activation):
    """Gaussian error linear unit ``y = x * Phi(x)``, ``Phi`` the standard normal CDF.

    Parameters
    ----------
    approximate : {"none", "tanh"} (or False / True)
        ``"none"`` (the default): the exact ``Phi(x) = (1 + erf(x / sqrt(2))) / 2``;
        ``"tanh"``: ``Phi(x) ~ (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3))) / 2``. As
        PyTorch's ``nn.GELU(approximate=...)``; Keras's ``gelu(x, approximate=False)``
        takes the booleans.
    """

    activation_name = "gelu"
    grad_from_input = True
    _K = math.sqrt(2.0 / math.pi)
    _A = 0.044715

    def __init__(self, approximate="none", **kwargs):
        super().__init__(**kwargs)
        forms = {False: "none", True: "tanh", "none": "none", "tanh": "tanh"}
        if not isinstance(approximate, (str, bool)) or approximate not in forms:
            raise ValueError(f"approximate must be 'none' or 'tanh' (or False / True), "
                             f"got {approximate!r}")
        self.approximate = forms[approximate]

    def get_config(self):
        return {**super().get_config(), "approximate": self.approximate}

    def _tanh_term(self, x):
        """tanh(sqrt(2 / pi) * (x + 0.044715 x^3))."""
        t = np.square(x)
        t *= t.dtype.type(self._A)
        t += 1
        t *= x
        t *= t.dtype.type(self._K)
        return np.tanh(t, out=t)

    def _apply(self, x, out):
        if self.approximate == "tanh":
            phi = self._tanh_term(x)
            phi += 1
            phi *= phi.dtype.type(0.5)
        else:
            phi = ndtr(x)
        return np.multiply(x, phi, out=out)

    def _grad(self, dy, x):
        if self.approximate == "tanh":
            # 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2 / pi) (1 + 3 * 0.044715 x^2)
            t = self._tanh_term(x)
            dx = np.square(x)
            dx *= dx.dtype.type(3 * self._A)
            dx += 1
            dx *= x
            dx *= 1 - np.square(t)
            dx *= dx.dtype.type(self._K)
            dx += t
            dx += 1
            dx *= dx.dtype.type(0.5)
        else:
            # Phi(x) + x phi(x), phi the standard normal density
            dx = np.square(x)
            dx *= dx.dtype.type(-0.5)
            np.exp(dx, out=dx)
            dx *= dx.dtype.type(1.0 / math.sqrt(2.0 * math.pi))
            dx *= x
            dx += ndtr(x)
        return np.multiply(dx, dy, out=dx)


class SiLU(Activation):
    """Sigmoid linear unit (swish) ``y = x * sigmoid(x)``;
    ``dy/dx = s (1 + x (1 - s))`` with ``s = sigmoid(x)``. Also registered as ``Swish``
    and ``activation="swish"``.
    """

    activation_name = "silu"
    grad_from_input = True

    def _apply(self, x, out):
        return np.multiply(x, expit(x), out=out)

    def _grad(self, dy, x):
        s = expit(x)
        dx = np.subtract(1, s)
        dx *= x
        dx += 1
        dx *= s
        return np.multiply(dx, dy, out=dx)


_ACTIVATIONS = {cls.activation_name: cls for cls in (ReLU, LeakyReLU, Sigmoid, Tanh, Softmax,
                                                     ELU, GELU, SiLU)}
_ACTIVATIONS["swish"] = SiLU


def get_activation(name_or_layer):
    """Resolve an ``activation=`` argument.

    Parameters
    ----------
    name_or_layer : str, Layer, dict or None
        ``"relu"``, ``"leaky_relu"``, ``"sigmoid"``, ``"tanh"``, ``"softmax"``, ``"elu"``,
        ``"gelu"``, ``"silu"`` (or ``"swish"``), ``"linear"`` or None (no activation), an
        activation layer instance, or a :func:`serialize` dict.

    Returns
    -------
    Activation or None

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if name_or_layer is None:
        return None
    if isinstance(name_or_layer, Layer):
        return name_or_layer
    if isinstance(name_or_layer, dict):
        return deserialize(name_or_layer)
    if isinstance(name_or_layer, str):
        key = name_or_layer.lower()
        if key in ("linear", "none", "identity"):
            return None
        if key in _ACTIVATIONS:
            return _ACTIVATIONS[key]()
        raise ValueError(f"unknown activation {name_or_layer!r}; choose one of "
                         f"{sorted(_ACTIVATIONS) + ['linear']} or None")
    raise TypeError(f"activation must be a str, an activation layer or None, "
                    f"got {type(name_or_layer).__name__}")


def _activation_config(act):
    """An activation as stored in a config: its name, or a serialized dict if customised."""
    if act is None:
        return None
    if isinstance(act, Activation) and act.activation_name:
        default = type(act)().get_config()
        cfg = act.get_config()
        cfg.pop("name"), default.pop("name")
        if cfg == default:
            return act.activation_name
    return serialize(act)


class _WithActivation(Layer):
    """A linear layer followed by an optional fused activation (applied in place).

    ``call(x, training, apply_activation=False)`` returns the pre-activation output (the
    logits when the activation is a softmax); its ``saved`` makes ``backward`` skip the
    activation too.
    """

    def __init__(self, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.activation = get_activation(activation)

    def _activate(self, z, apply_activation):
        """(output, what the activation's gradient needs: y, z for grad_from_input, or None)."""
        act = self.activation
        if act is None or not apply_activation:
            return z, None
        if act.grad_from_input:
            return act._apply(z, np.empty_like(z)), z    # the gradient needs z itself
        y = act._apply(z, z)                         # z is our own fresh array: in place
        return y, y

    def _deactivate(self, dy, saved):
        """dL/dz from dL/dy and what :meth:`_activate` kept (over ``dy`` when the model
        allows it: ``Layer.dy_writable``)."""
        if saved is None:
            return dy
        if self.dy_writable:
            return self.activation._grad_over_dy(dy, saved)
        return self.activation._grad(dy, saved)

    def _activate_in_place(self, z):
        """The activation of ``z`` (a fresh array of the layer's own) for inference, in place."""
        return z if self.activation is None else self.activation._apply(z, z)


# ---------------------------------------------------------------------------------
# Convolution and dense
# ---------------------------------------------------------------------------------
class _Conv(_WithActivation):
    """What the convolution layers share: geometry, bias, initializers, fused activation."""

    _input_rank = 3
    _fixed_channels = True

    def __init__(self, kernel_size, stride, padding, dilation, use_bias, activation,
                 kernel_initializer, bias_initializer, name, trainable):
        super().__init__(activation=activation, name=name, trainable=trainable)
        self.kernel_size = F.normalize_pair(kernel_size, "kernel_size")
        self.stride = F.normalize_pair(stride, "stride")
        self.dilation = F.normalize_pair(dilation, "dilation")
        self.padding = _check_padding(padding)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self._infer_workspaces = []

    def _conv_config(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "dilation": self.dilation, "use_bias": self.use_bias,
                "activation": _activation_config(self.activation),
                "kernel_initializer": initializers.name_of(self.kernel_initializer),
                "bias_initializer": initializers.name_of(self.bias_initializer)}

    def _add_weights(self, shape, channels, fan_shape=None):
        """The kernel of this shape (its initializer sees ``fan_shape``'s fans, default its
        own) and the bias of ``channels``."""
        init = self.kernel_initializer
        if fan_shape is not None:
            def init(shape, rng, dtype, _init=init):
                return _init(fan_shape, rng, dtype).reshape(shape)
        self.add_weight("kernel", shape, init)
        if self.use_bias:
            self.add_weight("bias", (channels,), self.bias_initializer)

    def _init_filters(self, filters, groups):
        self.filters = V.positive_int(filters, "filters")
        self.groups = V.positive_int(groups, "groups")
        if self.filters % self.groups:
            raise ValueError(f"filters ({self.filters}) must be divisible by groups "
                             f"({self.groups})")

    # Subclasses supply _conv(x, workspace=None) -> z and _conv_backward(dz, x) -> (dx or None, dw, db).
    def call(self, x, training=False, apply_activation=True):
        y, act_saved = self._activate(self._conv(x), apply_activation)
        return y, (x, act_saved)

    def infer(self, x, apply_activation=True):
        """The convolution (and activation) in inference mode: nothing kept for backward, the
        scratch of the convolution reused from call to call (:meth:`_with_workspace`)."""
        z = self._with_workspace(lambda x, ws: self._conv(x, workspace=ws), x)
        return self._activate_in_place(z) if apply_activation else z

    def _with_workspace(self, run, x):
        """``run(x, workspace)`` with a :class:`cconv.Workspace` of the layer's own for
        inference, kept from call to call. Calls running at once (from several Python
        threads) take different ones: each call takes one from the layer's pool (a new one
        when it is empty) and puts it back; list pop and append are atomic."""
        pool = self._infer_workspaces
        try:
            ws = pool.pop()
        except IndexError:
            ws = F.Workspace()
        try:
            return run(x, ws)
        finally:
            pool.append(ws)

    def inference_fusion(self, following):
        """Convolution, ReLU, max pooling: the pool runs on the convolution's output and
        the ReLU on the (smaller) pooled one: max and ReLU commute exactly (ReLU never
        decreases, and a NaN wins both), so the result is the same. A :class:`Conv2D`
        with ReLU or no activation goes through :func:`cconv.functional.conv2d_max_pool2d`,
        whose kernels write the pooled output directly (for a 2x2 stride-2 unpadded pool on
        the Winograd and direct routes)."""
        if (type(following) is MaxPool2D and self._conv_pool is not None
                and (self.activation is None or type(self.activation) is ReLU)):
            relu = self.activation is not None

            def conv_max_pool(x):
                return self._with_workspace(
                    lambda x, ws: self._conv_pool(x, following, relu, ws), x)
            return conv_max_pool
        if type(following) is MaxPool2D and type(self.activation) is ReLU:
            def conv_pool_relu(x):
                y = following.infer(self.infer(x, apply_activation=False))
                return self.activation._apply(y, y)
            return conv_pool_relu
        return None

    def inference_function(self, input_shape, following=None):
        """The fused convolution, ReLU and max pool (:meth:`inference_fusion`) with its
        arguments checked and its route planned once for the shape
        (:func:`cconv.functional.prepare_conv2d_max_pool2d`)."""
        if (following is None or type(following) is not MaxPool2D
                or self._prepare_conv_pool is None
                or not (self.activation is None or type(self.activation) is ReLU)):
            return super().inference_function(input_shape, following)
        prepared = self._prepare_conv_pool(tuple(input_shape), following,
                                           self.activation is not None)
        params = self.params

        def run(x, workspace):
            return prepared(x, params["kernel"], params.get("bias"), workspace)

        def conv_max_pool(x):
            return self._with_workspace(run, x)
        return conv_max_pool

    #: prepare_conv_pool(input_shape, following, relu): conv_pool's function for inputs of
    #: that shape, checked and planned once (Conv2D's, through
    #: prepare_conv2d_max_pool2d), or None.
    _prepare_conv_pool = None

    #: conv_pool(x, following, relu, workspace=None, return_argmax=False): the convolution,
    #: optional ReLU and the max pool ``following`` in one call (Conv2D's, through
    #: conv2d_max_pool2d), or None; conv_pool_backward(dy, argmax, x, following,
    #: relu_output): its gradients (dx or None, dw, db) from the pooled output's, the ReLU's
    #: (whose output is relu_output) included (conv2d_max_pool2d_backward).
    _conv_pool = None
    _conv_pool_backward = None

    def training_fusion(self, following):
        """Convolution + ReLU, then max pooling: the ReLU's gradient at each unit that
        reaches the pool's output is 1 exactly where the pool's output is > 0 (the window's
        winner is that output), and the pool routes no gradient elsewhere. So the pool
        keeps its output as the ReLU's mask, applied to its (4x smaller) gradient, and the
        convolution's output is not kept at all: the same gradients, the largest
        activation of a network freed after the pool.

        The ReLU runs on the pooled output, as in :meth:`inference_fusion` (max and ReLU
        commute), a quarter of the elements. Only the argmax of a window whose values are
        all <= 0 can differ from pooling after the ReLU, and such a window's output is 0, so
        the mask routes it no gradient either way. A :class:`Conv2D` runs the three through
        :func:`cconv.functional.conv2d_max_pool2d` (the pool's argmax with it), whose kernels
        never store the convolution's output (for a 2x2 stride-2 unpadded pool on the
        Winograd and direct routes), and the backward passes of the three through
        :func:`cconv.functional.conv2d_max_pool2d_backward`, whose kernels never store the
        gradient of that output either (same routes)."""
        if (type(following) is MaxPool2D and type(self.activation) is ReLU
                and self._conv_pool is not None):
            def conv_pool_train(x, training):
                p, argmax = self._conv_pool(x, following, True, return_argmax=True)
                shape = (x.shape[0], *self.compute_output_shape(x.shape[1:]))
                return p, (x, None), (argmax, shape, p)

            def backward(dy, saved, following_saved):
                # ReLU's, the pool's and the convolution's backward passes in one: the
                # convolution's output gradient is not built, and the ReLU's mask is
                # applied where the kernels read dy (conv2d_max_pool2d_backward)
                x, _ = saved
                argmax, _, p = following_saved
                dx, dw, db = self._conv_pool_backward(dy, argmax, x, following, p)
                self._add_grads(dw, db)
                return dx
            if self._conv_pool_backward is not None:
                conv_pool_train.backward = backward
            return conv_pool_train
        if type(following) is MaxPool2D and type(self.activation) is ReLU:
            def conv_relu_pool(x, training):
                y, (x_saved, _) = self.call(x, training, apply_activation=False)
                p, (argmax, shape) = following.call(y, training)
                del y
                p = self.activation._apply(p, p)
                return p, (x_saved, None), (argmax, shape, p)
            return conv_relu_pool
        return None

    def backward(self, dy, saved):
        x, act_saved = saved
        dx, dw, db = self._conv_backward(self._deactivate(dy, act_saved), x)
        self._add_grads(dw, db)
        return dx

    def _add_grads(self, dw, db):
        self.grads["kernel"] += dw.reshape(self.grads["kernel"].shape)
        if self.use_bias:
            self.grads["bias"] += db

    def _check_groups(self, C, groups, input_shape):
        if C % groups:
            raise ValueError(f"{self._label()}: input channels ({C}, input shape {input_shape}) "
                             f"must be divisible by groups ({groups})")


def _conv_positional_check(name, args, kwargs):
    """PyTorch's ``Conv2d(in_channels, out_channels, kernel_size)`` order read as cconv's
    ``(filters, kernel_size, stride)``: an error when it cannot be right, a warning when it
    looks likely."""
    if len(args) >= 2 and "kernel_size" in kwargs:
        raise TypeError(f"{name}() got kernel_size twice: cconv's order is {name}(filters, kernel_size, "
                        f"stride, ...); PyTorch's Conv2d(in_channels, out_channels, kernel_size) maps to "
                        f"{name}(out_channels, kernel_size) (the input channels come from the input)")
    ints = [a for a in args[:2] if isinstance(a, numbers.Integral) and not isinstance(a, bool)]
    if len(args) >= 3 and len(ints) == 2 and args[1] >= 8 and args[1] > args[0]:
        warnings.warn(
            f"{name}({', '.join(map(repr, args[:3]))}) makes {args[0]} filters of {args[1]}x{args[1]} "
            f"with stride {args[2]!r}: cconv's order is {name}(filters, kernel_size, stride). For "
            f"PyTorch's Conv2d({args[0]}, {args[1]}, {args[2]!r}) write {name}({args[1]}, {args[2]!r}) "
            f"(the input channels come from the input)", UserWarning, stacklevel=3)


class Conv2D(_Conv):
    """2-D convolution (cross-correlation) over NHWC inputs, HWIO kernel.

    Parameters
    ----------
    filters : int
        Number of output channels ``C_out``.
    kernel_size : int or (KH, KW)
    stride, dilation : int or pair
    padding : int, pair, ((top, bottom), (left, right)), "valid" or "same"
        ``"same"`` with stride > 1 pads like TensorFlow (output ``ceil(H / stride)``).
    groups : int
        ``C_in`` and ``filters`` split into this many independent convolutions.
    use_bias : bool
    activation : str, Layer or None
        Applied after the convolution (see :func:`get_activation`).
    kernel_initializer, bias_initializer : str or callable
        See :mod:`cconv.initializers` (defaults: He uniform, zeros).

    Attributes
    ----------
    params : {"kernel": (KH, KW, C_in // groups, filters), "bias": (filters,)}
    """

    _positional_check = staticmethod(_conv_positional_check)
    fresh_input_grad = True        # conv2d_backward's dx

    def __init__(self, filters, kernel_size, stride=1, padding="valid", dilation=1, groups=1,
                 use_bias=True, activation=None, kernel_initializer="he_uniform",
                 bias_initializer="zeros", name=None, trainable=True):
        super().__init__(kernel_size, stride, padding, dilation, use_bias, activation,
                         kernel_initializer, bias_initializer, name, trainable)
        self._init_filters(filters, groups)

    def get_config(self):
        return {"filters": self.filters, **self._conv_config(), "groups": self.groups,
                **super().get_config()}

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        self._check_rank(len(input_shape) + 1, (None,) + input_shape)
        H, W, C = input_shape
        self._check_groups(C, self.groups, input_shape)
        oh, ow = _spatial_output(self._label(), (H, W), self.kernel_size, self.stride,
                                 self.padding, self.dilation, "kernel")
        return (oh, ow, self.filters)

    def build(self, input_shape):
        KH, KW = self.kernel_size
        self._add_weights((KH, KW, input_shape[-1] // self.groups, self.filters), self.filters)

    def _conv(self, x, workspace=None):
        return F.conv2d(x, self.params["kernel"], self.params.get("bias"), self.stride,
                        self.padding, self.dilation, self.groups, workspace=workspace)

    def _conv_backward(self, dz, x):
        return F.conv2d_backward(dz, x, self.params["kernel"], self.stride, self.padding,
                                 self.dilation, self.groups, need_dx=self.need_input_grad)

    def _conv_pool(self, x, following, relu, workspace=None, return_argmax=False):
        return F.conv2d_max_pool2d(x, self.params["kernel"], self.params.get("bias"),
                                   self.stride, self.padding, self.dilation, self.groups,
                                   pool_size=following.pool_size, pool_stride=following.stride,
                                   pool_padding=following.padding, relu=relu,
                                   return_argmax=return_argmax, workspace=workspace)

    def _prepare_conv_pool(self, input_shape, following, relu):
        return F.prepare_conv2d_max_pool2d(input_shape, self.params["kernel"],
                                           self.params.get("bias"), self.stride, self.padding,
                                           self.dilation, self.groups,
                                           pool_size=following.pool_size,
                                           pool_stride=following.stride,
                                           pool_padding=following.padding, relu=relu)

    def _conv_pool_backward(self, dy, argmax, x, following, relu_output):
        return F.conv2d_max_pool2d_backward(dy, argmax, x, self.params["kernel"], self.stride,
                                            self.padding, self.dilation, self.groups,
                                            need_dx=self.need_input_grad,
                                            pool_size=following.pool_size,
                                            pool_stride=following.stride,
                                            pool_padding=following.padding,
                                            relu_output=relu_output)


class Conv2DTranspose(_Conv):
    """Transposed 2-D convolution ("deconvolution"): the data gradient of a convolution,
    e.g. to upsample a feature map by ``stride`` in a decoder.

    Semantics of PyTorch's ``ConvTranspose2d`` for numeric padding (rows and columns removed
    from each side of the full output) and ``output_padding`` (added at the bottom/right);
    ``"valid"``/``"same"`` give Keras's ``Conv2DTranspose`` sizes (``"same"``: ``H * stride``).
    Output height ``(H - 1) * stride - top - bottom + dilation * (KH - 1) + output_padding + 1``
    (see :func:`cconv.functional.normalize_transpose_padding`).

    Parameters
    ----------
    filters, kernel_size, stride, dilation
        As :class:`Conv2D` (``filters`` output channels).
    padding : int, pair, ((top, bottom), (left, right)), "valid" or "same"
    output_padding : int, pair or None
        Must be smaller than the stride or the dilation. None: 0 for numeric padding,
        Keras's default for the strings.
    groups : int
        ``C_in`` and ``filters`` split into this many independent groups (as PyTorch's).
    use_bias, activation, kernel_initializer, bias_initializer
        As :class:`Conv2D`.

    Attributes
    ----------
    params : {"kernel": (KH, KW, filters // groups, C_in), "bias": (filters,)}
        The kernel is the HWIO kernel of the convolution whose gradient this layer
        computes, i.e. Keras's Conv2DTranspose layout ``(KH, KW, out, in)``. PyTorch's
        ``ConvTranspose2d.weight`` ``(C_in, filters // groups, KH, KW)`` is
        ``kernel.transpose(3, 2, 0, 1)``.

    Notes
    -----
    Runs on the convolution's compiled kernels (:func:`cconv.functional.conv2d_transpose`):
    forward with stride 1 as a convolution with the rotated kernel (Winograd, direct or
    im2col route), otherwise as ``x W^T`` + col2im; backward as a forward convolution
    (``dx``) and a convolution weight gradient (``dw``).
    """

    _positional_check = staticmethod(_conv_positional_check)

    def __init__(self, filters, kernel_size, stride=1, padding="valid", output_padding=None,
                 dilation=1, groups=1, use_bias=True, activation=None,
                 kernel_initializer="he_uniform", bias_initializer="zeros", name=None,
                 trainable=True):
        super().__init__(kernel_size, stride, padding, dilation, use_bias, activation,
                         kernel_initializer, bias_initializer, name, trainable)
        self._init_filters(filters, groups)
        self.output_padding = (None if output_padding is None
                               else F.normalize_pair(output_padding, "output_padding", minimum=0))
        F.normalize_transpose_padding(self.padding, self.kernel_size, self.stride, self.dilation,
                                      self.output_padding)      # checks output_padding

    def get_config(self):
        return {"filters": self.filters, **self._conv_config(),
                "output_padding": self.output_padding, "groups": self.groups, **super().get_config()}

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        self._check_rank(len(input_shape) + 1, (None,) + input_shape)
        H, W, C = input_shape
        self._check_groups(C, self.groups, input_shape)
        pads, op = F.normalize_transpose_padding(self.padding, self.kernel_size, self.stride,
                                                 self.dilation, self.output_padding)
        out = [F.conv_transpose_output_size(size, self.kernel_size[i], self.stride[i],
                                            pads[i][0], pads[i][1], op[i], self.dilation[i])
               for i, size in enumerate((H, W))]
        if min(out) < 1:
            raise ValueError(f"{self._label()}: the padding {pads} leaves an output of "
                             f"{tuple(out)} for an input of shape {input_shape}")
        return (out[0], out[1], self.filters)

    def build(self, input_shape):
        KH, KW = self.kernel_size
        self._add_weights((KH, KW, self.filters // self.groups, input_shape[-1]), self.filters)

    def _geometry(self):
        return (self.stride, self.padding, self.output_padding, self.dilation, self.groups)

    def _conv(self, x, workspace=None):        # (no workspace= in conv2d_transpose)
        return F.conv2d_transpose(x, self.params["kernel"], self.params.get("bias"),
                                  *self._geometry())

    def _conv_backward(self, dz, x):
        return F.conv2d_transpose_backward(dz, x, self.params["kernel"], *self._geometry(),
                                           need_dx=self.need_input_grad)


class DepthwiseConv2D(_Conv):
    """Depthwise 2-D convolution: each input channel convolved with its own
    ``depth_multiplier`` kernels (a :class:`Conv2D` with ``groups = C_in``).

    Parameters
    ----------
    kernel_size : int or (KH, KW)
    stride, dilation : int or pair
    padding : int, pair, ((top, bottom), (left, right)), "valid" or "same"
    depth_multiplier : int
        Output channels per input channel: ``C_out = C_in * depth_multiplier``, output
        channel ``c * depth_multiplier + j`` from input channel ``c`` (Keras's and
        PyTorch's order).
    use_bias, activation, kernel_initializer, bias_initializer
        As :class:`Conv2D` (Keras calls the kernel's initializer ``depthwise_initializer``).
        The initializers see the fans of one depthwise filter (``fan_in = KH * KW``, as
        PyTorch; Keras counts ``KH * KW * C_in``).

    Attributes
    ----------
    params : {"kernel": (KH, KW, C_in, depth_multiplier), "bias": (C_in * depth_multiplier,)}
        Keras's depthwise kernel layout. PyTorch's ``Conv2d(C, C * m, groups=C).weight``
        ``(C * m, 1, KH, KW)`` is ``kernel.reshape(KH, KW, 1, C * m).transpose(3, 2, 0, 1)``.
    """

    def __init__(self, kernel_size, stride=1, padding="valid", depth_multiplier=1, dilation=1,
                 use_bias=True, activation=None, kernel_initializer="he_uniform",
                 bias_initializer="zeros", name=None, trainable=True):
        super().__init__(kernel_size, stride, padding, dilation, use_bias, activation,
                         kernel_initializer, bias_initializer, name, trainable)
        self.depth_multiplier = V.positive_int(depth_multiplier, "depth_multiplier")

    def get_config(self):
        return {**self._conv_config(), "depth_multiplier": self.depth_multiplier,
                **super().get_config()}

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        self._check_rank(len(input_shape) + 1, (None,) + input_shape)
        H, W, C = input_shape
        oh, ow = _spatial_output(self._label(), (H, W), self.kernel_size, self.stride,
                                 self.padding, self.dilation, "kernel")
        return (oh, ow, C * self.depth_multiplier)

    def build(self, input_shape):
        KH, KW = self.kernel_size
        C, m = input_shape[-1], self.depth_multiplier
        self._add_weights((KH, KW, C, m), C * m, fan_shape=(KH, KW, 1, C * m))

    def _grouped_kernel(self):
        """The kernel as the HWIO kernel of a grouped convolution (a view, no copy)."""
        KH, KW, C, m = self.params["kernel"].shape
        return self.params["kernel"].reshape(KH, KW, 1, C * m)

    def _conv(self, x, workspace=None):
        return F.conv2d(x, self._grouped_kernel(), self.params.get("bias"), self.stride,
                        self.padding, self.dilation, groups=x.shape[3], workspace=workspace)

    def _conv_backward(self, dz, x):
        return F.conv2d_backward(dz, x, self._grouped_kernel(), self.stride, self.padding,
                                 self.dilation, groups=x.shape[3], need_dx=self.need_input_grad)


class Dense(_WithActivation):
    """Fully connected layer ``y = x @ kernel + bias`` on 2-D inputs ``(N, features)``.

    Parameters
    ----------
    units : int
    activation : str, Layer or None
    use_bias : bool
    kernel_initializer, bias_initializer : str or callable
        Defaults: Glorot uniform (Keras's), zeros.

    Attributes
    ----------
    params : {"kernel": (features, units), "bias": (units,)}
    """

    _input_rank = 1
    _fixed_channels = True
    fresh_input_grad = True        # a new matmul result

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", name=None, trainable=True):
        super().__init__(activation=activation, name=name, trainable=trainable)
        self.units = V.positive_int(units, "units")
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def get_config(self):
        return {"units": self.units, "activation": _activation_config(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.name_of(self.kernel_initializer),
                "bias_initializer": initializers.name_of(self.bias_initializer),
                **super().get_config()}

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        self._check_rank(len(input_shape) + 1, (None,) + input_shape)
        return (self.units,)

    def build(self, input_shape):
        self.add_weight("kernel", (input_shape[0], self.units), self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.units,), self.bias_initializer)

    def _linear(self, x):
        kernel = self.params["kernel"]
        if not self.use_bias:
            return F.matmul(x, kernel)
        z = np.empty((x.shape[0], kernel.shape[1]), np.result_type(x, kernel))
        z[...] = self.params["bias"]
        return F.matmul(x, kernel, out=z, beta=1.0)

    def call(self, x, training=False, apply_activation=True):
        z = self._linear(x)
        y, y_act = self._activate(z, apply_activation)
        return y, (x, y_act)

    def infer(self, x):
        return self._activate_in_place(self._linear(x))

    def inference_function(self, input_shape, following=None):
        """:meth:`infer` with its product checked and planned once for the shape
        (:func:`cconv.functional.prepare_matmul`)."""
        if following is not None or len(input_shape) != 2:
            return super().inference_function(input_shape, following)
        params = self.params
        kernel = params["kernel"]
        xshape = tuple(input_shape)
        product = F.prepare_matmul(xshape, kernel)
        shape = (xshape[0], kernel.shape[1])

        def dense(x):
            kernel = params["kernel"]
            if x.shape != xshape or x.dtype != kernel.dtype:
                return self.infer(x)         # refused or converted there, with its message
            if not self.use_bias:
                return self._activate_in_place(product(x, kernel))
            z = np.empty(shape, kernel.dtype)
            z[...] = params["bias"]
            return self._activate_in_place(product(x, kernel, z, 1.0))
        return dense

    def backward(self, dy, saved):
        x, y_act = saved
        dz = self._deactivate(dy, y_act)
        F.matmul(x, dz, trans_a=True, out=self.grads["kernel"], beta=1.0)
        if self.use_bias:
            self.grads["bias"] += np.sum(dz, axis=0)
        if not self.need_input_grad:
            return None
        return F.matmul(dz, self.params["kernel"], trans_b=True)


# ---------------------------------------------------------------------------------
# Pooling, flatten
# ---------------------------------------------------------------------------------
class _Pool2D(Layer):
    _input_rank = 3

    def __init__(self, pool_size=2, stride=None, padding=0, name=None, trainable=True):
        super().__init__(name=name, trainable=trainable)
        self.pool_size = F.normalize_pair(pool_size, "pool_size")
        self.stride = None if stride is None else F.normalize_pair(stride, "stride")
        self.padding = _check_padding(padding)

    def get_config(self):
        return {"pool_size": self.pool_size, "stride": self.stride, "padding": self.padding,
                **super().get_config()}

    @property
    def _strides(self):
        return self.pool_size if self.stride is None else self.stride

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        self._check_rank(len(input_shape) + 1, (None,) + input_shape)
        H, W, C = input_shape
        oh, ow = _spatial_output(self._label(), (H, W), self.pool_size, self._strides,
                                 self.padding, (1, 1), "pool window", pool=True)
        return (oh, ow, C)


class MaxPool2D(_Pool2D):
    """Max pooling; the gradient goes to the winner of each window only.

    Parameters
    ----------
    pool_size : int or pair
    stride : int, pair or None
        Defaults to ``pool_size``.
    padding : int, pair, ((top, bottom), (left, right)), "valid" or "same"
        Padded positions never win. Ties go to the first element in row-major order.
    """

    fresh_input_grad = True        # max_pool2d_backward's dx

    def call(self, x, training=False):
        y, argmax = F.max_pool2d(x, self.pool_size, self.stride, self.padding)
        return y, (argmax, x.shape)

    def backward(self, dy, saved):
        if not self.need_input_grad:
            return None
        argmax, shape, *relu = saved        # relu: the output, the ReLU before us fused in
        if relu:                            # (Conv2D.training_fusion)
            dy = F.relu_backward(dy, relu[0], out=dy if self.dy_writable else None)
        return F.max_pool2d_backward(dy, argmax, shape)


class AvgPool2D(_Pool2D):
    """Average pooling (padded zeros count in the divisor, as PyTorch's default).

    Parameters as :class:`MaxPool2D`.
    """

    def call(self, x, training=False):
        return F.avg_pool2d(x, self.pool_size, self.stride, self.padding), x.shape

    def backward(self, dy, shape):
        if not self.need_input_grad:
            return None
        return F.avg_pool2d_backward(dy, shape, self.pool_size, self.stride, self.padding)


class _GlobalPool2D(Layer):
    _input_rank = 3

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        self._check_rank(len(input_shape) + 1, (None,) + input_shape)
        return (input_shape[-1],)


class GlobalAvgPool2D(_GlobalPool2D):
    """Mean over height and width: ``(N, H, W, C) -> (N, C)``."""

    def call(self, x, training=False):
        return np.mean(x, axis=(1, 2)), x.shape

    def backward(self, dy, shape):
        if not self.need_input_grad:
            return None
        N, H, W, C = shape
        dx = np.empty(shape, dy.dtype)
        dx[...] = (dy * dy.dtype.type(1.0 / (H * W)))[:, None, None, :]
        return dx


class GlobalMaxPool2D(_GlobalPool2D):
    """Maximum over height and width: ``(N, H, W, C) -> (N, C)``; Keras's GlobalMaxPooling2D.

    A max pool whose window is the whole image (the compiled kernel of :class:`MaxPool2D`):
    the gradient goes to the first maximum in row-major order (a NaN wins), as PyTorch's
    ``max_pool2d`` over the whole image; TensorFlow's ``reduce_max`` would split it among
    tied maxima instead.
    """

    def call(self, x, training=False):
        N, H, W, C = x.shape
        y, argmax = F.max_pool2d(x, (H, W))
        return y.reshape(N, C), (argmax, x.shape)

    def backward(self, dy, saved):
        if not self.need_input_grad:
            return None
        argmax, shape = saved
        return F.max_pool2d_backward(dy.reshape(argmax.shape), argmax, shape)


class _Reshaping(Layer):
    """A layer that only reshapes each sample (C order) to its output shape."""

    def call(self, x, training=False):
        y = x.reshape((x.shape[0],) + tuple(self.compute_output_shape(x.shape[1:])))
        return y, x.shape

    def backward(self, dy, shape):
        if not self.need_input_grad:
            return None
        return dy.reshape(shape)


class Flatten(_Reshaping):
    """``(N, d1, d2, ...) -> (N, d1 * d2 * ...)`` in C (NHWC) order, as Keras's Flatten."""

    def compute_output_shape(self, input_shape):
        return (math.prod(input_shape),)


class Reshape(_Reshaping):
    """Reshape each sample to ``target_shape`` (C order, i.e. NHWC), as Keras's Reshape.

    Parameters
    ----------
    target_shape : tuple of int
        The output shape without the batch dimension; one entry may be -1 (inferred).
    """

    def __init__(self, target_shape, name=None, trainable=True):
        super().__init__(name=name, trainable=trainable)
        what = "a tuple of positive ints (at most one -1), without the batch dimension"
        if isinstance(target_shape, (numbers.Integral, np.integer)) and not isinstance(
                target_shape, (bool, np.bool_)):
            target_shape = (target_shape,)
        if not isinstance(target_shape, (tuple, list)) or not all(
                isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
                for v in target_shape):
            raise TypeError(f"target_shape must be {what}, got {target_shape!r}")
        shape = tuple(int(v) for v in target_shape)
        if not shape or any(v < 1 and v != -1 for v in shape) or shape.count(-1) > 1:
            raise ValueError(f"target_shape must be {what}, got {target_shape!r}")
        self.target_shape = shape

    def get_config(self):
        return {"target_shape": self.target_shape, **super().get_config()}

    def compute_output_shape(self, input_shape):
        size = math.prod(input_shape)
        known = math.prod(v for v in self.target_shape if v != -1)
        if -1 in self.target_shape:
            if size % known:
                raise ValueError(f"{self._label()}: cannot reshape an input of shape "
                                 f"{tuple(input_shape)} ({size} values) to {self.target_shape}")
            return tuple(size // known if v == -1 else v for v in self.target_shape)
        if size != known:
            raise ValueError(f"{self._label()}: cannot reshape an input of shape "
                             f"{tuple(input_shape)} ({size} values) to {self.target_shape} "
                             f"({known} values)")
        return self.target_shape


# ---------------------------------------------------------------------------------
# Resampling, padding, cropping
# ---------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------
# Resampling, padding, cropping
# ---------------------------------------------------------------------------------
class UpSampling2D(Layer):
    """Upsample height and width by integer factors, as Keras's UpSampling2D.

    Parameters
    ----------
    size : int or (sh, sw)
    interpolation : {"nearest", "bilinear"}
        ``"bilinear"`` with half-pixel centres: PyTorch's ``interpolate(mode="bilinear",
        align_corners=False)`` and Keras's bilinear UpSampling2D (TensorFlow's resize).
        See :func:`cconv.functional.upsample2d`.
    """

    _input_rank = 3

    def __init__(self, size=2, interpolation="nearest", name=None, trainable=True):
        super().__init__(name=name, trainable=trainable)
        self.size = F.normalize_pair(size, "size")
        if not isinstance(interpolation, str) or interpolation.lower() not in (
                "nearest", "bilinear"):
            raise ValueError(f"interpolation must be 'nearest' or 'bilinear', "
                             f"got {interpolation!r}")
        self.interpolation = interpolation.lower()

    def get_config(self):
        return {"size": self.size, "interpolation": self.interpolation, **super().get_config()}

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        self._check_rank(len(input_shape) + 1, (None,) + input_shape)
        H, W, C = input_shape
        return (H * self.size[0], W * self.size[1], C)

    def call(self, x, training=False):
        return F.upsample2d(x, self.size, self.interpolation), None

    def backward(self, dy, saved):
        if not self.need_input_grad:
            return None
        return F.upsample2d_backward(dy, self.size, self.interpolation)


class _Margins(Layer):
    """Adds (ZeroPadding2D) or removes (Cropping2D) rows and columns at the edges."""

    _input_rank = 3
    _arg = "padding"                                  # the constructor argument's name
    _sign = 1
    _apply = staticmethod(F.zero_pad2d)               # and its adjoint:
    _adjoint = staticmethod(F.crop2d)

    def __init__(self, margins, name=None, trainable=True):
        super().__init__(name=name, trainable=trainable)
        self._margins = F.normalize_pads(_tuplify(margins), self._arg)
        setattr(self, self._arg, self._margins)

    def get_config(self):
        return {self._arg: self._margins, **super().get_config()}

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        self._check_rank(len(input_shape) + 1, (None,) + input_shape)
        (t, b), (l, r) = self._margins
        H, W, C = input_shape
        out = (H + self._sign * (t + b), W + self._sign * (l + r), C)
        if min(out) < 1:
            raise ValueError(f"{self._label()}: {self._arg} {self._margins} must leave at least "
                             f"one row and column of an input of shape {input_shape}")
        return out

    def call(self, x, training=False):
        return self._apply(x, self._margins), None

    def backward(self, dy, saved):
        if not self.need_input_grad:
            return None
        return self._adjoint(dy, self._margins)


class ZeroPadding2D(_Margins):
    """Zeros around the height and width of the input, as Keras's ZeroPadding2D.

    Parameters
    ----------
    padding : int, (h, w) or ((top, bottom), (left, right))
    """

    def __init__(self, padding=1, name=None, trainable=True):
        super().__init__(padding, name=name, trainable=trainable)


class Cropping2D(_Margins):
    """Remove rows and columns at the edges of the input, as Keras's Cropping2D.

    Parameters
    ----------
    cropping : int, (h, w) or ((top, bottom), (left, right))
        Must leave at least one row and one column.
    """

    _arg = "cropping"
    _sign = -1
    _apply = staticmethod(F.crop2d)
    _adjoint = staticmethod(F.zero_pad2d)

    def __init__(self, cropping=0, name=None, trainable=True):
        super().__init__(cropping, name=name, trainable=trainable)


# ---------------------------------------------------------------------------------
# Regularisation and normalisation
# ---------------------------------------------------------------------------------
class Dropout(Layer):
    """Inverted dropout: when training, zero each unit with probability ``rate`` and scale the
    survivors by ``1 / (1 - rate)``; the identity at inference.

    Parameters
    ----------
    rate : float in [0, 1)
    seed : int or None
        Seed of the layer's own generator. When None the generator is seeded from the
        ``rng`` given to :meth:`build` (so a model seed makes dropout reproducible).
    """

    def __init__(self, rate, seed=None, name=None, trainable=True):
        super().__init__(name=name, trainable=trainable)
        self.rate = V.number(rate, "rate", low=0.0, high=1.0, high_open=True)
        if seed is not None and (isinstance(seed, (bool, np.bool_))
                                 or not isinstance(seed, numbers.Integral) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self._rng = None

    def get_config(self):
        return {"rate": self.rate, "seed": self.seed, **super().get_config()}

    def build(self, input_shape):
        seed = self.seed if self.seed is not None else int(self._weight_rng.integers(0, 2**63 - 1))
        self._rng = np.random.default_rng(seed)

    def call(self, x, training=False):
        if not training or self.rate == 0.0:
            return x, None
        mask = self._rng.random(x.shape, dtype=x.dtype)       # U[0, 1)
        np.greater_equal(mask, x.dtype.type(self.rate), out=mask)  # keep with prob 1 - rate
        mask *= x.dtype.type(1.0 / (1.0 - self.rate))
        return np.multiply(x, mask), mask

    def backward(self, dy, mask):
        if not self.need_input_grad:
            return None
        if mask is None:
            return dy
        return np.multiply(dy, mask)


def _einsum_cols(a, b):
    """``sum_i a[i, c] * b[i, c]`` per column, accumulated in float64."""
    return np.einsum("ic,ic->c", a, b, dtype=np.float64, casting="safe")


class BatchNorm2D(Layer):
    """Batch normalisation per channel (the last axis), over all other axes.

    Training: ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` with the batch's mean and
    (biased) variance over ``(N, H, W)``, and the running statistics updated as
    ``running = momentum * running + (1 - momentum) * batch`` (Keras's convention; PyTorch's
    ``momentum`` is ``1 - momentum`` here, and PyTorch stores the unbiased variance in
    ``running_var`` where this layer, like Keras, stores the biased one). Inference uses the
    running statistics. Works for 4-D ``(N, H, W, C)`` and 2-D ``(N, C)`` inputs.

    Parameters
    ----------
    momentum : float in [0, 1]
    eps : float > 0

    Attributes
    ----------
    params : {"gamma": (C,), "beta": (C,)}
    state : {"running_mean": (C,), "running_var": (C,)}
    """

    _fixed_channels = True

    def __init__(self, momentum=0.9, eps=1e-5, name=None, trainable=True):
        super().__init__(name=name, trainable=trainable)
        self.momentum = V.number(momentum, "momentum", low=0.0, high=1.0)
        self.eps = V.number(eps, "eps", low=0.0, low_open=True)

    def get_config(self):
        return {"momentum": self.momentum, "eps": self.eps, **super().get_config()}

    def build(self, input_shape):
        C = input_shape[-1]
        self.add_weight("gamma", (C,), "ones")
        self.add_weight("beta", (C,), "zeros")
        self.add_weight("running_mean", (C,), "zeros", trainable=False)
        self.add_weight("running_var", (C,), "ones", trainable=False)

    def call(self, x, training=False):
        C = x.shape[-1]
        x2 = x.reshape(-1, C)
        M = x2.shape[0]
        gamma, beta = self.params["gamma"], self.params["beta"]
        rm, rv = self.state["running_mean"], self.state["running_var"]
        dt = x.dtype.type
        if training:
            if M == 0:
                raise ValueError(f"{self._label()}: training needs a non-empty batch, got x of "
                                 f"shape {x.shape}")
            mean = np.mean(x2, axis=0, dtype=np.float64)
            xhat = np.subtract(x2, mean.astype(x.dtype))             # the one big temporary
            var = _einsum_cols(xhat, xhat) / M
            inv_std = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)
            xhat *= inv_std
            y = np.multiply(xhat, gamma)
            y += beta
            rm *= dt(self.momentum)
            rm += (1.0 - self.momentum) * mean.astype(x.dtype)
            rv *= dt(self.momentum)
            rv += ((1.0 - self.momentum) * var).astype(x.dtype)
            saved = (True, xhat, inv_std)
        else:
            inv_std = (1.0 / np.sqrt(rv.astype(np.float64) + self.eps)).astype(x.dtype)
            scale = gamma * inv_std
            y = np.multiply(x2, scale)
            y += beta - rm * scale
            saved = (False, x2, inv_std)
        return y.reshape(x.shape), saved

    def backward(self, dy, saved):
        train, a, inv_std = saved
        C = dy.shape[-1]
        dy2 = dy.reshape(-1, C)
        M = dy2.shape[0]
        gamma = self.params["gamma"]
        dbeta = np.sum(dy2, axis=0, dtype=np.float64)
        if train:
            xhat = a
            dgamma = _einsum_cols(dy2, xhat)
        else:
            x2 = a
            rm = self.state["running_mean"].astype(np.float64)
            dgamma = (_einsum_cols(dy2, x2) - rm * dbeta) * inv_std
        self.grads["gamma"] += dgamma
        self.grads["beta"] += dbeta
        if not self.need_input_grad:
            return None
        if train:
            # dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat))
            dx = np.multiply(xhat, (-dgamma / M).astype(dy.dtype))
            dx += dy2
            dx -= (dbeta / M).astype(dy.dtype)
            dx *= gamma * inv_std
        else:
            dx = np.multiply(dy2, gamma * inv_std)
        return dx.reshape(dy.shape)


# ---------------------------------------------------------------------------------
# Merging several inputs
# ---------------------------------------------------------------------------------
class _Merge(Layer):
    """Elementwise merge of inputs of one shape."""

    multiple_inputs = True
    _min_inputs, _max_inputs = 2, None

    def compute_output_shape(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        n = len(shapes)
        if n < self._min_inputs or (self._max_inputs is not None and n > self._max_inputs):
            want = (f"exactly {self._min_inputs}" if self._max_inputs == self._min_inputs
                    else f"at least {self._min_inputs}")
            raise ValueError(f"{self._label()} takes {want} inputs, got {n}")
        if any(s != shapes[0] for s in shapes[1:]):
            raise ValueError(f"{self._label()}: the inputs must have the same shape, got "
                             + " and ".join(str((None,) + s) for s in shapes))
        return shapes[0]


class Add(_Merge):
    """Sum of its inputs (same shapes): ``Add()([x, y])`` (a residual connection)."""

    def call(self, inputs, training=False):
        y = np.add(inputs[0], inputs[1])
        for x in inputs[2:]:
            y += x
        return y, len(inputs)

    def backward(self, dy, n):
        return [dy] * n


class Subtract(_Merge):
    """``Subtract()([x, y]) = x - y`` (exactly two inputs of one shape)."""

    _max_inputs = 2

    def call(self, inputs, training=False):
        return np.subtract(inputs[0], inputs[1]), None

    def backward(self, dy, saved):
        return [dy, np.negative(dy)]


class Multiply(_Merge):
    """Elementwise product of its inputs (same shapes)."""

    def call(self, inputs, training=False):
        y = np.multiply(inputs[0], inputs[1])
        for x in inputs[2:]:
            y *= x
        return y, inputs

    def backward(self, dy, inputs):
        out = []
        for i in range(len(inputs)):
            g = dy
            for j, x in enumerate(inputs):
                if j != i:
                    g = np.multiply(g, x)
            out.append(g)
        return out


class Concatenate(Layer):
    """Join inputs along ``axis`` (default the last, the channels); the other axes must match.

    Parameters
    ----------
    axis : int
        An axis of the batched tensors (``-1``: channels); the batch axis 0 is refused.
    """

    multiple_inputs = True

    def __init__(self, axis=-1, name=None, trainable=True):
        super().__init__(name=name, trainable=trainable)
        self.axis = V.integer(axis, "axis")

    def get_config(self):
        return {"axis": self.axis, **super().get_config()}

    def _sample_axis(self, rank):
        """``axis`` as an index into a sample shape of ``rank`` dims (no batch axis)."""
        full = rank + 1
        if not -full <= self.axis < full or self.axis % full == 0:
            raise ValueError(f"{self._label()}: axis {self.axis} is out of range or the batch "
                             f"axis for inputs of rank {full}")
        return self.axis % full - 1

    def compute_output_shape(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        if len(shapes) < 2:
            raise ValueError(f"{self._label()} takes at least 2 inputs, got {len(shapes)}")
        if any(len(s) != len(shapes[0]) for s in shapes):
            raise ValueError(f"{self._label()}: the inputs must have the same rank, got "
                             + " and ".join(str((None,) + s) for s in shapes))
        a = self._sample_axis(len(shapes[0]))
        rest = [s[:a] + s[a + 1:] for s in shapes]
        if any(r != rest[0] for r in rest[1:]):
            raise ValueError(f"{self._label()}: the inputs must match except along axis "
                             f"{self.axis}, got " + " and ".join(str((None,) + s) for s in shapes))
        out = list(shapes[0])
        out[a] = sum(s[a] for s in shapes)
        return tuple(out)

    def call(self, inputs, training=False):
        a = self._sample_axis(inputs[0].ndim - 1) + 1
        return np.concatenate(inputs, axis=a), [x.shape[a] for x in inputs]

    def backward(self, dy, sizes):
        a = self._sample_axis(dy.ndim - 1) + 1
        return np.split(dy, np.cumsum(sizes)[:-1], axis=a)


# ---------------------------------------------------------------------------------
# Serialisation
# ---------------------------------------------------------------------------------
_LAYERS = {cls.__name__: cls for cls in (
    Conv2D, Conv2DTranspose, DepthwiseConv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D,
    GlobalMaxPool2D, Dense, Flatten, Reshape, UpSampling2D, ZeroPadding2D, Cropping2D, Dropout,
    BatchNorm2D, ReLU, LeakyReLU, Sigmoid, Tanh, Softmax, ELU, GELU, SiLU,
    Add, Subtract, Multiply, Concatenate)}
_ALIASES = {"MaxPooling2D": MaxPool2D, "AveragePooling2D": AvgPool2D, "AvgPooling2D": AvgPool2D,
            "GlobalAveragePooling2D": GlobalAvgPool2D, "GlobalMaxPooling2D": GlobalMaxPool2D,
            "BatchNormalization": BatchNorm2D, "Convolution2DTranspose": Conv2DTranspose,
            "Swish": SiLU}


def serialize(layer) -> dict:
    """``{"class_name": "Conv2D", "config": layer.get_config()}`` (JSON-serialisable)."""
    if not isinstance(layer, Layer):
        raise TypeError(f"serialize expects a Layer, got {type(layer).__name__}")
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def deserialize(d: dict, custom_objects: dict | None = None) -> Layer:
    """Re-create a layer from :func:`serialize`'s dict (weights are not included).

    Parameters
    ----------
    d : dict
        ``{"class_name": ..., "config": {...}}``.
    custom_objects : dict of str -> Layer subclass, optional
        Extra layer classes by name.

    Raises
    ------
    ValueError
        For an unknown class name or a malformed dict.
    """
    if not isinstance(d, dict) or "class_name" not in d:
        raise ValueError(f"a serialized layer must be a dict with 'class_name' and 'config', "
                         f"got {d!r}")
    name = d["class_name"]
    known = _known_layers()
    cls = (custom_objects or {}).get(name) or known.get(name) or _ALIASES.get(name)
    if cls is None:
        raise ValueError(f"unknown layer class {name!r}; known: {sorted(known)} "
                         f"(pass custom_objects for your own layers)")
    config = d.get("config") or {}
    if not isinstance(config, dict):
        raise ValueError(f"the config of a serialized {name} must be a dict, got {config!r}")
    try:
        return cls.from_config(dict(config))
    except TypeError as e:
        raise ValueError(f"bad config for {name}: {e}") from e


#: Keras's names for layers that cconv names differently (same classes).
GlobalMaxPooling2D = GlobalMaxPool2D
Swish = SiLU

#: The preprocessing and augmentation layers live in cconv.preprocessing (which imports
#: this module); they are cconv.layers names too, resolved on first use.
_PREPROCESSING = ("RandomFlip", "RandomCrop", "RandomTranslation", "RandomRotation", "RandomZoom",
                  "RandomContrast", "Rescaling", "Normalization")
__all__ += list(_PREPROCESSING)


def _known_layers():
    from . import preprocessing
    return {**_LAYERS, **preprocessing.LAYERS}


def __getattr__(name):
    if name in _PREPROCESSING:
        from . import preprocessing
        return getattr(preprocessing, name)
    raise AttributeError(f"module 'cconv.layers' has no attribute {name!r}")
