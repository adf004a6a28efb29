"""Layers: the building blocks of a :class:`cconv.Sequential` model.

Every layer follows one small protocol (see :class:`Layer`):

* ``build(input_shape, rng, dtype)`` creates the weights once the input shape is known
  (``input_shape`` without the batch dimension); ``forward`` builds an unbuilt layer from its
  first input.
* ``forward(x, training=False)`` returns the output and, when training, keeps what
  ``backward`` needs; ``backward(dy)`` returns ``dL/dx`` and *overwrites* ``grads``
  (it never accumulates), then releases what forward kept.
* ``params`` and ``grads`` are dicts of arrays with the same keys and shapes, side by side;
  ``state`` holds non-trainable saved arrays (the running statistics of
  :class:`BatchNorm2D`).
* ``get_config()`` / ``from_config()`` round-trip through JSON; :func:`serialize` /
  :func:`deserialize` add the class name.

Activations are NHWC ``(N, H, W, C)``; convolution kernels HWIO
``(KH, KW, C_in // groups, C_out)``; dense kernels ``(in, out)``. Layers with weights compute
in the dtype they were built with (float32 or float64) and cast other inputs to it, as Keras
does; layers without weights keep a float32/float64 input's dtype.

Elementwise work on activations runs vectorised in place: an activation fused into
:class:`Conv2D`/:class:`Dense` overwrites the layer's fresh output, and every backward makes
exactly one new array (the returned gradient), never modifying its argument.
"""
from __future__ import annotations

import inspect
import math
import numbers

import numpy as np
from scipy.special import expit

from . import functional as F
from . import initializers

__all__ = [
    "Layer", "Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "Dense", "Flatten",
    "Dropout", "BatchNorm2D", "Activation", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax",
    "serialize", "deserialize", "get_activation",
]


# ---------------------------------------------------------------------------------
# Argument helpers
# ---------------------------------------------------------------------------------
def _positive_int(v, name):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {v!r}")
    if v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def _real(v, name):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return v


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


def _float_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _shape_tuple(shape, name="input_shape"):
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of ints (without the batch dimension), "
                        f"got {shape!r}") from None
    if len(shape) == 0 or min(shape) < 1:
        raise ValueError(f"{name} must be a non-empty tuple of positive ints (without the "
                         f"batch dimension), got {shape}")
    return shape


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


# ---------------------------------------------------------------------------------
# Base class
# ---------------------------------------------------------------------------------
class Layer:
    """Base class of every layer.

    Attributes
    ----------
    name : str or None
        Unique within a model (:class:`cconv.Sequential` assigns ``"conv2d_1"`` etc. when None).
    trainable : bool
        Whether an optimizer should update ``params``.
    built : bool
        True once ``build`` has created the weights.
    params, grads : dict of str -> ndarray
        Parameters and their gradients (same keys, shapes, dtype; C-contiguous).
        ``backward`` overwrites ``grads``.
    state : dict of str -> ndarray
        Non-trainable saved arrays (:class:`BatchNorm2D`'s running statistics); ``{}`` otherwise.
    need_input_grad : bool
        When False, ``backward`` skips ``dL/dx`` and returns None (the first layer of a
        network never needs it).
    input_shape : tuple or None
        The input shape without the batch dimension, set by ``build``.
    dtype : numpy.dtype or None
        float32 or float64, set by ``build``.

    Notes
    -----
    Subclasses implement ``_build``, ``_forward``, ``_backward``, ``output_shape`` and
    ``_config``; the base class checks inputs, builds lazily and manages the cache.
    """

    #: Rank of the input without the batch dimension (None: any rank >= 1).
    _input_rank: int | None = None
    #: Whether the last input dimension (channels/features) is fixed once built.
    _fixed_channels = False

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
        self.input_shape: tuple | None = None
        self.dtype = None
        self._cache = None

    # -- construction ----------------------------------------------------------
    def build(self, input_shape, rng=None, dtype=np.float32) -> None:
        """Create the weights for inputs of shape ``(batch, *input_shape)``.

        Parameters
        ----------
        input_shape : tuple of int
            The input shape without the batch dimension, e.g. ``(H, W, C)``.
        rng : numpy.random.Generator, int or None
            Source of the initial weights (an int seeds a new generator; None: unseeded).
        dtype : float32 or float64
            The dtype of the weights and of the computation.
        """
        input_shape = _shape_tuple(input_shape)
        dtype = _float_dtype(dtype)
        self.built = False
        if rng is None or isinstance(rng, (numbers.Integral, np.random.SeedSequence)):
            rng = np.random.default_rng(rng)
        elif not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, "
                            f"got {type(rng).__name__}")
        self._check_rank(len(input_shape) + 1, (None,) + input_shape)
        self.output_shape(input_shape)               # validates the geometry
        self.params, self.grads, self.state = {}, {}, {}
        self._build(input_shape, rng, dtype)
        self.params = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in self.params.items()}
        self.state = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in self.state.items()}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.input_shape = input_shape
        self.dtype = dtype
        self.built = True
        self._cache = None

    def _build(self, input_shape, rng, dtype):
        """Create ``self.params`` / ``self.state`` (nothing for layers without weights)."""

    # -- computation -------------------------------------------------------------
    def __call__(self, x, training=False):
        return self.forward(x, training)

    def forward(self, x, training=False, *, cache=None):
        """Compute the layer's output.

        Parameters
        ----------
        x : ndarray of shape (N, *input_shape)
        training : bool
            Training behaviour (dropout active, batch statistics in batch norm).
        cache : bool or None
            Keep what :meth:`backward` needs; defaults to ``training``. Pass
            ``cache=True`` with ``training=False`` to differentiate the inference-mode
            function (e.g. for saliency maps).

        Returns
        -------
        ndarray of shape (N, *output_shape(input_shape))
        """
        x = self._prepare(x)
        cache = bool(training) if cache is None else bool(cache)
        y, saved = self._forward(x, bool(training), cache)
        self._cache = (saved, y.shape, y.dtype) if cache else None
        return y

    def backward(self, dy):
        """Back-propagate ``dy = dL/dy`` through the last cached :meth:`forward`.

        Overwrites ``grads`` and releases the cache.

        Returns
        -------
        ndarray of the input's shape, or None when ``need_input_grad`` is False
        """
        if self._cache is None:
            raise RuntimeError(f"{self._label()}: backward() needs a preceding "
                               f"forward(x, training=True) (or cache=True); forward's cache "
                               f"is released by each backward")
        saved, out_shape, out_dtype = self._cache
        dy = np.asarray(dy)
        if dy.shape != out_shape:
            raise ValueError(f"{self._label()}: dy must have the output's shape {out_shape}, "
                             f"got {dy.shape}")
        if dy.dtype.kind not in "fiu":
            raise TypeError(f"{self._label()}: dy must be a real float array, got dtype {dy.dtype}")
        dy = np.ascontiguousarray(dy, dtype=out_dtype)
        self._cache = None
        return self._backward(dy, saved)

    def _forward(self, x, training, cache):
        raise NotImplementedError

    def _backward(self, dy, saved):
        raise NotImplementedError

    def _prepare(self, x):
        """Check an input against the layer, build on first use, cast to the layer's dtype."""
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise TypeError(f"{self._label()}: x must be a real numeric array, got dtype "
                            f"{x.dtype} (shape {x.shape})")
        self._check_rank(x.ndim, x.shape)
        if not self.built:
            dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float32
            self.build(x.shape[1:], None, dtype)
        elif self._fixed_channels and x.shape[-1] != self.input_shape[-1]:
            expected = ", ".join(map(str, self.input_shape))
            raise ValueError(f"{self._label()}: expected input of shape (N, {expected}) "
                             f"({self.input_shape[-1]} in the last axis), got x of shape {x.shape}")
        if self.params or x.dtype not in (np.float32, np.float64):
            dtype = self.dtype if self.params else np.float32
            if x.dtype != dtype:
                x = x.astype(dtype)
        return np.ascontiguousarray(x)

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

    # -- description -------------------------------------------------------------
    def output_shape(self, input_shape) -> tuple:
        """The output shape (without the batch dimension) for ``input_shape``."""
        return tuple(input_shape)

    def _config(self) -> dict:
        return {}

    def get_config(self) -> dict:
        """JSON-serialisable constructor arguments, plus ``name`` and ``trainable``."""
        cfg = dict(self._config())
        cfg["name"] = self.name
        cfg["trainable"] = self.trainable
        return cfg

    @classmethod
    def from_config(cls, config: dict) -> "Layer":
        """Re-create a layer (without weights) from :meth:`get_config`."""
        return cls(**config)

    def count_params(self) -> int:
        """Number of weights: ``params`` plus ``state`` (0 until built)."""
        arrays = list(self.params.values()) + list(self.state.values())
        return int(sum(a.size for a in arrays))

    def _label(self) -> str:
        return self.name if self.name else type(self).__name__

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


# ---------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------
class Activation(Layer):
    """Base of the elementwise activation layers.

    Subclasses implement ``_apply(x, out)`` (writes into ``out``, which may be ``x``) and
    ``_grad(dy, y)`` (``dL/dx`` from the output ``y``, as a new array).
    """

    #: The string accepted by :func:`get_activation`.
    activation_name = ""

    def _forward(self, x, training, cache):
        y = self._apply(x, np.empty_like(x))
        return y, (y if cache else None)

    def _backward(self, dy, y):
        if not self.need_input_grad:
            return None
        return self._grad(dy, y)


class ReLU(Activation):
    """``y = max(x, 0)``; the gradient is 1 where ``y > 0`` and 0 elsewhere (also at 0)."""

    activation_name = "relu"

    def _apply(self, x, out):
        return np.maximum(x, 0, out=out)

    def _grad(self, dy, y):
        return F.relu_backward(dy, y)   # one compiled pass


class LeakyReLU(Activation):
    """``y = x`` for ``x > 0``, ``alpha * x`` otherwise.

    Parameters
    ----------
    alpha : float >= 0
        Slope for negative inputs (default 0.01, PyTorch's; Keras uses 0.3).
    """

    activation_name = "leaky_relu"

    def __init__(self, alpha=0.01, **kwargs):
        super().__init__(**kwargs)
        alpha = _real(alpha, "alpha")
        if alpha < 0:
            raise ValueError(f"alpha must be a non-negative number, got {alpha!r}")
        self.alpha = alpha

    def _config(self):
        return {"alpha": self.alpha}

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
    For training a classifier, pair logits with :class:`cconv.losses.SoftmaxCrossEntropy`,
    which fuses the two stably; :class:`cconv.Sequential` does that for a final Softmax.
    """

    activation_name = "softmax"

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"axis must be an int, got {axis!r}")
        self.axis = int(axis)

    def _config(self):
        return {"axis": self.axis}

    def _prepare(self, x):
        x = super()._prepare(x)
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"{self._label()}: axis {self.axis} is out of range for an input "
                             f"of shape {x.shape}")
        return x

    def _apply(self, x, out):
        m = np.max(x, axis=self.axis, keepdims=True)
        np.subtract(x, m, out=out)
        np.exp(out, out=out)
        s = np.sum(out, axis=self.axis, keepdims=True)
        out /= s
        return out

    def _grad(self, dy, y):
        dx = np.multiply(dy, y, out=np.empty_like(dy))
        s = np.sum(dx, axis=self.axis, keepdims=True)
        np.subtract(dy, s, out=dx)
        return np.multiply(dx, y, out=dx)


_ACTIVATIONS = {cls.activation_name: cls for cls in (ReLU, LeakyReLU, Sigmoid, Tanh, Softmax)}


def get_activation(name_or_layer):
    """Resolve an ``activation=`` argument.

    Parameters
    ----------
    name_or_layer : str, Layer, dict or None
        ``"relu"``, ``"leaky_relu"``, ``"sigmoid"``, ``"tanh"``, ``"softmax"``, ``"linear"``
        or None (no activation), an activation layer instance, or a :func:`serialize` dict.

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
    """A linear layer followed by an optional fused activation (applied in place)."""

    def __init__(self, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.activation = get_activation(activation)

    def forward(self, x, training=False, *, cache=None, apply_activation=True):
        """Compute the output; see :meth:`Layer.forward`.

        ``apply_activation=False`` returns the pre-activation output (the logits when the
        activation is a softmax) and makes the next ``backward`` skip the activation too.
        """
        self._apply_activation = bool(apply_activation)
        return super().forward(x, training, cache=cache)

    def _activate(self, z, cache):
        act = self.activation
        if act is None or not getattr(self, "_apply_activation", True):
            return z, None
        y = act._apply(z, z)                         # z is our own fresh array: in place
        return y, (y if cache else None)

    def _deactivate(self, dy, y):
        return dy if y is None else self.activation._grad(dy, y)


# ---------------------------------------------------------------------------------
# Convolution and dense
# ---------------------------------------------------------------------------------
class Conv2D(_WithActivation):
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

    _input_rank = 3
    _fixed_channels = True

    def __init__(self, filters, kernel_size, stride=1, padding="valid", dilation=1, groups=1,
                 use_bias=True, activation=None, kernel_initializer="he_uniform",
                 bias_initializer="zeros", name=None, trainable=True):
        super().__init__(activation=activation, name=name, trainable=trainable)
        self.filters = _positive_int(filters, "filters")
        self.kernel_size = F.normalize_pair(kernel_size, "kernel_size")
        self.stride = F.normalize_pair(stride, "stride")
        self.dilation = F.normalize_pair(dilation, "dilation")
        self.padding = _check_padding(padding)
        self.groups = _positive_int(groups, "groups")
        if self.filters % self.groups:
            raise ValueError(f"filters ({self.filters}) must be divisible by groups "
                             f"({self.groups})")
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def _config(self):
        return {"filters": self.filters, "kernel_size": self.kernel_size, "stride": self.stride,
                "padding": self.padding, "dilation": self.dilation, "groups": self.groups,
                "use_bias": self.use_bias, "activation": _activation_config(self.activation),
                "kernel_initializer": initializers.name_of(self.kernel_initializer),
                "bias_initializer": initializers.name_of(self.bias_initializer)}

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        self._check_rank(len(input_shape) + 1, (None,) + input_shape)
        H, W, C = input_shape
        if C % self.groups:
            raise ValueError(f"{self._label()}: input channels ({C}, input shape {input_shape}) "
                             f"must be divisible by groups ({self.groups})")
        oh, ow = _spatial_output(self._label(), (H, W), self.kernel_size, self.stride,
                                 self.padding, self.dilation, "kernel")
        return (oh, ow, self.filters)

    def _build(self, input_shape, rng, dtype):
        KH, KW = self.kernel_size
        shape = (KH, KW, input_shape[-1] // self.groups, self.filters)
        self.params["kernel"] = self.kernel_initializer(shape, rng, dtype)
        if self.use_bias:
            self.params["bias"] = self.bias_initializer((self.filters,), rng, dtype)

    def _forward(self, x, training, cache):
        z = F.conv2d(x, self.params["kernel"], self.params.get("bias"), self.stride,
                     self.padding, self.dilation, self.groups)
        y, y_act = self._activate(z, cache)
        return y, ((x, y_act) if cache else None)

    def _backward(self, dy, saved):
        x, y_act = saved
        dz = self._deactivate(dy, y_act)
        dx, dw, db = F.conv2d_backward(dz, x, self.params["kernel"], self.stride, self.padding,
                                       self.dilation, self.groups,
                                       need_dx=self.need_input_grad)
        np.copyto(self.grads["kernel"], dw)
        if self.use_bias:
            np.copyto(self.grads["bias"], db)
        return dx


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

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", name=None, trainable=True):
        super().__init__(activation=activation, name=name, trainable=trainable)
        self.units = _positive_int(units, "units")
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def _config(self):
        return {"units": self.units, "activation": _activation_config(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.name_of(self.kernel_initializer),
                "bias_initializer": initializers.name_of(self.bias_initializer)}

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        self._check_rank(len(input_shape) + 1, (None,) + input_shape)
        return (self.units,)

    def _build(self, input_shape, rng, dtype):
        self.params["kernel"] = self.kernel_initializer((input_shape[0], self.units), rng, dtype)
        if self.use_bias:
            self.params["bias"] = self.bias_initializer((self.units,), rng, dtype)

    def _forward(self, x, training, cache):
        kernel = self.params["kernel"]
        if self.use_bias:
            z = np.empty((x.shape[0], kernel.shape[1]), np.result_type(x, kernel))
            z[...] = self.params["bias"]
            F._matmul(x, kernel, out=z, beta=1.0)
        else:
            z = F._matmul(x, kernel)
        y, y_act = self._activate(z, cache)
        return y, ((x, y_act) if cache else None)

    def _backward(self, dy, saved):
        x, y_act = saved
        dz = self._deactivate(dy, y_act)
        F._matmul(x, dz, trans_a=True, out=self.grads["kernel"])
        if self.use_bias:
            np.sum(dz, axis=0, out=self.grads["bias"])
        if not self.need_input_grad:
            return None
        return F._matmul(dz, self.params["kernel"], trans_b=True)


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

    def _config(self):
        return {"pool_size": self.pool_size, "stride": self.stride, "padding": self.padding}

    @property
    def _strides(self):
        return self.pool_size if self.stride is None else self.stride

    def output_shape(self, input_shape):
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

    def _forward(self, x, training, cache):
        y, argmax = F.max_pool2d(x, self.pool_size, self.stride, self.padding)
        return y, ((argmax, x.shape) if cache else None)

    def _backward(self, dy, saved):
        if not self.need_input_grad:
            return None
        argmax, shape = saved
        return F.max_pool2d_backward(dy, argmax, shape)


class AvgPool2D(_Pool2D):
    """Average pooling (padded zeros count in the divisor, as PyTorch's default).

    Parameters as :class:`MaxPool2D`.
    """

    def _forward(self, x, training, cache):
        y = F.avg_pool2d(x, self.pool_size, self.stride, self.padding)
        return y, (x.shape if cache else None)

    def _backward(self, dy, shape):
        if not self.need_input_grad:
            return None
        return F.avg_pool2d_backward(dy, shape, self.pool_size, self.stride, self.padding)


class GlobalAvgPool2D(Layer):
    """Mean over height and width: ``(N, H, W, C) -> (N, C)``."""

    _input_rank = 3

    def __init__(self, name=None, trainable=True):
        super().__init__(name=name, trainable=trainable)

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        self._check_rank(len(input_shape) + 1, (None,) + input_shape)
        return (input_shape[-1],)

    def _forward(self, x, training, cache):
        return np.mean(x, axis=(1, 2)), (x.shape if cache else None)

    def _backward(self, dy, shape):
        if not self.need_input_grad:
            return None
        N, H, W, C = shape
        dx = np.empty(shape, dy.dtype)
        dx[...] = (dy * dy.dtype.type(1.0 / (H * W)))[:, None, None, :]
        return dx


class Flatten(Layer):
    """``(N, d1, d2, ...) -> (N, d1 * d2 * ...)`` in C (NHWC) order, as Keras's Flatten."""

    def __init__(self, name=None, trainable=True):
        super().__init__(name=name, trainable=trainable)

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def _forward(self, x, training, cache):
        return x.reshape(x.shape[0], -1), (x.shape if cache else None)

    def _backward(self, dy, shape):
        if not self.need_input_grad:
            return None
        return dy.reshape(shape)


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
        rate = _real(rate, "rate")
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"rate must be in [0, 1), got {rate!r}")
        if seed is not None and (isinstance(seed, (bool, np.bool_))
                                 or not isinstance(seed, numbers.Integral) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        self.rate = rate
        self.seed = None if seed is None else int(seed)
        self._rng = None

    def _config(self):
        return {"rate": self.rate, "seed": self.seed}

    def _build(self, input_shape, rng, dtype):
        seed = self.seed if self.seed is not None else int(rng.integers(0, 2**63 - 1))
        self._rng = np.random.default_rng(seed)

    def _forward(self, x, training, cache):
        if not training or self.rate == 0.0:
            return x, None
        mask = self._rng.random(x.shape, dtype=x.dtype)       # U[0, 1)
        np.greater_equal(mask, x.dtype.type(self.rate), out=mask)  # keep with prob 1 - rate
        mask *= x.dtype.type(1.0 / (1.0 - self.rate))
        return np.multiply(x, mask), (mask if cache else None)

    def _backward(self, dy, mask):
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
        momentum = _real(momentum, "momentum")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        eps = _real(eps, "eps")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        self.momentum = momentum
        self.eps = eps

    def _config(self):
        return {"momentum": self.momentum, "eps": self.eps}

    def _build(self, input_shape, rng, dtype):
        C = input_shape[-1]
        self.params["gamma"] = np.ones(C, dtype)
        self.params["beta"] = np.zeros(C, dtype)
        self.state["running_mean"] = np.zeros(C, dtype)
        self.state["running_var"] = np.ones(C, dtype)

    def _forward(self, x, training, cache):
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
            saved = (True, xhat, inv_std) if cache else None
        else:
            inv_std = (1.0 / np.sqrt(rv.astype(np.float64) + self.eps)).astype(x.dtype)
            scale = gamma * inv_std
            y = np.multiply(x2, scale)
            y += beta - rm * scale
            saved = (False, x2, inv_std) if cache else None
        return y.reshape(x.shape), saved

    def _backward(self, dy, saved):
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
        self.grads["gamma"][...] = dgamma
        self.grads["beta"][...] = dbeta
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
# Serialisation
# ---------------------------------------------------------------------------------
_LAYERS = {cls.__name__: cls for cls in (
    Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D, Dense, Flatten, Dropout, BatchNorm2D,
    ReLU, LeakyReLU, Sigmoid, Tanh, Softmax)}
_ALIASES = {"MaxPooling2D": MaxPool2D, "AveragePooling2D": AvgPool2D, "AvgPooling2D": AvgPool2D,
            "GlobalAveragePooling2D": GlobalAvgPool2D, "BatchNormalization": BatchNorm2D}


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
    cls = (custom_objects or {}).get(name) or _LAYERS.get(name) or _ALIASES.get(name)
    if cls is None:
        raise ValueError(f"unknown layer class {name!r}; known: {sorted(_LAYERS)} "
                         f"(pass custom_objects for your own layers)")
    config = d.get("config") or {}
    if not isinstance(config, dict):
        raise ValueError(f"the config of a serialized {name} must be a dict, got {config!r}")
    try:
        return cls.from_config(dict(config))
    except TypeError as e:
        raise ValueError(f"bad config for {name}: {e}") from e
