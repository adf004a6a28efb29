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

Several outputs
---------------
One loss per output (a single loss is used for all); the training loss is the sum of the
outputs' losses times ``loss_weights`` (default 1). Logs then hold ``"loss"`` (that sum),
and per output ``"<name>_loss"`` and ``"<name>_accuracy"``, named after the layer that
makes the output.
"""
import contextlib
import math
import os

import numpy as np

from . import _validate as V
from . import callbacks as _callbacks
from . import checkpoint as _checkpoint
from . import losses as _losses
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
        ``val_accuracy``.
    epoch : list of int
        0-based epoch indices that were run.
    params : dict
        ``epochs``, ``steps``, ``batch_size``, ``samples``, ``verbose``, ``initial_epoch``.
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
    if isinstance(metrics, str):
        metrics = (metrics,)
    ms = []
    for m in metrics or ():
        if not isinstance(m, str) or m.lower() not in ("accuracy", "acc"):
            raise ValueError(f"unknown metric {m!r}; available: 'accuracy'")
        if "accuracy" not in ms:
            ms.append("accuracy")
    model.optimizer, model.loss, model.loss_weights, model.metrics = opt_obj, loss_obj, loss_weights, tuple(ms)
    model.compiled = True
    if model.built:
        LossPlan(model)                       # refuses a double softmax now rather than in fit
        model.optimizer.attach(model.parameters())


def _require_compiled(model, what):
    if not model.compiled:
        raise ValueError(f"model must be compiled before {what}: call model.compile(optimizer, loss) first")


class LossPlan:
    """What training computes for each output: the loss object it calls (the compiled one,
    or its ``with_logits()`` form when the output's final activation is fused with it),
    whether the model returns that output before its final activation, the weight, and
    the log names."""

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
        self.accuracy = "accuracy" in getattr(model, "metrics", ())
        self.names = ([""] if n == 1 else [f"{name}_" for name in model.output_names])

    def values(self, outs, ys):
        """Call every loss: (weighted total, logs with the per-output losses)."""
        total, logs = 0.0, {}
        for lo, w, name, out, y in zip(self.losses, self.weights, self.names, outs, ys):
            v = float(lo(out, y))
            total += v if w == 1.0 else w * v
            if name:
                logs[f"{name}loss"] = v
        return total, dict({"loss": total}, **logs)

    def metrics(self, outs, ys):
        vals = {}
        if self.accuracy:
            for lo, name, out, y in zip(self.losses, self.names, outs, ys):
                fn = getattr(lo, "accuracy", None)
                acc = fn(out, y) if fn is not None else _losses.Loss.accuracy(lo, out, y)
                if acc is not None:
                    vals[f"{name}accuracy"] = float(acc)
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
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.iscomplexobj(a):
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


def _batch(model, arrays, index):
    return [np.ascontiguousarray(a[index], dtype=model.dtype) for a in arrays]


def _take(arrays, index):
    return [a[index] for a in arrays]


# --------------------------------------------------------------------------------------
# one step
# --------------------------------------------------------------------------------------
def loss_and_gradients(model, xs, ys, plan, training=False, input_grad=False, grads_ready=None):
    """Forward, losses and backward on one batch, without an update.

    ``xs`` are in the model's dtype, ``ys`` checked targets. Returns ``(logs, finite, dx)``:
    the losses and metrics, whether the loss is finite (no backward otherwise), and the
    input gradients (a list; None unless ``input_grad``). The layers' ``grads`` hold the
    gradients of the weights. ``grads_ready(layer)`` is called as each layer's gradients
    become final (see :meth:`cconv.Model.run_backward`).
    """
    outs = model.run(xs, training, cache=True, pre_activation=plan.pre_activation)
    total, logs = plan.values(outs, ys)
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

    def end_step(self, logs, finite):
        """Between backward and the optimizer step: the global batch's gradients and logs."""
        return logs, finite

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
    with deferred_signals():
        state = [(a, a.copy()) for layer in model.layers for role, _, a in layer.weights() if role == "state"]
        result = _step(model, *args, **kwargs)
        if not result[1]:
            for a, before in state:
                np.copyto(a, before)
    return result


def _step(model, xs, ys, plan, par=_ONE_PROCESS):
    n = xs[0].shape[0]
    par.begin_step(n)
    if n or par is _ONE_PROCESS:
        logs, finite, _ = loss_and_gradients(model, xs, ys, plan, training=True, grads_ready=par.grads_ready)
    else:                   # an empty part of a global batch smaller than the number of ranks
        model.zero_grad()
        logs, finite = {}, True
    logs, finite = par.end_step(logs, finite)
    if finite:
        model.optimizer.step()
    return logs, finite


def train_on_batch(model, x, y):
    """One optimisation step on a batch; returns ``{"loss": ..., "accuracy": ...}``.

    Raises
    ------
    NonFiniteLossError
        The loss is NaN or infinite (the weights are not updated).
    """
    _require_compiled(model, "train_on_batch()")
    xs = input_arrays(model, x)
    plan = LossPlan(model)
    ys = target_arrays(model, y, xs[0].shape[0], plan_losses=plan.losses)
    logs, finite = _train_step(model, [np.ascontiguousarray(a, dtype=model.dtype) for a in xs], ys, plan)
    if not finite:
        raise NonFiniteLossError(f"non-finite loss ({logs['loss']}) in train_on_batch; the weights were not updated",
                                 loss=logs["loss"])
    return logs


# --------------------------------------------------------------------------------------
# evaluate / predict
# --------------------------------------------------------------------------------------
def _evaluate_arrays(model, xs, ys, batch_size, plan):
    n = xs[0].shape[0]
    sums = {}
    for lo in range(0, n, batch_size):
        sl = slice(lo, lo + batch_size)
        xb, yb = _batch(model, xs, sl), _take(ys, sl)
        outs = model.run(xb, False, cache=False, pre_activation=plan.pre_activation)
        m = xb[0].shape[0]
        _, logs = plan.values(outs, yb)
        logs.update(plan.metrics(outs, yb))
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v * m
    return {k: v / n for k, v in sums.items()} if n else {}


def evaluate(model, x, y, batch_size=32, verbose=0):
    """Loss and metrics on ``(x, y)`` in inference mode.

    Returns
    -------
    dict
        ``{"loss": float, "accuracy": float}`` (with several outputs, also per output).
    """
    _require_compiled(model, "evaluate()")
    batch_size = V.positive_int(batch_size, "batch_size")
    xs = input_arrays(model, x)
    plan = LossPlan(model)
    ys = target_arrays(model, y, xs[0].shape[0], plan_losses=plan.losses)
    if xs[0].shape[0] == 0:
        raise ValueError("x is empty: evaluate needs at least one sample")
    res = _evaluate_arrays(model, xs, ys, batch_size, plan)
    if verbose:
        print("  ".join(f"{k} {v:.4f}" for k, v in res.items()))
    return res


def predict(model, x, batch_size=32):
    """Outputs of the whole network in inference mode (probabilities if it ends with a
    softmax), computed ``batch_size`` samples at a time.

    Returns
    -------
    ndarray of shape (N, *output_shape), or a list of them with several outputs
    """
    batch_size = V.positive_int(batch_size, "batch_size")
    xs = input_arrays(model, x)
    n = xs[0].shape[0]
    outs = [np.empty((n,) + tuple(t.shape[1:]), dtype=model.dtype) for t in model.outputs]
    for lo in range(0, n, batch_size):
        sl = slice(lo, lo + batch_size)
        for o, r in zip(outs, model.run(_batch(model, xs, sl), False, cache=False)):
            o[sl] = r
    return outs[0] if len(outs) == 1 and not isinstance(model.output_shape, list) else outs


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------
def fit(model, x, y, epochs=1, batch_size=32, validation_split=0.0, validation_data=None, shuffle=True,
        callbacks=None, verbose=1, checkpoint=None, resume=None, distributed=False):
    """Train ``model``.

    Parameters
    ----------
    x : ndarray of shape (N, *input_shape), or a list / dict (by input name) of them
    y : ndarray, or a list / dict (by output name) of them
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
        the epoch and the history there (see :mod:`cconv.checkpoint`).
    resume : str, os.PathLike or True, optional
        Continue from a checkpoint written by ``fit(checkpoint=...)``; the final weights
        are the same as those of an uninterrupted run (same seed, data and thread
        count). ``True`` means: resume from ``checkpoint`` if that file exists, else
        start from the beginning.
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
        different model.
    NonFiniteLossError
        The loss became NaN or infinite (the message names the epoch and the batch);
        pass ``callbacks=[cconv.callbacks.SkipNonFinite()]`` to skip such batches.
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
                    callbacks, verbose, checkpoint, resume)


def _fit(model, par, x, y, epochs, batch_size, validation_split, validation_data, shuffle, callbacks,
         verbose, checkpoint, resume):
    epochs = V.non_negative_int(epochs, "epochs")
    batch_size = V.positive_int(batch_size, "batch_size")
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    xs = input_arrays(model, x)
    plan = LossPlan(model)
    ys = target_arrays(model, y, xs[0].shape[0], plan_losses=plan.losses)
    n = xs[0].shape[0]
    if n == 0:
        raise ValueError("x is empty: fit needs at least one sample")

    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
            raise ValueError("validation_data must be a tuple (x_val, y_val)")
        xv = input_arrays(model, validation_data[0], "validation_data[0]")
        yv = target_arrays(model, validation_data[1], xv[0].shape[0], "validation_data[1]", plan.losses)
    elif validation_split:
        split = V.number(validation_split, "validation_split", low=0.0, high=1.0, high_open=True)
        n_val = int(n * split)
        if n_val == 0 or n_val == n:
            raise ValueError(f"validation_split={validation_split} of {n} samples leaves "
                             f"{n_val} for validation and {n - n_val} for training")
        xs, xv = _take(xs, slice(None, -n_val)), _take(xs, slice(-n_val, None))
        ys, yv = _take(ys, slice(None, -n_val)), _take(ys, slice(-n_val, None))
        n = xs[0].shape[0]
    else:
        xv = yv = None

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
    if resume is True:
        if checkpoint is None:
            raise ValueError("resume=True needs checkpoint= (the file to resume from)")
        resume = checkpoint if os.path.exists(os.fspath(checkpoint)) else None
    signature = _checkpoint.data_signature(xs, ys, batch_size, shuffle)
    model.stop_training = False
    start_epoch = 0
    if resume is not None and par.is_root:
        start_epoch = _checkpoint.restore(model, resume, signature, history, cbs)
    settings = dict(signature, epochs=epochs, validation=None if xv is None else [list(a.shape) for a in xv])
    start_epoch = par.start(model, settings, start_epoch, resume is not None, history, cbs)
    if not par.is_root:
        verbose = 0
        cbs = [cb for cb in cbs if not cb.rank_zero_only]

    steps = (n + batch_size - 1) // batch_size
    params = {"epochs": epochs, "steps": steps, "batch_size": batch_size, "samples": n, "verbose": verbose,
              "initial_epoch": start_epoch}
    for cb in cbs:
        cb.set_model(model)
        cb.set_params(params)
    model.history = history
    for cb in cbs:
        cb.on_train_begin()
    try:
        epoch = start_epoch
        while epoch < epochs and not model.stop_training:
            _run_epoch(model, plan, xs, ys, epoch, epochs, batch_size, shuffle, cbs, verbose, xv, yv, par)
            epoch += 1
            if checkpoint is not None and par.is_root:
                _checkpoint.save(model, checkpoint, epoch, epochs, signature, history, cbs)
    finally:
        for cb in cbs:
            cb.on_train_end()
    return history


def _run_epoch(model, plan, xs, ys, epoch, epochs, batch_size, shuffle, cbs, verbose, xv, yv, par=_ONE_PROCESS):
    n = xs[0].shape[0]
    steps = (n + batch_size - 1) // batch_size
    for cb in cbs:
        cb.on_epoch_begin(epoch)
    order = model.shuffle_rng.permutation(n) if shuffle else None
    bar = ProgressBar(steps, epoch + 1, epochs, interactive=None if verbose == 1 else False) if verbose else None
    sums = {}
    seen = 0
    for b in range(steps):
        lo, hi = b * batch_size, min((b + 1) * batch_size, n)
        a, z = par.shard(hi - lo)             # this process's part of the batch
        index = slice(lo + a, lo + z) if order is None else order[lo + a:lo + z]
        for cb in cbs:
            cb.on_batch_begin(b)
        logs, finite = _train_step(model, _batch(model, xs, index), _take(ys, index), plan, par)
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
    par.end_epoch(model)
    if xv is not None:
        a, z = par.shard(xv[0].shape[0])
        val = par.reduce_means(_evaluate_arrays(model, _take(xv, slice(a, z)), _take(yv, slice(a, z)),
                                                batch_size, plan), z - a)
        epoch_logs.update({f"val_{k}": v for k, v in val.items()})
    for cb in cbs:
        cb.on_epoch_end(epoch, epoch_logs)
    if bar is not None:
        bar.finish(epoch_logs)
    return epoch_logs
