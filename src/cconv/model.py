"""The Sequential model: a stack of layers with Keras-like ``compile`` / ``fit`` / ``evaluate``.

Typical use::

    import cconv
    from cconv.layers import Conv2D, MaxPool2D, Flatten, Dense

    model = cconv.Sequential([
        Conv2D(16, 3, padding="same", activation="relu"), MaxPool2D(2),
        Flatten(), Dense(10, activation="softmax"),
    ], input_shape=(8, 8, 1), seed=0)
    model.compile("adam", "categorical_crossentropy")
    history = model.fit(x_train, y_train, epochs=10, validation_split=0.1)
    model.evaluate(x_test, y_test)          # {"loss": ..., "accuracy": ...}
    model.save("digits.npz")                # cconv.load_model("digits.npz")

For custom loops, ``forward`` / ``backward`` / ``optimizer.step()`` are public, and
``train_on_batch`` does one optimisation step.

Softmax and cross-entropy
-------------------------
When the model ends with a softmax (a ``Softmax`` layer, or ``activation="softmax"`` on
the last layer) and the loss is :class:`cconv.losses.SoftmaxCrossEntropy`, training and
``evaluate`` skip that softmax and give the logits to the loss, whose fused gradient
``(softmax(z) - onehot) / N`` is exact and stable. A final sigmoid with
:class:`cconv.losses.BinaryCrossEntropy` is fused the same way. ``predict`` and
``forward`` always apply the whole network, so they return probabilities.

Reproducibility
---------------
All randomness comes from ``numpy.random.Generator`` objects derived from ``seed`` (weights
and dropout masks from one stream, the shuffling of ``fit`` from another). The same seed
and the same thread count (``cconv.set_num_threads``) give the same weights after ``fit``.
``fit(checkpoint=path)`` saves everything needed to continue (weights, layer and optimizer
state, RNG states, epoch, history) after every epoch; ``fit(resume=path)`` continues and
ends with the same weights as an uninterrupted run.
"""
import contextlib
import json
import math
import os
import re

import numpy as np

from . import callbacks as _callbacks
from . import io as _io
from ._progress import ProgressBar

__all__ = ["Sequential", "History", "load_model", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; raised by ``fit`` before any update with it.

    Attributes
    ----------
    epoch, batch : int
        1-based position of the batch in training.
    loss : float
    """

    def __init__(self, message, epoch=None, batch=None, loss=None):
        super().__init__(message)
        self.epoch, self.batch, self.loss = epoch, batch, loss


class History(_callbacks.Callback):
    """Record of ``fit``: ``history.history["loss"]`` etc., one value per epoch.

    Attributes
    ----------
    history : dict of str to list of float
        ``loss``, the metrics (``accuracy``), and with validation data ``val_loss`` and
        ``val_accuracy``.
    epoch : list of int
        0-based epoch indices that were run.
    params : dict
        ``epochs``, ``steps``, ``batch_size``, ``samples``, ``verbose``.
    """

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(float(v))

    def __repr__(self):
        keys = ", ".join(self.history)
        return f"History(epochs={len(self.epoch)}, keys=[{keys}])"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def _default_name(layer):
    """``Conv2D -> conv2d``, ``MaxPool2D -> max_pool2d``, ``LeakyReLU -> leaky_relu``."""
    cls = type(layer).__name__.replace("ReLU", "Relu")
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", cls).lower()


def _shape_str(shape):
    return "(" + ", ".join(["None"] + [str(s) for s in shape]) + ")"


def _layer_generators(layer):
    """Every ``numpy.random.Generator`` a layer owns (Dropout masks), by attribute name."""
    return {k: v for k, v in vars(layer).items() if isinstance(v, np.random.Generator)}


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


class Sequential:
    """A linear stack of layers.

    Parameters
    ----------
    layers : list of Layer, optional
        The layers, in order. Layers without a name get a unique one from their class
        (``conv2d``, ``conv2d_1``, ...).
    input_shape : tuple of int, optional
        Shape of one sample without the batch dimension, e.g. ``(64, 64, 3)`` (NHWC).
        Given here, the model is built (weights created) at once; otherwise on the first
        call to ``fit`` / ``predict`` / ``forward`` or an explicit ``build``.
    seed : int, optional
        Seed of every random choice (weights, dropout masks, shuffling). None draws one
        from the OS; it is recorded in ``model.seed``.
    dtype : {"float32", "float64"}, default "float32"
        Dtype of the weights and activations. Inputs are converted to it.
    name : str, default "sequential"

    Attributes
    ----------
    layers : list of Layer
    built, compiled : bool
    input_shape, output_shape : tuple of int or None
    optimizer, loss : objects set by :meth:`compile`
    stop_training : bool
        A callback sets it to end ``fit`` after the current epoch.
    """

    def __init__(self, layers=None, input_shape=None, seed=None, dtype="float32", name="sequential"):
        self.name = str(name)
        dt = np.dtype(dtype)
        if dt not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
        self.dtype = dt
        if seed is None:
            seed = int(np.random.SeedSequence().entropy)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise TypeError(f"seed must be a non-negative int or None, got {seed!r}")
        self.seed = int(seed)
        build_ss, fit_ss = np.random.SeedSequence(self.seed).spawn(2)
        self._build_rng = np.random.default_rng(build_ss)
        self._fit_rng = np.random.default_rng(fit_ss)
        self.layers = []
        self.built = False
        self.input_shape = None
        self.output_shape = None
        self._shapes = []
        self.optimizer = None
        self.loss = None
        self.metrics = ()
        self.compiled = False
        self.stop_training = False
        self.history = None
        self._resumed_epoch = 0
        for layer in layers or []:
            self.add(layer)
        if input_shape is not None:
            self.build(input_shape)

    # ------------------------------------------------------------------ structure
    def add(self, layer):
        """Append a layer (built at once if the model is already built)."""
        if not (hasattr(layer, "forward") and hasattr(layer, "backward") and hasattr(layer, "build")):
            raise TypeError(f"Sequential takes Layer objects, got {type(layer).__name__}: {layer!r}")
        if any(layer is other for other in self.layers):
            raise ValueError(f"layer {layer.name!r} is already in this model")
        taken = {l.name for l in self.layers}
        if getattr(layer, "name", None) is None:
            base = _default_name(layer)
            name, i = base, 0
            while name in taken:
                i += 1
                name = f"{base}_{i}"
            layer.name = name
        elif layer.name in taken:
            raise ValueError(f"duplicate layer name {layer.name!r}: layer names must be unique within a model")
        elif not isinstance(layer.name, str) or not layer.name or "/" in layer.name:
            raise ValueError(f"layer name must be a non-empty str without '/', got {layer.name!r}")
        self.layers.append(layer)
        if self.built:
            shape = self.output_shape
            try:
                self._build_layer(layer, shape)
            except (ValueError, TypeError) as exc:
                self.layers.pop()
                raise type(exc)(f"layer {layer.name!r} ({type(layer).__name__}) cannot take input of shape "
                                f"{_shape_str(shape)}: {exc}") from exc
            self.output_shape = tuple(layer.output_shape(shape))
            self._shapes.append(self.output_shape)
            self._set_input_grad_flags()
            if self.compiled:
                self.optimizer.attach(self.parameters())
        return self

    def _set_input_grad_flags(self):
        for i, layer in enumerate(self.layers):
            layer.need_input_grad = i > 0

    def _build_layer(self, layer, shape):
        shape = tuple(shape)
        if not getattr(layer, "built", False):
            layer.build(shape, self._build_rng, self.dtype)
            return
        # a layer built before it was added keeps its weights if it fits
        built_shape = getattr(layer, "input_shape", None)
        if built_shape is not None and tuple(built_shape) != shape:
            raise ValueError(f"it was already built for input shape {_shape_str(built_shape)}")
        dt = getattr(layer, "dtype", None)
        if dt is not None and np.dtype(dt) != self.dtype:
            raise ValueError(f"it was already built with dtype {np.dtype(dt).name}, the model uses {self.dtype.name}")

    def build(self, input_shape):
        """Create every layer's weights for samples of shape ``input_shape`` (no batch dim).

        Raises
        ------
        ValueError
            ``input_shape`` has a non-positive entry, or a layer cannot take its input
            (the message names the layer).
        """
        try:
            shape = tuple(int(s) for s in input_shape)
        except TypeError:
            raise TypeError(f"input_shape must be a tuple of ints, got {input_shape!r}") from None
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"input_shape must be a non-empty tuple of positive ints (no batch dim), got {input_shape!r}")
        if self.built:
            if shape != self.input_shape:
                raise ValueError(f"model is already built for input shape {self.input_shape}, got {shape}")
            return
        if not self.layers:
            raise ValueError("cannot build an empty Sequential: add layers first")
        shapes = []
        cur = shape
        for layer in self.layers:
            try:
                self._build_layer(layer, cur)
                cur = tuple(int(s) for s in layer.output_shape(cur))
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"layer {layer.name!r} ({type(layer).__name__}) cannot take input of shape "
                                f"{_shape_str(cur)}: {exc}") from exc
            shapes.append(cur)
        self.input_shape, self.output_shape, self._shapes = shape, cur, shapes
        self.built = True
        self._set_input_grad_flags()
        if self.compiled:
            self.optimizer.attach(self.parameters())

    def parameters(self):
        """List of ``(name, param, grad)`` for every trainable parameter (``"conv2d_1/kernel"``)."""
        self._require_built("parameters()")
        out = []
        for layer in self.layers:
            if not getattr(layer, "trainable", True):
                continue
            for key, p in layer.params.items():
                out.append((f"{layer.name}/{key}", p, layer.grads[key]))
        return out

    def count_params(self):
        """Total number of parameters (trainable and not, including layer state)."""
        self._require_built("count_params()")
        return sum(a.size for l in self.layers for a in list(l.params.values()) + list(getattr(l, "state", {}).values()))

    def get_layer(self, name):
        """The layer called ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r}; layers: {[l.name for l in self.layers]}")

    def summary(self, print_fn=None):
        """Print a Keras-like table: layer (type), output shape, parameter count, totals.

        Parameters
        ----------
        print_fn : callable, optional
            Called with the whole table as one string (default: ``print``).

        Returns
        -------
        str
            The table.
        """
        rows = []
        trainable = non_trainable = 0
        for i, layer in enumerate(self.layers):
            shape = _shape_str(self._shapes[i]) if self.built else "?"
            n_params = sum(a.size for a in layer.params.values()) if self.built else 0
            n_state = sum(a.size for a in getattr(layer, "state", {}).values()) if self.built else 0
            if getattr(layer, "trainable", True):
                trainable += n_params
                non_trainable += n_state
            else:
                non_trainable += n_params + n_state
            count = n_params + n_state
            rows.append((f"{layer.name} ({type(layer).__name__})", shape, f"{count:,}" if self.built else "?"))
        heads = ("Layer (type)", "Output Shape", "Param #")
        w0 = max([len(heads[0])] + [len(r[0]) for r in rows]) + 2
        w1 = max([len(heads[1])] + [len(r[1]) for r in rows]) + 2
        w2 = max([len(heads[2])] + [len(r[2]) for r in rows])
        width = w0 + w1 + w2
        lines = [f'Model: "{self.name}"', "_" * width,
                 f"{heads[0]:<{w0}}{heads[1]:<{w1}}{heads[2]:>{w2}}", "=" * width]
        if self.built:
            lines.insert(1, f"Input shape: {_shape_str(self.input_shape)}, dtype {self.dtype.name}")
        for j, r in enumerate(rows):
            lines.append(f"{r[0]:<{w0}}{r[1]:<{w1}}{r[2]:>{w2}}")
            lines.append("_" * width if j < len(rows) - 1 else "=" * width)
        if not rows:
            lines.append("=" * width)
        if self.built:
            total = trainable + non_trainable
            lines += [f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                      f"Non-trainable params: {non_trainable:,}"]
        else:
            lines.append("(not built: call build(input_shape) or fit to see shapes and parameter counts)")
        text = "\n".join(lines)
        (print_fn or print)(text)
        return text

    def __repr__(self):
        inner = ", ".join(repr(l) for l in self.layers)
        extra = f", input_shape={self.input_shape}" if self.built else ""
        return f"Sequential([{inner}]{extra})"

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    # ------------------------------------------------------------------ config
    def get_config(self):
        """JSON-serialisable description of the architecture (no weights)."""
        from .layers import serialize
        return {
            "name": self.name,
            "input_shape": list(self.input_shape) if self.built else None,
            "seed": self.seed,
            "dtype": self.dtype.name,
            "layers": [serialize(l) for l in self.layers],
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """Rebuild an (untrained) model from :meth:`get_config`'s output.

        ``custom_objects`` maps class names to your own Layer subclasses.
        """
        from .layers import deserialize
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError(f"not a Sequential config: {config!r:.200}")
        layers = [deserialize(d, custom_objects=custom_objects) for d in config["layers"]]
        shape = config.get("input_shape")
        return cls(layers, input_shape=None if shape is None else tuple(shape), seed=config.get("seed"),
                   dtype=config.get("dtype", "float32"), name=config.get("name", "sequential"))

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer="adam", loss="categorical_crossentropy", metrics=("accuracy",)):
        """Choose the optimizer, the loss and the metrics.

        Parameters
        ----------
        optimizer : str or optimizer object
            ``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"`` (default settings) or an
            instance from :mod:`cconv.optim`.
        loss : str or loss object
            ``"categorical_crossentropy"`` / ``"softmax_cross_entropy"``, ``"mse"``,
            ``"binary_crossentropy"``, or an instance from :mod:`cconv.losses`.
        metrics : sequence of str, default ("accuracy",)
            Only ``"accuracy"`` (alias ``"acc"``) is available.

        Raises
        ------
        ValueError
            Unknown optimizer, loss or metric name.
        TypeError
            An object that is not an optimizer or a loss.
        """
        from . import losses
        opt_obj = self._make_optimizer(optimizer)
        loss_obj = self._make_loss(loss, losses)
        if isinstance(metrics, str):
            metrics = (metrics,)
        ms = []
        for m in metrics or ():
            if not isinstance(m, str) or m.lower() not in ("accuracy", "acc"):
                raise ValueError(f"unknown metric {m!r}; available: 'accuracy'")
            if "accuracy" not in ms:
                ms.append("accuracy")
        self.optimizer, self.loss, self.metrics = opt_obj, loss_obj, tuple(ms)
        self.compiled = True
        if self.built:
            self.optimizer.attach(self.parameters())
        return self

    @staticmethod
    def _make_optimizer(optimizer):
        from . import optim
        if isinstance(optimizer, (str, dict, optim.Optimizer)) or (
                isinstance(optimizer, type) and issubclass(optimizer, optim.Optimizer)):
            return optim.get(optimizer)
        if isinstance(optimizer, type) or not (hasattr(optimizer, "attach") and hasattr(optimizer, "step")):
            raise TypeError(f"optimizer must be a name or a cconv.optim optimizer, got {optimizer!r}")
        return optimizer

    @staticmethod
    def _make_loss(loss, losses):
        if isinstance(loss, (str, dict, losses.Loss)) or (isinstance(loss, type) and issubclass(loss, losses.Loss)):
            return losses.get(loss)
        if isinstance(loss, type) or not (callable(loss) and hasattr(loss, "backward")):
            raise TypeError(f"loss must be a name or a cconv.losses object, got {loss!r}")
        return loss

    def _compile_config(self):
        def describe(obj):
            cfg = obj.get_config() if hasattr(obj, "get_config") else {}
            return {"class_name": type(obj).__name__, "config": cfg}
        return {"optimizer": describe(self.optimizer), "loss": describe(self.loss), "metrics": list(self.metrics)}

    def _compile_from_config(self, cfg):
        """Re-create optimizer and loss from :meth:`_compile_config` (known classes only)."""
        from . import losses, optim
        if not isinstance(cfg, dict):
            raise ValueError(f"malformed compile settings in the model file: {cfg!r:.100}")
        self.compile(optim.deserialize(cfg.get("optimizer")), losses.deserialize(cfg.get("loss")),
                     metrics=tuple(cfg.get("metrics") or ()))

    # ------------------------------------------------------------------ forward / backward
    def _require_built(self, what):
        if not self.built:
            raise ValueError(f"{what} needs a built model: give input_shape= or call build(input_shape) first")

    def _require_compiled(self, what):
        if not self.compiled:
            raise ValueError(f"model must be compiled before {what}: call model.compile(optimizer, loss) first")

    def _check_x(self, x, name="x"):
        """Validate and convert a batch of inputs; builds the model on first sight."""
        if isinstance(x, (list, tuple)):
            x = np.asarray(x)
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
            raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
        if not self.built:
            if x.ndim < 2:
                raise ValueError(f"{name} must have a batch dimension first, got shape {x.shape}")
            self.build(x.shape[1:])
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{name} has shape {x.shape}, but the model takes {_shape_str(self.input_shape)} "
                             f"(batch first, then {self.input_shape})")
        return x

    def _as_batch(self, x):
        return np.ascontiguousarray(x, dtype=self.dtype)

    def forward(self, x, training=False):
        """Run the whole network (including a final softmax).

        Parameters
        ----------
        x : ndarray of shape (N, *input_shape)
            Converted to the model's dtype.
        training : bool, default False
            Training mode: dropout active, batch statistics in BatchNorm, and every layer
            caches what ``backward`` needs.

        Returns
        -------
        ndarray of shape (N, *output_shape)
        """
        x = self._as_batch(self._check_x(x))
        for layer in self.layers:
            x = layer.forward(x, training=training)
        return x

    def backward(self, dy):
        """Backpropagate ``dy`` (gradient w.r.t. the output of :meth:`forward`) through every layer.

        Fills each layer's ``grads``. Returns ``dL/dx`` or None (the first layer does not
        compute its input gradient; see :meth:`input_gradient`).
        """
        dy = np.ascontiguousarray(dy, dtype=self.dtype)
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
            if dy is None:
                break
        return dy

    def _fused(self):
        """How a final softmax/sigmoid is fused with the loss: None, "layer" or "activation".

        Softmax + :class:`~cconv.losses.SoftmaxCrossEntropy` and sigmoid +
        :class:`~cconv.losses.BinaryCrossEntropy` (both from logits, their default) are fused:
        the loss gets the logits.
        """
        from . import layers, losses
        if not self.layers or not getattr(self.loss, "from_logits", False):
            return None
        if isinstance(self.loss, losses.SoftmaxCrossEntropy):
            cls = layers.Softmax
        elif isinstance(self.loss, losses.BinaryCrossEntropy):
            cls = layers.Sigmoid
        else:
            return None
        last = self.layers[-1]
        if isinstance(last, cls):
            return "layer"
        if isinstance(getattr(last, "activation", None), cls):
            return "activation"
        return None

    def _forward_loss_input(self, x, training, cache=None):
        """Forward to what the loss takes: logits when the softmax is fused, else the output.

        With a fused softmax *activation* the last layer runs with ``apply_activation=False``,
        which also makes its next ``backward`` skip the activation.
        """
        fused = self._fused()
        layers = self.layers[:-1] if fused == "layer" else self.layers
        last = len(layers) - 1
        for i, layer in enumerate(layers):
            if i == last and fused == "activation":
                x = layer.forward(x, training=training, cache=cache, apply_activation=False)
            else:
                x = layer.forward(x, training=training, cache=cache)
        return x

    def _backward_from_loss(self, dz):
        """Backward from the gradient w.r.t. what :meth:`_forward_loss_input` returned."""
        layers = self.layers[:-1] if self._fused() == "layer" else self.layers
        for layer in reversed(layers):
            dz = layer.backward(dz)
            if dz is None:
                break
        return dz

    # ------------------------------------------------------------------ targets
    def _check_y(self, y, n, name="y"):
        """Validate targets for the compiled loss against ``n`` samples."""
        from . import losses
        if isinstance(y, (list, tuple)):
            y = np.asarray(y)
        if not isinstance(y, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(y).__name__}")
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(f"x and {name} have different numbers of samples: {n} and "
                             f"{y.shape[0] if y.ndim else 'a scalar'} (x has shape (N, ...), {name} {y.shape})")
        out_shape = self.output_shape
        if isinstance(self.loss, losses.SoftmaxCrossEntropy):
            k = out_shape[-1]
            if y.ndim == 1:
                if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)
                        or y.dtype == np.bool_):
                    raise TypeError(f"{name} must hold integer class labels or one-hot rows, got dtype {y.dtype}")
                if not np.issubdtype(y.dtype, np.integer):
                    if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
                        raise ValueError(f"{name} holds non-integer values; class labels must be integers 0..{k - 1}")
                    y = y.astype(np.int64)
                if y.size and (y.min() < 0 or y.max() >= k):
                    bad = y[(y < 0) | (y >= k)]
                    raise ValueError(f"{name} has labels out of range: the model has {k} output classes (labels "
                                     f"0..{k - 1}), got {np.unique(bad)[:5].tolist()}")
                return y.astype(np.int64, copy=False)
            if y.shape[1:] != out_shape:
                raise ValueError(f"one-hot {name} must have shape (N, {k}), got {y.shape}")
            return y
        if y.shape[1:] != out_shape:
            if y.ndim == 1 and out_shape == (1,):
                return y.reshape(-1, 1)
            if y.ndim == 1 and np.issubdtype(y.dtype, np.integer) and len(out_shape) == 1:
                k = out_shape[0]
                if y.size and (y.min() < 0 or y.max() >= k):
                    raise ValueError(f"{name} has labels out of range for {k} outputs: "
                                     f"{np.unique(y[(y < 0) | (y >= k)])[:5].tolist()}")
                return y
            raise ValueError(f"{name} has shape {y.shape}, but the model's output is {_shape_str(out_shape)}")
        return y

    def _metric_values(self, out, yb):
        """Metrics of a batch from what the loss received (logits when fused)."""
        from . import losses
        vals = {}
        if "accuracy" in self.metrics and out.ndim == 2:   # classification-shaped outputs only
            threshold = 0.0 if self._fused() or (isinstance(self.loss, losses.BinaryCrossEntropy)
                                                 and self.loss.from_logits) else 0.5
            vals["accuracy"] = float(losses.accuracy(out, yb, threshold=threshold))
        return vals

    # ------------------------------------------------------------------ training
    def train_on_batch(self, x, y):
        """One optimisation step on a batch; returns ``{"loss": ..., "accuracy": ...}``.

        Raises
        ------
        NonFiniteLossError
            The loss is NaN or infinite (the weights are not updated).
        """
        self._require_compiled("train_on_batch()")
        x = self._check_x(x)
        y = self._check_y(y, x.shape[0])
        logs, finite = self._train_step(self._as_batch(x), y)
        if not finite:
            raise NonFiniteLossError(f"non-finite loss ({logs['loss']}) in train_on_batch; the weights were not updated",
                                     loss=logs["loss"])
        return logs

    def _train_step(self, xb, yb, nonfinite_hook=None):
        out = self._forward_loss_input(xb, training=True)
        loss = float(self.loss(out, yb))
        logs = {"loss": loss}
        if not math.isfinite(loss):
            return logs, False
        logs.update(self._metric_values(out, yb))
        self._backward_from_loss(self.loss.backward())
        self.optimizer.step()
        return logs, True

    def fit(self, x, y, epochs=1, batch_size=32, validation_split=0.0, validation_data=None, shuffle=True,
            callbacks=None, verbose=1, checkpoint=None, resume=None):
        """Train the model.

        Parameters
        ----------
        x : ndarray of shape (N, *input_shape)
        y : ndarray
            Integer labels ``(N,)`` or one-hot ``(N, K)`` for the cross-entropy; targets of
            the output's shape for the other losses.
        epochs : int, default 1
            Total number of epochs (including those done before a ``resume``).
        batch_size : int, default 32
        validation_split : float in [0, 1), default 0.0
            Fraction of the samples, taken from the end of ``x`` before shuffling, held out
            for validation.
        validation_data : tuple (x_val, y_val), optional
            Overrides ``validation_split``.
        shuffle : bool, default True
            Reshuffle the training samples every epoch (from the model's seed).
        callbacks : list of Callback, optional
        verbose : {0, 1, 2}, default 1
            0 silent, 1 progress bar, 2 one line per epoch.
        checkpoint : str or os.PathLike, optional
            After every epoch, atomically save the model, the optimizer, the RNG states,
            the epoch and the history there.
        resume : str, os.PathLike or True, optional
            Continue from a checkpoint written by ``fit(checkpoint=...)``; the final weights
            are the same as those of an uninterrupted run (same seed, data and thread
            count). ``True`` means: resume from ``checkpoint`` if that file exists, else
            start from the beginning.

        Returns
        -------
        History

        Raises
        ------
        ValueError
            Model not compiled; x/y shapes or lengths that do not fit the model; labels out
            of range; a resume file for a different model.
        NonFiniteLossError
            The loss became NaN or infinite (the message names the epoch and the batch);
            pass ``callbacks=[cconv.callbacks.SkipNonFinite()]`` to skip such batches.
        """
        self._require_compiled("fit()")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        epochs = int(epochs)
        batch_size = _check_batch_size(batch_size)
        if verbose not in (0, 1, 2, True, False):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        x = self._check_x(x)
        y = self._check_y(y, x.shape[0])
        if x.shape[0] == 0:
            raise ValueError("x is empty: fit needs at least one sample")

        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise ValueError("validation_data must be a tuple (x_val, y_val)")
            xv = self._check_x(validation_data[0], "validation_data[0]")
            yv = self._check_y(validation_data[1], xv.shape[0], "validation_data[1]")
        elif validation_split:
            if not (0.0 <= float(validation_split) < 1.0):
                raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
            n_val = int(x.shape[0] * float(validation_split))
            if n_val == 0 or n_val == x.shape[0]:
                raise ValueError(f"validation_split={validation_split} of {x.shape[0]} samples leaves "
                                 f"{n_val} for validation and {x.shape[0] - n_val} for training")
            x, xv = x[:-n_val], x[-n_val:]
            y, yv = y[:-n_val], y[-n_val:]
        else:
            xv = yv = None

        cbs = list(callbacks or [])
        for cb in cbs:
            if not isinstance(cb, _callbacks.Callback):
                raise TypeError(f"callbacks must be cconv.callbacks.Callback instances, got {type(cb).__name__}")
        history = History()
        cbs.append(history)

        if checkpoint is not None:
            ckpt_dir = os.path.dirname(os.path.abspath(os.fspath(checkpoint)))
            if not os.path.isdir(ckpt_dir):
                raise FileNotFoundError(f"checkpoint directory {ckpt_dir!r} does not exist")
        if resume is True:
            if checkpoint is None:
                raise ValueError("resume=True needs checkpoint= (the file to resume from)")
            resume = checkpoint if os.path.exists(os.fspath(checkpoint)) else None
        start_epoch = 0
        self.stop_training = False
        self._resumed_epoch = 0
        if resume is not None:
            start_epoch = self._restore_training(resume, x, y, batch_size, shuffle, history, cbs)
            self._resumed_epoch = start_epoch

        n = x.shape[0]
        steps = (n + batch_size - 1) // batch_size
        params = {"epochs": epochs, "steps": steps, "batch_size": batch_size, "samples": n, "verbose": verbose}
        for cb in cbs:
            cb.set_model(self)
            cb.set_params(params)
        self.history = history
        for cb in cbs:
            cb.on_train_begin()

        try:
            epoch = start_epoch
            while epoch < epochs and not self.stop_training:
                logs = self._run_epoch(x, y, epoch, epochs, batch_size, shuffle, cbs, verbose, xv, yv)
                epoch += 1
                if checkpoint is not None:
                    self._save_checkpoint(checkpoint, epoch, epochs, x, y, batch_size, shuffle, history, cbs)
        finally:
            for cb in cbs:
                cb.on_train_end()
        return history

    def _run_epoch(self, x, y, epoch, epochs, batch_size, shuffle, cbs, verbose, xv, yv):
        n = x.shape[0]
        steps = (n + batch_size - 1) // batch_size
        for cb in cbs:
            cb.on_epoch_begin(epoch)
        order = self._fit_rng.permutation(n) if shuffle else None
        bar = ProgressBar(steps, epoch + 1, epochs, interactive=None if verbose == 1 else False) if verbose else None
        sums = {}
        seen = 0
        for b in range(steps):
            lo, hi = b * batch_size, min((b + 1) * batch_size, n)
            if order is None:
                xb, yb = x[lo:hi], y[lo:hi]
            else:
                idx = order[lo:hi]
                xb, yb = x[idx], y[idx]
            for cb in cbs:
                cb.on_batch_begin(b)
            logs, finite = self._train_step(self._as_batch(xb), yb)
            if not finite:
                skip = False
                for cb in cbs:
                    skip = bool(cb.on_nonfinite_loss(epoch, b, logs["loss"])) or skip
                if not skip:
                    if bar is not None:
                        bar.finish()
                    raise NonFiniteLossError(
                        f"the loss is {logs['loss']} at epoch {epoch + 1}/{epochs}, batch {b + 1}/{steps}; training "
                        "stopped before updating the weights with it. Try a lower learning rate, check the inputs "
                        "for NaN/inf, or pass callbacks=[cconv.callbacks.SkipNonFinite()] to skip such batches",
                        epoch=epoch + 1, batch=b + 1, loss=logs["loss"])
            else:
                m = hi - lo
                seen += m
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v * m
            running = {k: v / seen for k, v in sums.items()} if seen else {}
            for cb in cbs:
                cb.on_batch_end(b, dict(running, size=hi - lo))
            if bar is not None:
                bar.update(b + 1, hi, running)
        epoch_logs = {k: v / seen for k, v in sums.items()} if seen else {"loss": float("nan")}
        if xv is not None:
            val = self._evaluate_arrays(xv, yv, batch_size)
            epoch_logs.update({f"val_{k}": v for k, v in val.items()})
        for cb in cbs:
            cb.on_epoch_end(epoch, epoch_logs)
        if bar is not None:
            bar.finish(epoch_logs)
        return epoch_logs

    # ------------------------------------------------------------------ checkpoints
    def _training_state(self, epoch, epochs, x, y, batch_size, shuffle, history, cbs):
        gens = {}
        for layer in self.layers:
            g = _layer_generators(layer)
            if g:
                gens[layer.name] = {k: v.bit_generator.state for k, v in g.items()}
        return {
            "epoch": epoch,
            "epochs": epochs,
            "stop_training": bool(self.stop_training),
            "fit_rng": self._fit_rng.bit_generator.state,
            "build_rng": self._build_rng.bit_generator.state,
            "layer_rngs": gens,
            "history": history.history,
            "data": {"x_shape": list(x.shape), "y_shape": list(y.shape), "batch_size": batch_size,
                     "shuffle": bool(shuffle)},
            "callbacks": [{"class_name": type(cb).__name__, "state": cb.state_dict()}
                          for cb in cbs if not isinstance(cb, History)],
        }

    def _save_checkpoint(self, path, epoch, epochs, x, y, batch_size, shuffle, history, cbs):
        state = self._training_state(epoch, epochs, x, y, batch_size, shuffle, history, cbs)
        _io.save_model(self, path, include_optimizer=True, training_state=state)

    def _restore_training(self, path, x, y, batch_size, shuffle, history, cbs):
        path = os.fspath(path)
        document, arrays, state = _io.load_training_state(path)
        if state is None:
            raise ValueError(f"{path!r} is a saved model, not a training checkpoint: write one with "
                             "fit(..., checkpoint=path)")
        mine = json.loads(json.dumps(self.get_config()["layers"]))
        theirs = (document.get("model") or {}).get("layers")
        if mine != theirs:
            raise ValueError(f"cannot resume from {path!r}: it was written by a model with a different architecture")
        data = state.get("data", {})
        now = {"x_shape": list(x.shape), "y_shape": list(y.shape), "batch_size": batch_size, "shuffle": bool(shuffle)}
        diffs = [f"{k}: checkpoint {data.get(k)!r}, now {v!r}" for k, v in now.items() if data.get(k) != v]
        if diffs:
            raise ValueError(f"cannot resume from {path!r}: fit was called differently ({'; '.join(diffs)}); "
                             "an exact continuation needs the same data and settings")
        saved_opt = ((document.get("compile") or {}).get("optimizer") or {}).get("class_name")
        if saved_opt is not None and saved_opt != type(self.optimizer).__name__:
            raise ValueError(f"cannot resume from {path!r}: it was trained with {saved_opt}, this model is "
                             f"compiled with {type(self.optimizer).__name__}")
        _io.assign_weights(self, _io._collect_layer_arrays(document, arrays, path), path)
        if document.get("optimizer_state") is not None:
            self.optimizer.load_state_dict(_io._join_tree(document["optimizer_state"], arrays))
        self._fit_rng.bit_generator.state = state["fit_rng"]
        self._build_rng.bit_generator.state = state["build_rng"]
        for layer in self.layers:
            for attr, st in state.get("layer_rngs", {}).get(layer.name, {}).items():
                getattr(layer, attr).bit_generator.state = st
        for k, v in state.get("history", {}).items():
            history.history[k] = list(v)
        history.epoch = list(range(int(state["epoch"])))
        saved_cbs = state.get("callbacks", [])
        mine_cbs = [cb for cb in cbs if not isinstance(cb, History)]
        for cb, saved in zip(mine_cbs, saved_cbs):
            if type(cb).__name__ == saved.get("class_name"):
                cb.load_state_dict(saved.get("state", {}))
        self.stop_training = bool(state.get("stop_training", False))
        return int(state["epoch"])

    # ------------------------------------------------------------------ inference
    def _evaluate_arrays(self, x, y, batch_size):
        n = x.shape[0]
        sums = {}
        for lo in range(0, n, batch_size):
            xb, yb = self._as_batch(x[lo:lo + batch_size]), y[lo:lo + batch_size]
            out = self._forward_loss_input(xb, training=False)
            m = xb.shape[0]
            sums["loss"] = sums.get("loss", 0.0) + float(self.loss(out, yb)) * m
            for k, v in self._metric_values(out, yb).items():
                sums[k] = sums.get(k, 0.0) + v * m
        return {k: v / n for k, v in sums.items()} if n else {}

    def evaluate(self, x, y, batch_size=32, verbose=0):
        """Loss and metrics on ``(x, y)`` in inference mode.

        Returns
        -------
        dict
            ``{"loss": float, "accuracy": float}``.
        """
        self._require_compiled("evaluate()")
        batch_size = _check_batch_size(batch_size)
        x = self._check_x(x)
        y = self._check_y(y, x.shape[0])
        if x.shape[0] == 0:
            raise ValueError("x is empty: evaluate needs at least one sample")
        res = self._evaluate_arrays(x, y, batch_size)
        if verbose:
            print("  ".join(f"{k} {v:.4f}" for k, v in res.items()))
        return res

    def predict(self, x, batch_size=32):
        """Outputs of the whole network in inference mode (probabilities if it ends with a softmax).

        Returns
        -------
        ndarray of shape (N, *output_shape)
        """
        batch_size = _check_batch_size(batch_size)
        x = self._check_x(x)
        out = np.empty((x.shape[0],) + self.output_shape, dtype=self.dtype)
        for lo in range(0, x.shape[0], batch_size):
            out[lo:lo + batch_size] = self.forward(x[lo:lo + batch_size], training=False)
        return out

    def activations(self, x):
        """Every layer's output for ``x`` in inference mode.

        Returns
        -------
        dict of str to ndarray
            Layer name -> output of shape ``(N, *layer_output_shape)``, in layer order.
        """
        x = self._as_batch(self._check_x(x))
        out = {}
        for layer in self.layers:
            x = layer.forward(x, training=False)
            out[layer.name] = x
        return out

    def input_gradient(self, x, y=None, loss=None, output_index=None):
        """Gradient of a scalar with respect to the input, in inference mode.

        Parameters
        ----------
        x : ndarray of shape (N, *input_shape)
        y : ndarray, optional
            Targets for the loss (needed unless ``output_index`` is given).
        loss : str or loss object, optional
            Defaults to the compiled loss. The loss is a batch mean, so each sample's
            gradient is divided by N.
        output_index : int or tuple of int, optional
            Instead of a loss, differentiate the sum over the batch of this output unit
            (e.g. a class score; the index is into the output without the batch dim).

        Returns
        -------
        ndarray of x's shape, in the model's dtype

        Notes
        -----
        Parameters, their gradients, layer state (BatchNorm statistics) and random
        generators are left exactly as they were.
        """
        from . import losses
        x = self._as_batch(self._check_x(x))
        if output_index is None:
            if y is None:
                raise ValueError("input_gradient needs y (targets for the loss) or output_index")
            if loss is None:
                self._require_compiled("input_gradient() without loss=")
                loss_obj = self.loss
            else:
                loss_obj = self._make_loss(loss, losses)
        with self._preserved_state():
            saved_loss = self.loss
            try:
                if output_index is None:
                    self.loss = loss_obj
                    y = self._check_y(y, x.shape[0])
                    out = self._forward_for_grad(x, fused=True)
                    loss_obj(out, y)
                    dz = self._backward_for_grad(loss_obj.backward(), fused=True)
                else:
                    out = self._forward_for_grad(x, fused=False)
                    idx = output_index if isinstance(output_index, tuple) else (output_index,)
                    try:
                        np.zeros(self.output_shape)[idx]
                    except IndexError:
                        raise ValueError(f"output_index {output_index!r} is out of range for output shape "
                                         f"{self.output_shape}") from None
                    dy = np.zeros_like(out)
                    dy[(slice(None),) + idx] = 1.0
                    dz = self._backward_for_grad(dy, fused=False)
            finally:
                self.loss = saved_loss
        return dz

    def _forward_for_grad(self, x, fused):
        # the inference-mode function, with every layer caching for backward
        if fused:
            return self._forward_loss_input(x, training=False, cache=True)
        for layer in self.layers:
            x = layer.forward(x, training=False, cache=True)
        return x

    def _backward_for_grad(self, dy, fused):
        if fused:
            return self._backward_from_loss(dy)
        return self.backward(dy)

    @contextlib.contextmanager
    def _preserved_state(self):
        """Snapshot grads, layer state and RNGs; let the first layer compute dx; restore after."""
        grads = [(g, g.copy()) for l in self.layers for g in l.grads.values()]
        states = [(s, s.copy()) for l in self.layers for s in getattr(l, "state", {}).values()]
        rngs = [(g, g.bit_generator.state) for l in self.layers for g in _layer_generators(l).values()]
        flags = [(l, l.need_input_grad) for l in self.layers]
        for l in self.layers:
            l.need_input_grad = True
        try:
            yield
        finally:
            for dst, src in grads + states:
                np.copyto(dst, src)
            for g, st in rngs:
                g.bit_generator.state = st
            for l, f in flags:
                l.need_input_grad = f

    # ------------------------------------------------------------------ persistence
    def save(self, path, include_optimizer=True):
        """Save architecture, weights, layer state and (by default) optimizer state to one file.

        The file is an ``.npz`` that never executes code when loaded (see :mod:`cconv.io`);
        the write is atomic. Load it with :func:`cconv.load_model`.
        """
        _io.save_model(self, path, include_optimizer=include_optimizer)

    def load_weights(self, path):
        """Load weights and layer state from a file saved by :meth:`save` into this model.

        Raises ValueError naming every array whose shape does not match.
        """
        self._require_built("load_weights()")
        document, arrays = _io.read_file(path)
        _io.assign_weights(self, _io._collect_layer_arrays(document, arrays, os.fspath(path)), os.fspath(path))

    def get_weights(self):
        """Copies of every parameter and state array, in layer order."""
        return [a.copy() for l in self.layers for a in list(l.params.values()) + list(getattr(l, "state", {}).values())]

    def set_weights(self, weights):
        """Inverse of :meth:`get_weights` (values are copied into the existing buffers)."""
        targets = [a for l in self.layers for a in list(l.params.values()) + list(getattr(l, "state", {}).values())]
        if len(weights) != len(targets):
            raise ValueError(f"set_weights expects {len(targets)} arrays, got {len(weights)}")
        for i, (t, w) in enumerate(zip(targets, weights)):
            w = np.asarray(w)
            if w.shape != t.shape:
                raise ValueError(f"weight {i} has shape {w.shape}, expected {t.shape}")
        for t, w in zip(targets, weights):
            np.copyto(t, w, casting="unsafe")


def load_model(path, compile=True, custom_objects=None):
    """Load a model saved with :meth:`Sequential.save` (see :func:`cconv.io.load_model`)."""
    return _io.load_model(path, compile=compile, custom_objects=custom_objects)
