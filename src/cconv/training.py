"""The training engine: compile, fit, evaluate, predict and train_on_batch for any
:class:`cconv.Model` (a :class:`cconv.Sequential` is one).

It uses only a model's public interface: ``run`` / ``run_backward`` (the forward and
backward passes on lists of arrays), ``final_activation``, ``parameters``, the inputs and
outputs, and the compiled ``optimizer``/``loss``. Gradients with respect to the inputs
(:mod:`cconv.gradients`) and gradcheck use :func:`loss_and_gradients` from here, so they
differentiate exactly what training minimises.

Softmax and cross-entropy
-------------------------
When an output ends with a softmax (a ``Softmax`` layer, or ``activation="softmax"`` on
its last layer) and its loss is :class:`cconv.losses.SoftmaxCrossEntropy` (which takes
probabilities, the default), training and ``evaluate`` leave that softmax out and give the
logits to ``loss.with_logits()``, whose fused gradient ``(softmax(z) - onehot) / N`` is
exact and stable; a final sigmoid with :class:`cconv.losses.BinaryCrossEntropy` likewise.
``predict`` and ``forward`` always apply the whole network, so they return probabilities.

Data
----
``x`` is an array (a list or dict of arrays for several inputs) with ``y`` beside it, or a
source of batches: a :class:`cconv.data.Dataset` (or any object with a ``batches(epoch)``
method returning the batches of that epoch), an object with ``__len__`` and
``__getitem__`` returning batches (a list of batches, Keras's ``PyDataset``), or any
iterable or generator of batches. A batch is ``(x, y)`` or ``(x, y, sample_weight)`` (``x``
alone for ``predict``). Each batch is checked against the model as arrays are; an error
names the batch and the epoch, and an exception raised by the data is raised again with
that position.

Sample and class weights
------------------------
``sample_weight`` (one non-negative weight per sample) multiplies each sample's loss; the
batch loss is ``sum(w_i L_i) / N`` (Keras's convention: zeros remove samples, the divisor
stays the batch size). ``class_weight={class: weight}`` sets each sample's weight from its
label (classes not listed weigh 1). Metrics are not weighted.

Several outputs
---------------
One loss per output (a single loss is used for all); the training loss is the sum of the
outputs' losses times ``loss_weights`` (default 1). Logs then hold ``"loss"`` (that sum),
and per output ``"<name>_loss"`` and ``"<name>_accuracy"``, named after the layer that
makes the output.
"""
import contextlib
import copy
import inspect
import math
import os

import numpy as np

from . import _config
from . import _validate as V
from . import callbacks as _callbacks
from . import checkpoint as _checkpoint
from . import losses as _losses
from . import metrics as _metrics
from . import optim as _optim
from ._interrupts import deferred_signals
from ._progress import ProgressBar

__all__ = ["History", "NonFiniteLossError", "compile", "fit", "evaluate", "predict",
           "train_on_batch", "input_arrays", "target_arrays", "LossPlan", "loss_and_gradients"]


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
        ``val_accuracy``. With ``validation_freq`` the ``val_*`` lists hold only the
        epochs that were validated (as Keras).
    epoch : list of int
        0-based epoch indices that were run.
    params : dict
        ``epochs``, ``steps`` (None when unknown), ``batch_size``, ``samples``, ``verbose``,
        ``initial_epoch``.
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
# compile
# --------------------------------------------------------------------------------------
def _make_optimizer(optimizer):
    if isinstance(optimizer, (str, dict, _optim.Optimizer)) or (
            isinstance(optimizer, type) and issubclass(optimizer, _optim.Optimizer)):
        return _optim.get(optimizer)
    if isinstance(optimizer, type) or not (hasattr(optimizer, "attach") and hasattr(optimizer, "step")):
        raise TypeError(f"optimizer must be a name or a cconv.optim optimizer, got {optimizer!r}")
    return optimizer


def make_loss(loss):
    """A ``loss=`` argument (name, Loss instance or class, serialized dict) as a loss object."""
    if isinstance(loss, (str, dict, _losses.Loss)) or (isinstance(loss, type) and issubclass(loss, _losses.Loss)):
        return _losses.get(loss)
    if isinstance(loss, type) or not (callable(loss) and hasattr(loss, "backward")):
        raise TypeError(f"loss must be a name or a cconv.losses object, got {loss!r}")
    return loss


def _by_name(d, names, what):
    """The values of the dict ``d`` in the order of ``names`` (it must have exactly those keys)."""
    unknown = sorted(set(d) - set(names))
    missing = [n for n in names if n not in d]
    if unknown or missing:
        raise ValueError(f"{what} must have one entry per name in {names}; unknown {unknown}, missing {missing}")
    return [d[n] for n in names]


def _per_output(model, value, what, convert):
    """A list (one per output) from a list, or a dict by output name."""
    if isinstance(value, dict):
        if not model.built:
            raise ValueError(f"{what} given by output name needs a built model")
        value = _by_name(value, model.output_names, what)
    return [convert(v) for v in value]


def compile(model, optimizer="adam", loss="categorical_crossentropy", metrics=("accuracy",),
            loss_weights=None):
    """Set ``model.optimizer``, ``model.loss``, ``model.loss_weights``, ``model.metrics``
    (see :meth:`cconv.Model.compile`)."""
    opt_obj = _make_optimizer(optimizer)
    if isinstance(loss, (list, tuple, dict)):
        loss_obj = _per_output(model, loss, "loss", make_loss)
    else:
        loss_obj = make_loss(loss)
    if loss_weights is not None:
        if not isinstance(loss_weights, (list, tuple, dict)):
            raise TypeError(f"loss_weights must be a list or a dict by output name, got {loss_weights!r}")
        loss_weights = _per_output(model, loss_weights, "loss_weights",
                                   lambda w: V.number(w, "loss_weights", low=0.0))
    if isinstance(metrics, (str, _metrics.Metric)):
        metrics = (metrics,)
    ms, names = [], set()
    for m in metrics or ():
        spec = _metrics.serialize(m)
        name = _metrics.get(spec).name
        if name not in names:
            ms.append(spec)
            names.add(name)
    model.optimizer, model.loss, model.loss_weights, model.metrics = opt_obj, loss_obj, loss_weights, tuple(ms)
    model.compiled = True
    if model.built:
        LossPlan(model)                       # refuses a double softmax now rather than in fit
        model.optimizer.attach(model.parameters())


class _AccuracyOf:
    """A loss object that is not a :class:`cconv.losses.Loss`, with the accuracy a Loss
    would compute for it."""

    def __init__(self, loss):
        self.loss = loss
        self.from_logits = getattr(loss, "from_logits", False)

    def accuracy(self, pred, y):
        fn = getattr(self.loss, "accuracy", None)
        return fn(pred, y) if fn is not None else _losses.Loss.accuracy(self.loss, pred, y)


def _require_compiled(model, what):
    if not model.compiled:
        raise ValueError(f"model must be compiled before {what}: call model.compile(optimizer, loss) first")


class LossPlan:
    """What training computes for each output: the loss object it calls (the compiled one,
    or its ``with_logits()`` form when the output's final activation is fused with it),
    whether the model returns that output before its final activation, the weight, the
    metrics (accumulated until :meth:`reset_metrics`) and the log names."""

    def __init__(self, model, loss=None, loss_weights=None):
        n = len(model.outputs)
        if loss is None:
            loss, loss_weights = model.loss, model.loss_weights
        losses = list(loss) if isinstance(loss, list) else [loss] * n
        if len(losses) != n:
            raise ValueError(f"the model has {n} outputs {model.output_names} but {len(losses)} losses")
        weights = [1.0] * n if loss_weights is None else list(loss_weights)
        if len(weights) != n:
            raise ValueError(f"the model has {n} outputs but {len(weights)} loss_weights")
        self.losses, self.pre_activation, self.weights = [], [], list(weights)
        for i, lo in enumerate(losses):
            act = model.final_activation(i)
            fuses = getattr(lo, "fuses_with", None)
            if fuses is not None and act == fuses:
                if lo.from_logits:
                    raise ValueError(
                        f"output {model.output_names[i]!r} ends with a {act}, and its loss "
                        f"{type(lo).__name__}(from_logits=True) would apply the {act} again: use "
                        f"from_logits=False (the default; training still uses the logits), or "
                        f"remove the final {act}")
                self.losses.append(lo.with_logits())
                self.pre_activation.append(True)
            else:
                self.losses.append(lo)
                self.pre_activation.append(False)
        specs = getattr(model, "metrics", ())
        self.metric_objects = [[_metrics.get(m) for m in specs] for _ in range(n)]
        self.names = ([""] if n == 1 else [f"{name}_" for name in model.output_names])
        self.loss_keys = ["loss"] + [f"{name}loss" for name in self.names if name]

    def values(self, outs, ys, sample_weight=None):
        """Call every loss: (weighted total, logs with the per-output losses)."""
        total, logs = 0.0, {}
        for lo, w, name, out, y in zip(self.losses, self.weights, self.names, outs, ys):
            v = float(lo(out, y) if sample_weight is None else lo(out, y, sample_weight=sample_weight))
            total += v if w == 1.0 else w * v
            if name:
                logs[f"{name}loss"] = v
        return total, dict({"loss": total}, **logs)

    def reset_metrics(self):
        for ms in self.metric_objects:
            for m in ms:
                m.reset()

    def metrics(self, outs, ys):
        """Add a batch to the metrics; return their values over everything since
        :meth:`reset_metrics`."""
        for lo, out, y, ms in zip(self.losses, outs, ys, self.metric_objects):
            if not isinstance(lo, _losses.Loss):
                lo = _AccuracyOf(lo)
            for m in ms:
                m.update(out, y, loss=lo)
        return self.metric_values()

    def metric_values(self, parts=None):
        """The metrics' values: over the samples given to this plan since
        :meth:`reset_metrics`, or over those of ``parts``, a list of plans'
        ``metric_objects`` (e.g. every process's), merged in order."""
        vals = {}
        objects = self.metric_objects
        if parts is not None:
            objects = [[_metrics.merged([p[i][j] for p in parts]) for j in range(len(ms))]
                       for i, ms in enumerate(objects)]
        for name, ms in zip(self.names, objects):
            for m in ms:
                r = m.result()
                if r is not None:
                    vals[f"{name}{m.name}"] = float(r)
        return vals

    def gradients(self):
        """The gradient with respect to each output (after :meth:`values`)."""
        out = []
        for lo, w in zip(self.losses, self.weights):
            g = lo.backward()
            out.append(g if w == 1.0 else g * g.dtype.type(w))
        return out


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
def _shape_str(shape):
    return "(" + ", ".join(["None"] + [str(s) for s in shape]) + ")"


def input_arrays(model, x, name="x"):
    """``x`` as a list of arrays, one per model input, each checked against its input's
    shape (a Sequential not built yet is built from the array's shape).

    ``x`` is an array for a single input, or a list (in ``model.inputs`` order) or dict (by
    input name) of arrays.
    """
    if type(x) is np.ndarray and model.built and x.dtype.kind in "fiu":
        inputs = model.inputs
        if len(inputs) == 1 and x.shape[1:] == inputs[0].shape[1:]:
            return [x]          # the common case, checked quickly: one array that fits
    n_in = len(model.inputs) if model.built else 1
    if isinstance(x, dict):
        if not model.built:
            raise ValueError(f"{name} given by input name needs a built model")
        names = model.input_names
        items = list(zip(_by_name(x, names, name), [f"{name}[{k!r}]" for k in names]))
    elif isinstance(x, (list, tuple)) and (n_in > 1 or (x and all(isinstance(a, np.ndarray) for a in x))):
        if len(x) != n_in:
            names = model.input_names if model.built else ["input"]
            hint = "" if n_in > 1 else " (to pass samples, stack them into one array: np.stack(x))"
            raise ValueError(f"the model has {n_in} input{'s' if n_in > 1 else ''} {names}, but {name} "
                             f"is a list of {len(x)} arrays{hint}")
        items = [(a, f"{name}[{i}]" if n_in > 1 else name) for i, a in enumerate(x)]
    else:
        items = [(x, name)]
    out = []
    for i, (a, label) in enumerate(items):
        if isinstance(a, (list, tuple)):
            a = np.asarray(a)
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{label} must be a numpy array, got {type(a).__name__}")
        if a.dtype.kind not in "biuf":       # booleans, integers and real floats
            raise TypeError(f"{label} must hold real numbers, got dtype {a.dtype}")
        if not model.built:
            if a.ndim < 2:
                raise ValueError(f"{label} must have a batch dimension first, got shape {a.shape}")
            model.build(a.shape[1:])
        expected = model.inputs[i].shape[1:]
        if a.shape[1:] != expected:
            raise ValueError(f"{label} has shape {a.shape}, but the model takes {_shape_str(expected)} "
                             f"(batch first, then {expected})")
        out.append(a)
    if len({a.shape[0] for a in out}) > 1:
        raise ValueError(f"the arrays of {name} have different numbers of samples: "
                         f"{[a.shape[0] for a in out]}")
    return out


def target_arrays(model, y, n, name="y", plan_losses=None):
    """``y`` as a list of target arrays, one per output, each checked by its loss against
    ``n`` samples and the output's shape. ``y`` is an array for a single output, or a list /
    dict (by output name) of them."""
    n_out = len(model.outputs)
    if y is None:
        raise ValueError(f"{name} is missing: training and evaluation need targets (pass y, or "
                         f"batches of (x, y))")
    if isinstance(y, dict):
        names = model.output_names
        items = list(zip(_by_name(y, names, name), [f"{name}[{k!r}]" for k in names]))
    elif n_out > 1:
        if not isinstance(y, (list, tuple)) or len(y) != n_out:
            got = f"a list of {len(y)}" if isinstance(y, (list, tuple)) else type(y).__name__
            raise ValueError(f"the model has {n_out} outputs {model.output_names}: {name} must be a list "
                             f"or dict of {n_out} arrays, got {got}")
        items = [(a, f"{name}[{i}]") for i, a in enumerate(y)]
    else:
        items = [(y, name)]
    losses = plan_losses if plan_losses is not None else LossPlan(model).losses
    out = []
    for (a, label), lo, t in zip(items, losses, model.outputs):
        if isinstance(a, (list, tuple)):
            a = np.asarray(a)
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{label} must be a numpy array, got {type(a).__name__}")
        if a.ndim == 0 or a.shape[0] != n:
            xs = "x and " + label
            raise ValueError(f"{xs} have different numbers of samples: {n} and "
                             f"{a.shape[0] if a.ndim else 'a scalar'} (x has shape (N, ...), {label} {a.shape})")
        check = getattr(lo, "check_target", None)
        out.append(check(a, t.shape[1:], label) if check is not None
                   else _losses.Loss.check_target(lo, a, t.shape[1:], label))
    return out


def class_weights(class_weight, ys, name="class_weight"):
    """Per-sample weights from ``{class: weight}`` and the (checked) targets of a
    single-output model: integer labels, or the argmax of one-hot rows (classes not in the
    dict weigh 1)."""
    if len(ys) != 1:
        raise ValueError(f"{name} needs a model with one output; with several outputs pass "
                         f"sample_weight")
    y = np.asarray(ys[0])
    if y.ndim == 2 and y.shape[1] > 1:
        labels = np.argmax(y, axis=1)
    else:
        labels = np.rint(y.reshape(len(y))).astype(np.int64)
    w = np.ones(len(labels))
    for c, v in class_weight.items():
        w[labels == c] = v
    return w


def _check_class_weight(class_weight):
    if class_weight is None:
        return None
    if not isinstance(class_weight, dict):
        raise TypeError(f"class_weight must be a dict {{class index: weight}}, got {type(class_weight).__name__}")
    out = {}
    for k, v in class_weight.items():
        k = V.non_negative_int(k, "class_weight key")
        out[k] = V.number(v, f"class_weight[{k}]", low=0.0)
    return out


def _batch(model, arrays, index):
    return [np.ascontiguousarray(a[index], dtype=model.dtype) for a in arrays]


def _take(arrays, index):
    return [a[index] for a in arrays]


def _is_arrays(x):
    """Whether ``x`` holds arrays (an array, a list / tuple / dict of arrays) rather than batches."""
    if isinstance(x, np.ndarray):
        return True
    if isinstance(x, dict):
        return True
    if isinstance(x, (list, tuple)):
        return bool(x) and all(isinstance(a, np.ndarray) for a in x)
    return False


class _Arrays:
    """Samples held in arrays, cut into batches here (shuffled with the model's generator)."""

    def __init__(self, xs, ys, sw, batch_size, shuffle):
        self.xs, self.ys, self.sw = xs, ys, sw
        self.batch_size, self.shuffle = batch_size, shuffle
        self.samples = xs[0].shape[0]
        self.steps = -(-self.samples // batch_size)

    def split(self, fraction):
        """``(training, validation)``: the last ``fraction`` of the samples held out."""
        n = self.samples
        n_val = int(n * fraction)
        if n_val == 0 or n_val == n:
            raise ValueError(f"validation_split={fraction} of {n} samples leaves "
                             f"{n_val} for validation and {n - n_val} for training")
        tr, va = slice(None, -n_val), slice(-n_val, None)
        sw = (None, None) if self.sw is None else (self.sw[tr], self.sw[va])
        return (_Arrays(_take(self.xs, tr), _take(self.ys, tr), sw[0], self.batch_size, self.shuffle),
                _Arrays(_take(self.xs, va), _take(self.ys, va), sw[1], self.batch_size, False))

    def batches(self, model, epoch, what="training", par=None):
        """The batches of ``epoch``; with ``par``, this process's part of each."""
        n, size = self.samples, self.batch_size
        order = model.shuffle_rng.permutation(n) if self.shuffle else None
        for lo in range(0, n, size):
            a, z = (0, min(size, n - lo)) if par is None else par.shard(min(size, n - lo))
            index = slice(lo + a, lo + z) if order is None else order[lo + a:lo + z]
            sw = None if self.sw is None else self.sw[index]
            yield _batch(model, self.xs, index), _take(self.ys, index), sw

    def signature(self):
        return _checkpoint.data_signature(self.xs, self.ys, self.batch_size, self.shuffle)


class _Stream:
    """Batches from a data source: an object with ``batches(epoch)`` (cconv.data.Dataset),
    a sequence of batches (``__len__`` and ``__getitem__``), or an iterable / iterator."""

    def __init__(self, data, steps, name):
        self.data, self.name = data, name
        self.steps_limit = steps
        self.one_shot = False
        if isinstance(data, (str, bytes)):
            self.kind = None
        elif callable(getattr(data, "batches", None)):
            self.kind = "dataset"
        elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
            self.kind = "sequence"
        elif hasattr(data, "__iter__"):
            self.kind = "iterable"
            self.one_shot = iter(data) is data
            self._iterator = data if self.one_shot else None
        else:
            self.kind = None
        if self.kind is None:
            raise TypeError(f"{name} must be a numpy array, a cconv.data.Dataset, or an iterable "
                            f"of (x, y) batches, got {type(data).__name__}")
        length = None
        if self.kind in ("dataset", "sequence"):
            try:
                length = len(data)
            except TypeError:
                length = None
        if steps is not None:
            self.steps = steps if length is None else min(steps, length)
        else:
            self.steps = length
        self.samples = None
        self.batch_size = getattr(data, "batch_size", None) if self.kind == "dataset" else None

    def takes_parts(self):
        """Whether the data loads a part of each batch itself (``batches(epoch, part=)``,
        as :class:`cconv.data.Dataset`); other data is cut after loading."""
        if self.kind != "dataset":
            return False
        try:
            return "part" in inspect.signature(self.data.batches).parameters
        except (TypeError, ValueError):
            return False

    def _epoch_iterator(self, epoch, part):
        if self.kind == "dataset":
            return self.data.batches(epoch) if part is None else self.data.batches(epoch, part=part)
        if self.kind == "sequence":
            return (self.data[i] for i in range(len(self.data)))
        if self.one_shot:
            return self._iterator
        return iter(self.data)

    def raw_batches(self, epoch, what, part=None):
        """The raw batches of ``epoch`` (at most ``steps``), with the data's errors raised
        again with their position; a one-shot iterator that runs out raises. ``part``:
        see :meth:`takes_parts`."""
        it = self._epoch_iterator(epoch, part)
        b = 0
        try:
            while self.steps_limit is None or b < self.steps_limit:
                try:
                    batch = next(it)
                except StopIteration:
                    break
                except Exception as exc:
                    raise _data_error(exc, f"the {what} data failed while producing batch {b + 1} of "
                                           f"epoch {epoch + 1}") from exc
                yield batch, f"batch {b + 1} of epoch {epoch + 1} of the {what} data"
                b += 1
        finally:
            if not self.one_shot:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
        if b == 0 or (self.steps_limit is not None and b < self.steps_limit and
                      (self.one_shot or self.kind == "iterable")):
            hint = (f"; pass a generator that yields at least steps_per_epoch x epochs batches "
                    f"(or loops forever), or a re-iterable such as a list or a cconv.data.Dataset"
                    if self.one_shot else "")
            raise ValueError(f"the {what} data ran out: {b} batch{'es' if b != 1 else ''} in epoch "
                             f"{epoch + 1}" + (f", steps_per_epoch={self.steps_limit}"
                                               if self.steps_limit is not None else "") + hint)
        if self.kind == "sequence" and hasattr(self.data, "on_epoch_end"):
            self.data.on_epoch_end()

    def batches(self, model, epoch, what, plan, class_weight=None, par=None):
        """Checked batches; with ``par``, this process's part of each (possibly empty:
        every process takes part in every step)."""
        loads_part = par is not None and self.takes_parts()
        for raw, where in self.raw_batches(epoch, what, par.shard if loads_part else None):
            if raw is None:                         # an empty part
                yield ([np.empty((0,) + tuple(t.shape[1:]), model.dtype) for t in model.inputs],
                       [np.empty(0) for _ in model.outputs], None)
                continue
            xs, ys, sw = _checked_batch(model, raw, where, plan, class_weight)
            if par is not None and not loads_part:  # loaded whole: keep this process's part
                a, z = par.shard(xs[0].shape[0])
                xs, ys, sw = _take(xs, slice(a, z)), _take(ys, slice(a, z)), None if sw is None else sw[a:z]
            yield xs, ys, sw

    def signature(self):
        sig = {"source": self.kind, "steps_per_epoch": self.steps_limit}
        if self.kind == "dataset" and callable(getattr(self.data, "signature", None)):
            sig["dataset"] = self.data.signature()
        elif self.steps is not None:
            sig["steps"] = self.steps
        return sig


def _data_error(exc, where):
    """The exception to raise for ``exc`` raised by the data, naming ``where``."""
    if isinstance(exc, (ValueError, TypeError)):
        try:
            return type(exc)(f"{where}: {exc}")
        except Exception:  # pragma: no cover - a subclass with another constructor
            pass
    return RuntimeError(f"{where}: {type(exc).__name__}: {exc}")


def _unpack(batch, where, need_y=True):
    """``(x, y, sample_weight)`` of a batch: a tuple or list of 1 to 3 parts (as Keras, so
    the inputs of a several-input model go in a tuple: ``([x1, x2], y)``), or for
    ``predict`` an array or dict alone."""
    if isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 3:
        if need_y and len(batch) == 1:
            raise ValueError(f"{where} has no targets: fit and evaluate need (x, y) or (x, y, "
                             f"sample_weight) batches")
        return tuple(batch) + (None,) * (3 - len(batch))
    if not need_y and isinstance(batch, (np.ndarray, dict)):
        return batch, None, None
    raise TypeError(f"{where} is a {type(batch).__name__}: batches must be tuples (x, y) or (x, y, "
                    f"sample_weight){' (or x alone to predict)' if not need_y else ''}")


def _checked_batch(model, batch, where, plan, class_weight):
    """A raw batch as (x arrays in the model's dtype, checked targets, weights or None)."""
    x, y, sw = _unpack(batch, where)
    try:
        xs = input_arrays(model, x, "x")
        n = xs[0].shape[0]
        if n == 0:
            raise ValueError("the batch is empty")
        ys = target_arrays(model, y, n, "y", plan.losses)
        if sw is not None:
            if class_weight is not None:
                raise ValueError("the batch has sample weights and fit has class_weight: use one")
            sw = _losses.check_sample_weight(sw, n)
        elif class_weight is not None:
            sw = class_weights(class_weight, ys)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{where}: {exc}") from exc
    return [np.ascontiguousarray(a, dtype=model.dtype) for a in xs], ys, sw


def _array_data(model, x, y, sample_weight, class_weight, batch_size, shuffle, plan, names=("x", "y")):
    xs = input_arrays(model, x, names[0])
    ys = target_arrays(model, y, xs[0].shape[0], names[1], plan.losses)
    sw = None
    if sample_weight is not None:
        if class_weight is not None:
            raise ValueError("pass sample_weight or class_weight, not both (as Keras)")
        sw = _losses.check_sample_weight(sample_weight, xs[0].shape[0])
    elif class_weight is not None:
        sw = class_weights(class_weight, ys)
    return _Arrays(xs, ys, sw, batch_size, shuffle)


def _source(model, x, y, sample_weight, class_weight, batch_size, shuffle, steps, plan, what):
    """fit/evaluate's data as an _Arrays or a _Stream, after checking what goes with what."""
    if _is_arrays(x):
        if steps is not None:
            raise ValueError(f"{'steps_per_epoch' if what == 'training' else 'steps'} is for "
                             f"datasets and generators; with arrays every sample is used "
                             f"(ceil(N / batch_size) batches)")
        return _array_data(model, x, y, sample_weight, class_weight,
                           32 if batch_size is None else batch_size, shuffle, plan)
    if x is None:
        raise ValueError("x is missing")
    for arg, value in (("y", y), ("sample_weight", sample_weight), ("batch_size", batch_size)):
        if value is not None:
            raise ValueError(f"{arg} must not be given with a dataset or generator: its batches "
                             f"are (x, y) or (x, y, sample_weight) tuples and have their own size")
    return _Stream(x, steps, "x")


def _build(model, x):
    """Build a Sequential that is not built yet from the shape of ``x`` (arrays, or the
    first batch of a dataset or sequence of batches)."""
    if model.built:
        return
    if _is_arrays(x):
        input_arrays(model, x)
        return
    source = _Stream(x, None, "x")
    if source.one_shot:
        raise ValueError("fit with a generator needs a built model: give the Sequential "
                         "input_shape= or call model.build(input_shape) first")
    raw = source.raw_batches(0, "training")
    try:
        batch, where = next(raw)
    finally:
        _close(raw)
    bx, _, _ = _unpack(batch, where)
    try:
        input_arrays(model, bx, "x")
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{where}: {exc}") from exc


def _close(iterator):
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


# --------------------------------------------------------------------------------------
# one step
# --------------------------------------------------------------------------------------
def loss_and_gradients(model, xs, ys, plan, training=False, input_grad=False, sample_weight=None,
                       grads_ready=None):
    """Forward, losses and backward on one batch, without an update.

    ``xs`` are in the model's dtype, ``ys`` checked targets, ``sample_weight`` None or one
    weight per sample. Returns ``(logs, finite, dx)``: the losses and metrics, whether the
    loss is finite (no backward otherwise), and the input gradients (a list; None unless
    ``input_grad``). The layers' ``grads`` hold the gradients of the weights.
    ``grads_ready(layer)`` is called as each layer's gradients become final (see
    :meth:`cconv.Model.run_backward`).
    """
    outs = model.run(xs, training, cache=True, pre_activation=plan.pre_activation)
    total, logs = plan.values(outs, ys, sample_weight)
    if not math.isfinite(total):
        return logs, False, None
    logs.update(plan.metrics(outs, ys))
    dxs = model.run_backward(plan.gradients(), input_grad=input_grad, grads_ready=grads_ready)
    return logs, True, (dxs if input_grad else None)


class _OneProcess:
    """The hooks through which ``fit`` trains data-parallel, for training in this process
    alone; :class:`cconv.distributed.DataParallel` implements them over MPI."""

    is_root = True          # prints, writes checkpoints, runs rank_zero_only callbacks
    grads_ready = None      # the backward pass's per-layer hook

    def guard(self, agreed=()):
        """Around the whole fit (MPI: an error ends every process)."""
        return contextlib.nullcontext()

    def callbacks(self, checkpointing):
        """Callbacks fit adds after the user's."""
        return []

    def start(self, model, settings, start_epoch, resumed, history, callbacks):
        """After a resume, before training: returns the epoch to start from (MPI: every
        process takes process 0's model, position and history)."""
        return start_epoch

    def shard(self, m):
        """This process's part ``(lo, hi)`` of a global batch of ``m`` samples."""
        return 0, m

    def begin_step(self, n_local):
        """Before the forward pass on this process's ``n_local`` samples of a batch."""

    def end_step(self, logs, finite, n_local):
        """Between backward and the optimizer step: the global batch's gradients, and its
        logs, finiteness and number of samples."""
        return logs, finite, n_local

    def metric_values(self, plan):
        """The values of ``plan``'s metrics over every sample they were given since their
        reset (MPI: by every process)."""
        return plan.metric_values()

    def end_epoch(self, model):
        """Before validation (MPI: the processes agree on the layers' state)."""

    def reduce_means(self, logs, n_local):
        """Validation results of this process's ``n_local`` samples, as means over all."""
        return logs


_ONE_PROCESS = _OneProcess()


def _train_step(model, *args, **kwargs):
    """:func:`_step`, all or nothing: the forward pass advances batch-norm statistics and
    dropout generators, the step the weights, so a Ctrl-C is delivered after the whole step;
    a batch whose loss is not finite leaves the layers' state as it was."""
    with deferred_signals(), _config.blas_threads(1):   # once for the step (_config.blas_threads)
        state = [(a, a.copy()) for layer in model.layers for role, _, a in layer.weights() if role == "state"]
        result = _step(model, *args, **kwargs)
        if not result[1]:
            for a, before in state:
                np.copyto(a, before)
    return result


def _step(model, xs, ys, plan, sample_weight=None, par=_ONE_PROCESS):
    """One step on this process's part of a batch: ``(logs, finite, samples)`` of the
    global batch."""
    n = xs[0].shape[0]
    par.begin_step(n)
    # A batch whose loss is not finite adds nothing to the metrics; with several processes
    # that is known only after this process has added its part.
    kept = None if par is _ONE_PROCESS else copy.deepcopy(plan.metric_objects)
    if n or par is _ONE_PROCESS:
        logs, finite, _ = loss_and_gradients(model, xs, ys, plan, training=True,
                                             sample_weight=sample_weight, grads_ready=par.grads_ready)
    else:                   # an empty part of a global batch smaller than the number of ranks
        model.zero_grad()
        logs, finite = {}, True
    logs, finite, n = par.end_step(logs, finite, n)
    if finite:
        model.optimizer.step()
    elif kept is not None:
        plan.metric_objects = kept
    return logs, finite, n


def train_on_batch(model, x, y, sample_weight=None, class_weight=None):
    """One optimisation step on a batch; returns ``{"loss": ..., "accuracy": ...}``.

    Raises
    ------
    NonFiniteLossError
        The loss is NaN or infinite (the weights are not updated).
    """
    _require_compiled(model, "train_on_batch()")
    plan = LossPlan(model)
    data = _array_data(model, x, y, sample_weight, _check_class_weight(class_weight), 1, False, plan)
    logs, finite, _ = _train_step(model, [np.ascontiguousarray(a, dtype=model.dtype) for a in data.xs],
                                  data.ys, plan, data.sw)
    if not finite:
        raise NonFiniteLossError(f"non-finite loss ({logs['loss']}) in train_on_batch; the weights were not updated",
                                 loss=logs["loss"])
    return logs


# --------------------------------------------------------------------------------------
# evaluate / predict
# --------------------------------------------------------------------------------------
def _evaluate_batches(model, batches, plan, par=_ONE_PROCESS):
    """Loss (the mean over samples of the batch values) and metrics (over all samples) of
    ``(xs, ys, sw)`` batches in inference mode; with ``par``, of every process's batches."""
    plan.reset_metrics()
    sums, n = {}, 0
    for xb, yb, swb in batches:
        m = xb[0].shape[0]
        if not m:               # an empty part of a batch smaller than the number of processes
            continue
        outs = model.run(xb, False, cache=False, pre_activation=plan.pre_activation)
        _, logs = plan.values(outs, yb, swb)
        plan.metrics(outs, yb)
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v * m
        n += m
    res = par.reduce_means({k: v / n for k, v in sums.items()} if n else {}, n)
    if not res:
        return {}
    res.update(par.metric_values(plan))
    return res


def evaluate(model, x, y=None, batch_size=None, verbose=0, sample_weight=None, steps=None):
    """Loss and metrics on ``(x, y)`` in inference mode.

    ``x`` may also be a dataset or an iterable of ``(x, y)`` / ``(x, y, sample_weight)``
    batches (see :func:`fit`; ``steps`` caps the number of batches).

    Returns
    -------
    dict
        ``{"loss": float, "accuracy": float}`` (with several outputs, also per output).
    """
    _require_compiled(model, "evaluate()")
    if batch_size is not None:
        batch_size = V.positive_int(batch_size, "batch_size")
    if steps is not None:
        steps = V.positive_int(steps, "steps")
    plan = LossPlan(model)
    source = _source(model, x, y, sample_weight, None, batch_size, False, steps, plan, "evaluation")
    if isinstance(source, _Arrays):
        if source.samples == 0:
            raise ValueError("x is empty: evaluate needs at least one sample")
        res = _evaluate_batches(model, source.batches(model, 0), plan)
    else:
        batches = source.batches(model, 0, "evaluation", plan)
        try:
            res = _evaluate_batches(model, batches, plan)
        finally:
            _close(batches)
    if verbose:
        print("  ".join(f"{k} {v:.4f}" for k, v in res.items()))
    return res


def predict(model, x, batch_size=None, steps=None):
    """Outputs of the whole network in inference mode (probabilities if it ends with a
    softmax), computed ``batch_size`` samples at a time.

    ``x`` may also be a dataset or an iterable of batches (``x``, or ``(x, y)`` whose ``y``
    is ignored); ``steps`` caps the number of batches.

    Returns
    -------
    ndarray of shape (N, *output_shape), or a list of them with several outputs
    """
    if batch_size is not None:
        batch_size = V.positive_int(batch_size, "batch_size")
    if _is_arrays(x):
        if steps is not None:
            raise ValueError("steps is for datasets and generators; with arrays every sample is predicted")
        xs = input_arrays(model, x)
        n = xs[0].shape[0]
        size = 32 if batch_size is None else batch_size
        outs = [np.empty((n,) + tuple(t.shape[1:]), dtype=model.dtype) for t in model.outputs]
        for lo in range(0, n, size):
            sl = slice(lo, lo + size)
            for o, r in zip(outs, model.run(_batch(model, xs, sl), False, cache=False)):
                o[sl] = r
    else:
        if batch_size is not None:
            raise ValueError("batch_size must not be given with a dataset or generator")
        source = _Stream(x, None if steps is None else V.positive_int(steps, "steps"), "x")
        parts = [[] for _ in model.outputs] if model.built else None
        raw = source.raw_batches(0, "prediction")
        try:
            for batch, where in raw:
                bx, _, _ = _unpack(batch, where, need_y=False)
                try:
                    xs = input_arrays(model, bx, "x")
                except (ValueError, TypeError) as exc:
                    raise type(exc)(f"{where}: {exc}") from exc
                if parts is None:
                    parts = [[] for _ in model.outputs]
                for p, r in zip(parts, model.run(_batch(model, xs, slice(None)), False, cache=False)):
                    p.append(r)
        finally:
            _close(raw)
        outs = [np.concatenate(p) for p in parts]
    return outs[0] if len(outs) == 1 and not isinstance(model.output_shape, list) else outs


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------
def _validation_source(model, validation_data, validation_split, train, batch_size, steps, plan):
    """(training source, validation source or None)."""
    if validation_data is not None:
        vd = validation_data
        if isinstance(vd, (tuple, list)) and 2 <= len(vd) <= 3 and _is_arrays(vd[0]):
            sw = vd[2] if len(vd) == 3 else None
            size = train.batch_size if isinstance(train, _Arrays) else (batch_size or 32)
            val = _array_data(model, vd[0], vd[1], sw, None, size, False, plan,
                              ("validation_data[0]", "validation_data[1]"))
            if val.samples == 0:
                raise ValueError("validation_data is empty")
            return train, val
        if isinstance(vd, (tuple, list)) and len(vd) in (2, 3) and not _is_arrays(vd[0]) \
                and not isinstance(vd[0], (tuple, list)):
            raise ValueError("validation_data must be (x_val, y_val[, sample_weight]) arrays, a "
                             "dataset, or an iterable of (x, y) batches")
        return train, _Stream(vd, steps, "validation_data")
    if validation_split:
        split = V.number(validation_split, "validation_split", low=0.0, high=1.0, high_open=True)
        if not isinstance(train, _Arrays):
            raise ValueError("validation_split needs arrays; with a dataset or generator pass "
                             "validation_data")
        return train.split(split)
    return train, None


def _validation_epochs(validation_freq):
    if isinstance(validation_freq, (bool, np.bool_)):
        raise TypeError(f"validation_freq must be a positive int or a collection of epochs, got {validation_freq!r}")
    if isinstance(validation_freq, (int, np.integer)):
        f = V.positive_int(validation_freq, "validation_freq")
        return lambda epoch: (epoch + 1) % f == 0
    try:
        epochs = {V.positive_int(e, "validation_freq entries") for e in validation_freq}
    except TypeError:
        raise TypeError(f"validation_freq must be a positive int or a collection of 1-based "
                        f"epochs, got {validation_freq!r}") from None
    return lambda epoch: epoch + 1 in epochs


def fit(model, x, y=None, epochs=1, batch_size=None, validation_split=0.0, validation_data=None,
        shuffle=True, callbacks=None, verbose=1, checkpoint=None, resume=None, sample_weight=None,
        class_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
        validation_freq=1, distributed=False):
    """Train ``model``.

    Parameters
    ----------
    x : ndarray of shape (N, *input_shape), a list / dict (by input name) of them, or a source of batches
        Arrays, or a :class:`cconv.data.Dataset`, a sequence of batches (``__len__`` and
        ``__getitem__``, e.g. a list or Keras's ``PyDataset``), or any iterable or generator
        of ``(x, y)`` / ``(x, y, sample_weight)`` batches (see the module docstring).
    y : ndarray, or a list / dict (by output name) of them
        Integer labels ``(N,)`` or ``(N, 1)``, or one-hot ``(N, K)`` for the cross-entropy;
        targets of the output's shape for the other losses. Only with arrays.
    epochs : int, default 1
        Index of the last epoch + 1: training runs epochs ``initial_epoch .. epochs - 1``
        (including those done before a ``resume``).
    batch_size : int, default 32
        Only with arrays (a dataset has its own).
    validation_split : float in [0, 1), default 0.0
        Fraction of the samples, taken from the end of the arrays before shuffling, held out
        for validation (arrays only).
    validation_data : tuple (x_val, y_val) or (x_val, y_val, sample_weight), or a source of batches
        Overrides ``validation_split``.
    shuffle : bool, default True
        Reshuffle array samples every epoch (from the model's seed). A dataset orders itself
        (``Dataset.shuffle``).
    callbacks : list of Callback, optional
    verbose : {0, 1, 2}, default 1
        0 silent, 1 progress bar, 2 one line per epoch.
    checkpoint : str or os.PathLike, optional
        After every epoch, atomically save the model, the optimizer, the RNG states,
        the epoch and the history there (see :mod:`cconv.checkpoint`).
    resume : str, os.PathLike, True or False, optional
        Continue from a checkpoint written by ``fit(checkpoint=...)``; the final weights
        are the same as those of an uninterrupted run (same seed, data and thread
        count; a dataset's epochs depend only on its seeds, but a one-shot generator starts
        again from wherever it is). ``True`` means: resume from ``checkpoint`` if that file
        exists, else start from the beginning; ``False`` (like ``None``) means: do not resume.
    sample_weight : ndarray of shape (N,), optional
        Weight of each sample's loss (arrays only; a dataset's batches may carry them).
    class_weight : dict {class index: weight}, optional
        Weight of each sample's loss by its label (single-output models; not together with
        sample weights).
    initial_epoch : int, default 0
        The epoch to start at (its index, as Keras): epoch-based schedules and the logs
        count from there. Not with ``resume``, which restores it.
    steps_per_epoch : int, optional
        Batches per epoch from a dataset or generator (default: all of a dataset or a
        sequence; until an iterable is exhausted). A generator keeps its position from one
        epoch to the next.
    validation_steps : int, optional
        Batches of validation data from a dataset or generator (default: all).
    validation_freq : int or collection of int, default 1
        Validate every ``validation_freq`` epochs, or after the listed (1-based) epochs.
    distributed : bool or cconv.distributed.DataParallel, default False
        Train data-parallel over the processes of an MPI job (``mpirun -n 4 python
        train.py``): ``batch_size`` is the global batch, each process computes the
        gradient of its part and the processes average them before every step; only rank
        0 prints and writes checkpoints. See :mod:`cconv.distributed` (needs the ``mpi``
        extra). Without ``mpirun`` it trains in this process alone.

    Returns
    -------
    History

    Raises
    ------
    ValueError
        Model not compiled; x/y shapes or lengths that do not fit the model; a wrong number
        of arrays for the inputs or outputs; labels out of range; a resume file for a
        different model; a batch that does not fit the model (the message names the batch
        and the epoch); data that ran out.
    NonFiniteLossError
        The loss became NaN or infinite (the message names the epoch and the batch);
        pass ``callbacks=[cconv.callbacks.SkipNonFinite()]`` to skip such batches.
    RuntimeError
        The data raised an exception that is not a ValueError or TypeError (chained, the
        message names the batch and the epoch).
    ImportError
        ``distributed`` without mpi4py or an MPI library.
    """
    _require_compiled(model, "fit()")
    if distributed is False or distributed is None:
        par = _ONE_PROCESS
    else:
        from . import distributed as _distributed
        if distributed is True:
            par = _distributed.DataParallel()
        elif isinstance(distributed, _distributed.DataParallel):
            par = distributed
        else:
            raise TypeError(f"distributed must be a bool or a cconv.distributed.DataParallel, "
                            f"got {distributed!r}")
    with par.guard(agreed=(NonFiniteLossError,)):
        return _fit(model, par, x, y, epochs, batch_size, validation_split, validation_data, shuffle,
                    callbacks, verbose, checkpoint, resume, sample_weight, class_weight, initial_epoch,
                    steps_per_epoch, validation_steps, validation_freq)


def _fit(model, par, x, y, epochs, batch_size, validation_split, validation_data, shuffle, callbacks,
         verbose, checkpoint, resume, sample_weight, class_weight, initial_epoch, steps_per_epoch,
         validation_steps, validation_freq):
    epochs = V.non_negative_int(epochs, "epochs")
    initial_epoch = V.non_negative_int(initial_epoch, "initial_epoch")
    if batch_size is not None:
        batch_size = V.positive_int(batch_size, "batch_size")
    if steps_per_epoch is not None:
        steps_per_epoch = V.positive_int(steps_per_epoch, "steps_per_epoch")
    if validation_steps is not None:
        validation_steps = V.positive_int(validation_steps, "validation_steps")
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    validate_now = _validation_epochs(validation_freq)
    class_weight = _check_class_weight(class_weight)
    _build(model, x)
    plan = LossPlan(model)
    train = _source(model, x, y, sample_weight, class_weight, batch_size, shuffle, steps_per_epoch,
                    plan, "training")
    if isinstance(train, _Arrays) and train.samples == 0:
        raise ValueError("x is empty: fit needs at least one sample")
    train, val = _validation_source(model, validation_data, validation_split, train, batch_size,
                                    validation_steps, plan)

    cbs = list(callbacks or [])
    for cb in cbs:
        if not isinstance(cb, _callbacks.Callback):
            raise TypeError(f"callbacks must be cconv.callbacks.Callback instances, got {type(cb).__name__}")
    cbs += par.callbacks(checkpoint is not None)
    history = History()
    cbs.append(history)

    if checkpoint is not None:
        ckpt_dir = os.path.dirname(os.path.abspath(os.fspath(checkpoint)))
        if not os.path.isdir(ckpt_dir):
            raise FileNotFoundError(f"checkpoint directory {ckpt_dir!r} does not exist")
    if resume is False:
        resume = None
    if resume is True:
        if checkpoint is None:
            raise ValueError("resume=True needs checkpoint= (the file to resume from)")
        resume = checkpoint if os.path.exists(os.fspath(checkpoint)) else None
    signature = train.signature()
    model.stop_training = False
    start_epoch = initial_epoch
    if resume is not None and initial_epoch:
        raise ValueError("initial_epoch and resume do not go together: resume restores the epoch "
                         "from the checkpoint")
    if resume is not None and par.is_root:
        start_epoch = _checkpoint.restore(model, resume, signature, history, cbs)
    settings = dict(signature, epochs=epochs, initial_epoch=initial_epoch,
                    validation=None if val is None else val.signature())
    start_epoch = par.start(model, settings, start_epoch, resume is not None, history, cbs)
    if not par.is_root:
        verbose = 0
        cbs = [cb for cb in cbs if not cb.rank_zero_only]

    params = {"epochs": epochs, "steps": train.steps, "batch_size": train.batch_size,
              "samples": train.samples, "verbose": verbose, "initial_epoch": start_epoch,
              "do_validation": val is not None}
    for cb in cbs:
        cb.set_model(model)
        cb.set_params(params)
    model.history = history
    val_plan = LossPlan(model) if val is not None else None
    for cb in cbs:
        cb.on_train_begin()
    try:
        epoch = start_epoch
        while epoch < epochs and not model.stop_training:
            validation = (val, val_plan) if val is not None and validate_now(epoch) else None
            _run_epoch(model, plan, train, epoch, epochs, cbs, verbose, validation, class_weight, par)
            epoch += 1
            if checkpoint is not None and par.is_root:
                _checkpoint.save(model, checkpoint, epoch, epochs, signature, history, cbs)
    finally:
        for cb in cbs:
            cb.on_train_end()
    return history


def _batches(model, source, epoch, what, plan, class_weight, par=_ONE_PROCESS):
    part = None if par is _ONE_PROCESS else par
    if isinstance(source, _Arrays):
        return source.batches(model, epoch, what, part)
    return source.batches(model, epoch, what, plan, class_weight, part)


def _run_epoch(model, plan, train, epoch, epochs, cbs, verbose, validation, class_weight, par=_ONE_PROCESS):
    batches = _batches(model, train, epoch, "training", plan, class_weight, par)
    try:
        return _run_batches(model, plan, train, batches, epoch, epochs, cbs, verbose, validation, par)
    finally:
        _close(batches)


def _run_batches(model, plan, train, batches, epoch, epochs, cbs, verbose, validation, par):
    first = next(batches)          # the data's first error (or running out) comes before any hook
    steps = train.steps
    for cb in cbs:
        cb.on_epoch_begin(epoch)
    plan.reset_metrics()
    bar = ProgressBar(steps, epoch + 1, epochs, interactive=None if verbose == 1 else False) if verbose else None
    sums = {}
    seen = 0
    logs = {}
    b = -1
    for b, (xb, yb, swb) in enumerate(_chain(first, batches)):
        for cb in cbs:
            cb.on_train_batch_begin(b)
        logs, finite, m = _train_step(model, xb, yb, plan, swb, par)
        if not finite:
            skip = False
            for cb in cbs:
                skip = bool(cb.on_nonfinite_loss(epoch, b, logs["loss"])) or skip
            if not skip:
                if bar is not None:
                    bar.finish()
                where = f"batch {b + 1}/{steps}" if steps is not None else f"batch {b + 1}"
                raise NonFiniteLossError(
                    f"the loss is {logs['loss']} at epoch {epoch + 1}/{epochs}, {where}; training "
                    "stopped before updating the weights with it. Try a lower learning rate, check the inputs "
                    "for NaN/inf, or pass callbacks=[cconv.callbacks.SkipNonFinite()] to skip such batches",
                    epoch=epoch + 1, batch=b + 1, loss=logs["loss"])
        else:
            seen += m
            for k in plan.loss_keys:
                sums[k] = sums.get(k, 0.0) + logs[k] * m
        running = {k: v / seen for k, v in sums.items()} if seen else {}
        running.update(par.metric_values(plan))
        for cb in cbs:
            cb.on_train_batch_end(b, dict(running, size=m))
        if bar is not None:
            bar.update(b + 1, seen, running)
    epoch_logs = {k: v / seen for k, v in sums.items()} if seen else {"loss": float("nan")}
    if seen:
        epoch_logs.update(par.metric_values(plan))
    par.end_epoch(model)
    if validation is not None:
        val, val_plan = validation
        vb = _batches(model, val, 0, "validation", val_plan, None, par)
        try:
            res = _evaluate_batches(model, vb, val_plan, par)
        finally:
            _close(vb)
        epoch_logs.update({f"val_{k}": v for k, v in res.items()})
    for cb in cbs:
        cb.on_epoch_end(epoch, epoch_logs)
    if bar is not None:
        bar.finish(epoch_logs)
    return epoch_logs


def _chain(first, rest):
    yield first
    yield from rest
