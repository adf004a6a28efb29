"""Callbacks: hooks into :meth:`cconv.Model.fit` (a Sequential is a Model).

A callback receives ``on_train_begin``, ``on_epoch_begin(epoch)``, ``on_batch_begin(batch)``,
``on_batch_end(batch, logs)``, ``on_epoch_end(epoch, logs)`` and ``on_train_end``; epochs and
batches are counted from 0 (as in Keras). Keras 3's ``on_train_batch_begin`` and
``on_train_batch_end`` are the same hooks under their Keras names (override either). ``logs`` at the end of an epoch holds ``loss``, the
metrics (``accuracy``) and, with validation data, ``val_loss`` / ``val_accuracy``. A callback
stops training by setting ``self.model.stop_training = True``.

Included: :class:`EarlyStopping`, :class:`ModelCheckpoint`, :class:`LearningRateScheduler`
(per epoch, or per batch for one-cycle and warm-up schedules), :class:`ReduceLROnPlateau`,
:class:`LinearWarmup`, :class:`CSVLogger`, :class:`TensorBoard`, :class:`SkipNonFinite`,
:class:`LambdaCallback`.
"""
import csv
import inspect
import math
import os

import numpy as np

from . import _validate as V
from .metrics import higher_is_better

__all__ = [
    "Callback", "EarlyStopping", "ModelCheckpoint", "LearningRateScheduler", "ReduceLROnPlateau",
    "LinearWarmup", "CSVLogger", "TensorBoard", "SkipNonFinite", "LambdaCallback",
]


class Callback:
    """Base class: every hook does nothing.

    Attributes
    ----------
    model : Model or None
        Set by ``fit`` before ``on_train_begin``.
    params : dict
        ``{"epochs", "steps", "batch_size", "samples", "verbose", "initial_epoch",
        "do_validation"}``, set by ``fit`` (``steps``, ``samples``, ``batch_size`` are None
        when a dataset or generator does not know them).
    rank_zero_only : bool (class attribute)
        In ``fit(..., distributed=True)``, run on rank 0 only (callbacks that write files);
        the others run on every rank, with the same logs.
    """

    rank_zero_only = False

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = dict(params)

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        """Keras 3's name of the hook ``fit`` calls before every batch; by default it calls
        :meth:`on_batch_begin`, so either may be overridden."""
        self.on_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        """Keras 3's name of the hook ``fit`` calls after every batch (default:
        :meth:`on_batch_end`)."""
        self.on_batch_end(batch, logs)

    def on_nonfinite_loss(self, epoch, batch, loss):
        """Called when a batch's loss is NaN or infinite, before any weight is touched.

        Return True to skip the batch (no update), False to let ``fit`` stop with
        :class:`cconv.model.NonFiniteLossError`. The default is False.
        """
        return False

    def state_dict(self):
        """JSON-able state saved in ``fit(checkpoint=...)`` files and restored on resume."""
        return {}

    def load_state_dict(self, state):
        pass

    def __repr__(self):
        return f"{type(self).__name__}()"


def _resolve_mode(mode, monitor):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        mode = "max" if higher_is_better(monitor) else "min"
    return mode


def _monitored(logs, monitor, who, params=None):
    """The monitored value, or None for a ``val_`` key in an epoch that ``validation_freq``
    left without validation."""
    if logs is not None and monitor not in logs and monitor.startswith("val_") \
            and (params or {}).get("do_validation"):
        return None
    if logs is None or monitor not in logs:
        have = sorted(logs) if logs else []
        hint = " (pass validation_data= or validation_split= to fit)" if monitor.startswith("val_") else ""
        raise ValueError(f"{who} monitors {monitor!r}, which fit did not produce{hint}; available: {have}")
    return float(logs[monitor])


class EarlyStopping(Callback):
    """Stop training when a monitored quantity has stopped improving.

    Parameters
    ----------
    monitor : str, default "val_loss"
        Key of the epoch logs to watch.
    patience : int, default 0
        Number of epochs without improvement after which training stops (0: at the
        first epoch that does not improve).
    min_delta : float, default 0.0
        Minimum change that counts as an improvement.
    mode : {"auto", "min", "max"}, default "auto"
        "auto" maximises keys containing "acc" and minimises the rest.
    restore_best_weights : bool, default False
        At the end of training, put back the weights of the best epoch.
    verbose : int, default 0
    """

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto",
                 restore_best_weights=False, verbose=0):
        super().__init__()
        self.monitor = monitor
        self.patience = V.non_negative_int(patience, "patience")
        min_delta = V.number(min_delta, "min_delta", low=0.0)
        self.min_delta = float(min_delta)
        self.mode = _resolve_mode(mode, monitor)
        self.restore_best_weights = bool(restore_best_weights)
        self.verbose = verbose
        self._reset()

    def _reset(self):
        self.wait = 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = None
        self.stopped_epoch = None
        self.best_weights = None

    def _improved(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_train_begin(self, logs=None):
        if not getattr(self, "_resumed", False):
            self._reset()
        self._resumed = False

    def on_epoch_end(self, epoch, logs=None):
        value = _monitored(logs, self.monitor, "EarlyStopping", self.params)
        if value is None:
            return
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.verbose:
                print(f"Epoch {epoch + 1}: early stopping ({self.monitor} best {self.best:.5g} "
                      f"at epoch {self.best_epoch + 1 if self.best_epoch is not None else '-'})")

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None and self.stopped_epoch is not None:
            self.model.set_weights(self.best_weights)
            if self.verbose:
                print(f"Restored the weights of epoch {self.best_epoch + 1}")

    def state_dict(self):
        # The best weights themselves are not checkpointed; after a resume they are
        # re-recorded at the next improvement.
        return {"wait": self.wait, "best": self.best, "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state):
        self.wait = int(state["wait"])
        self.best = float(state["best"])
        self.best_epoch = state["best_epoch"]
        self.stopped_epoch = state["stopped_epoch"]
        self._resumed = True

    def __repr__(self):
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, min_delta={self.min_delta}, "
                f"mode={self.mode!r}, restore_best_weights={self.restore_best_weights})")


class ModelCheckpoint(Callback):
    """Save the model at the end of every epoch, or only when it improves.

    Parameters
    ----------
    path : str or os.PathLike
        File to write. May contain ``str.format`` fields filled from the epoch logs and
        ``epoch`` (1-based), e.g. ``"ckpt-{epoch:02d}-{val_loss:.3f}.npz"``.
    monitor : str, default "val_loss"
        Used when ``save_best_only`` is True.
    save_best_only : bool, default False
        Save only when the monitored value improves on the best so far.
    mode : {"auto", "min", "max"}, default "auto"
    include_optimizer : bool, default True
    verbose : int, default 0

    Notes
    -----
    Every save is atomic (see :mod:`cconv.io`). To resume an interrupted run exactly
    (optimizer, RNG and epoch position), use ``fit(checkpoint=..., resume=...)``. In a
    distributed fit only rank 0 saves.
    """

    rank_zero_only = True

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto",
                 include_optimizer=True, verbose=0):
        super().__init__()
        self.path = os.fspath(path)
        self.monitor = monitor
        self.save_best_only = bool(save_best_only)
        self.mode = _resolve_mode(mode, monitor)
        self.include_optimizer = include_optimizer
        self.verbose = verbose
        self.best = math.inf if self.mode == "min" else -math.inf
        self.last_saved = None

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self.save_best_only:
            value = _monitored(logs, self.monitor, "ModelCheckpoint", self.params)
            if value is None:
                return
            better = value < self.best if self.mode == "min" else value > self.best
            if not better:
                return
            self.best = value
        try:
            path = self.path.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"ModelCheckpoint path {self.path!r} cannot be filled from the logs "
                             f"{sorted(logs)}: {exc}") from None
        self.model.save(path, include_optimizer=self.include_optimizer)
        self.last_saved = path
        if self.verbose:
            print(f"Epoch {epoch + 1}: saved model to {path}")

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state):
        self.best = float(state["best"])

    def __repr__(self):
        return (f"ModelCheckpoint({self.path!r}, monitor={self.monitor!r}, "
                f"save_best_only={self.save_best_only})")


class LearningRateScheduler(Callback):
    """Set the optimizer's learning rate at the beginning of every epoch, or of every batch.

    Parameters
    ----------
    schedule : callable or schedule object from :mod:`cconv.optim`
        ``schedule(step) -> lr`` or ``schedule(step, lr) -> lr`` (step counted from 0,
        ``lr`` the current rate), or an ``optim`` schedule (``StepLR``, ``ExponentialLR``,
        ``CosineAnnealingLR``, ``LinearLR``, ``OneCycleLR``, ``WarmupCosineLR``), which is
        evaluated from the rate the optimizer had when training began.
    verbose : int, default 0
    unit : {"epoch", "batch"}, default "epoch"
        "epoch": the step is the epoch index, the rate is set when an epoch begins (Keras's
        LearningRateScheduler). "batch": the step is the number of updates the optimizer
        has made (``optimizer.iterations``, restored by a resume; Keras's schedules count
        the same way), the rate is set before every batch.
    """

    def __init__(self, schedule, verbose=0, unit="epoch"):
        super().__init__()
        if not callable(schedule) and not hasattr(schedule, "get_lr"):
            raise TypeError(f"schedule must be callable or an optim schedule, got {type(schedule).__name__}")
        if unit not in ("epoch", "batch"):
            raise ValueError(f"unit must be 'epoch' or 'batch', got {unit!r}")
        self.schedule = schedule
        self.verbose = verbose
        self.unit = unit
        self.base_lr = None
        self._nargs = None
        if callable(schedule):
            self._nargs = _positional_arity(schedule)

    def on_train_begin(self, logs=None):
        if self.base_lr is None:
            opt = self.model.optimizer
            self.base_lr = float(getattr(opt, "initial_lr", opt.lr))

    def _lr_for(self, step):
        s = self.schedule
        if _is_optim_schedule(s):
            return _call_optim_schedule(s, step, self.base_lr)
        if self._nargs is not None and self._nargs >= 2:
            return s(step, float(self.model.optimizer.lr))
        return s(step)

    def _set(self, step, what):
        lr = self._lr_for(step)
        try:
            lr = float(lr)
        except (TypeError, ValueError):
            raise TypeError(f"the learning-rate schedule returned {lr!r} for {what} {step}, not a number") from None
        if not np.isfinite(lr) or lr < 0:
            raise ValueError(f"the learning-rate schedule returned {lr!r} for {what} {step}; it must be "
                             f"finite and >= 0")
        self.model.optimizer.lr = lr
        return lr

    def on_epoch_begin(self, epoch, logs=None):
        if self.unit != "epoch":
            return
        lr = self._set(epoch, "epoch")
        if self.verbose:
            print(f"Epoch {epoch + 1}: learning rate {lr:.6g}")

    def on_batch_begin(self, batch, logs=None):
        if self.unit == "batch":
            self._set(int(self.model.optimizer.iterations), "step")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(self.model.optimizer.lr)

    def state_dict(self):
        return {"base_lr": self.base_lr}

    def load_state_dict(self, state):
        self.base_lr = state.get("base_lr")

    def __repr__(self):
        unit = "" if self.unit == "epoch" else f", unit={self.unit!r}"
        return f"LearningRateScheduler({self.schedule!r}{unit})"


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when a monitored value stops improving
    (Keras's ReduceLROnPlateau).

    After every epoch: during a cooldown the counter of bad epochs stays at 0; a value
    better than the best by more than ``min_delta`` becomes the best and resets the
    counter; otherwise (outside a cooldown) the counter grows, and when it reaches
    ``patience`` the rate becomes ``max(lr * factor, min_lr)`` (if it is above
    ``min_lr``), the counter returns to 0 and a cooldown of ``cooldown`` epochs begins.

    Parameters
    ----------
    monitor : str, default "val_loss"
    factor : float in (0, 1), default 0.1
    patience : int, default 10
    mode : {"auto", "min", "max"}, default "auto"
        "auto" maximises accuracies, precision, recall and F1, minimises the rest.
    min_delta : float, default 1e-4
    cooldown : int, default 0
    min_lr : float, default 0.0
    verbose : int, default 0

    Notes
    -----
    The epoch logs get ``"lr"``, the rate the epoch trained with.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0, verbose=0):
        super().__init__()
        self.monitor = monitor
        self.factor = V.number(factor, "factor", low=0.0, high=1.0, low_open=True, high_open=True)
        self.patience = V.non_negative_int(patience, "patience")
        self.mode = _resolve_mode(mode, monitor)
        self.min_delta = V.number(min_delta, "min_delta", low=0.0)
        self.cooldown = V.non_negative_int(cooldown, "cooldown")
        self.min_lr = V.number(min_lr, "min_lr", low=0.0)
        self.verbose = verbose
        self._reset()

    def _reset(self):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = 0
        self.cooldown_counter = 0
        self._resumed = False

    def on_train_begin(self, logs=None):
        if not self._resumed:
            self._reset()
        self._resumed = False

    def on_epoch_end(self, epoch, logs=None):
        opt = self.model.optimizer
        if logs is not None:
            logs["lr"] = float(opt.lr)
        value = _monitored(logs, self.monitor, "ReduceLROnPlateau", self.params)
        if value is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        better = (value < self.best - self.min_delta if self.mode == "min"
                  else value > self.best + self.min_delta)
        if better:
            self.best, self.wait = value, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience and opt.lr > self.min_lr:
                new = max(opt.lr * self.factor, self.min_lr)
                opt.lr = new
                self.cooldown_counter, self.wait = self.cooldown, 0
                if self.verbose:
                    print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing the learning rate to {new:.6g}")

    def state_dict(self):
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state):
        self.best = float(state["best"])
        self.wait = int(state["wait"])
        self.cooldown_counter = int(state["cooldown_counter"])
        self._resumed = True

    def __repr__(self):
        return (f"ReduceLROnPlateau(monitor={self.monitor!r}, factor={self.factor}, "
                f"patience={self.patience}, cooldown={self.cooldown}, min_lr={self.min_lr})")


class LinearWarmup(Callback):
    """Raise the learning rate linearly over the first ``warmup_steps`` updates.

    Before update ``t`` (``optimizer.iterations``, counted from 0) with ``t <
    warmup_steps`` the rate is ``target * (start_factor + (1 - start_factor) * t /
    warmup_steps)`` (PyTorch's ``LinearLR`` warm-up); at ``t = warmup_steps`` it is set to
    ``target`` and left alone from then on, so epoch schedules and
    :class:`ReduceLROnPlateau` take over. ``target`` is the optimizer's rate when training
    begins (unless given). For a warm-up followed by a per-batch decay use
    ``LearningRateScheduler(optim.WarmupCosineLR(...), unit="batch")``.

    Parameters
    ----------
    warmup_steps : int
    start_factor : float in [0, 1], default 0.0
    target : float, optional
    """

    def __init__(self, warmup_steps, start_factor=0.0, target=None):
        super().__init__()
        self.warmup_steps = V.positive_int(warmup_steps, "warmup_steps")
        self.start_factor = V.number(start_factor, "start_factor", low=0.0, high=1.0)
        self.target = None if target is None else V.number(target, "target", low=0.0, low_open=True)

    def on_train_begin(self, logs=None):
        if self.target is None:
            self.target = float(self.model.optimizer.lr)

    def on_batch_begin(self, batch, logs=None):
        t = int(self.model.optimizer.iterations)
        if t < self.warmup_steps:
            f = self.start_factor + (1.0 - self.start_factor) * t / self.warmup_steps
            self.model.optimizer.lr = self.target * f
        elif t == self.warmup_steps:
            self.model.optimizer.lr = self.target

    def state_dict(self):
        return {"target": self.target}

    def load_state_dict(self, state):
        self.target = state.get("target")

    def __repr__(self):
        return f"LinearWarmup({self.warmup_steps}, start_factor={self.start_factor})"


def _positional_arity(fn):
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 1
    n = 0
    for p in sig.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            return 2
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            n += 1
    return n


def _is_optim_schedule(obj):
    try:
        from . import optim
    except ImportError:
        return False
    base = getattr(optim, "LRSchedule", None) or getattr(optim, "Schedule", None)
    if base is not None and isinstance(obj, base):
        return True
    return type(obj).__module__ == optim.__name__ and hasattr(obj, "get_lr")


def _call_optim_schedule(s, epoch, base_lr):
    """Evaluate an optim schedule object at ``epoch`` from ``base_lr``."""
    if hasattr(s, "get_lr"):
        return s.get_lr(epoch, base_lr)
    return s(epoch, base_lr)


class CSVLogger(Callback):
    """Write the epoch logs to a CSV file, one row per epoch (flushed every epoch).

    With ``fit(checkpoint=..., resume=...)`` the file's length is saved in each
    checkpoint, and a resumed run first cuts off the rows written after it (the epoch that
    a crash interrupted after its row but before its checkpoint), so the file keeps one row
    per epoch.

    Parameters
    ----------
    path : str or os.PathLike
    separator : str, default ","
    append : bool, default False
        Append to an existing file (no second header) instead of overwriting it.

    In a distributed fit only rank 0 writes.
    """

    rank_zero_only = True

    def __init__(self, path, separator=",", append=False):
        super().__init__()
        self.path = os.fspath(path)
        self.separator = separator
        self.append = append
        self._file = None
        self._writer = None
        self._keys = None
        self._resume_size = None

    def on_train_begin(self, logs=None):
        resumed = self.params.get("initial_epoch", 0) > 0
        if resumed and self._resume_size is not None and os.path.exists(self.path) \
                and os.path.getsize(self.path) > self._resume_size:
            # Rows of epochs after the checkpoint (a crash between writing an epoch's row
            # and saving its checkpoint): that epoch runs again and writes them again.
            os.truncate(self.path, self._resume_size)
        self._resume_size = None
        append = (self.append or resumed) and os.path.exists(self.path) and os.path.getsize(self.path) > 0
        self._has_header = append
        self._keys = None
        if append:
            with open(self.path, newline="") as f:
                first = f.readline().strip()
            self._keys = first.split(self.separator)[1:] if first else None
        self._file = open(self.path, "a" if append else "w", newline="")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._keys is None:
            self._keys = sorted(logs)
        if self._writer is None:
            self._writer = csv.writer(self._file, delimiter=self.separator)
            if not self._has_header:
                self._writer.writerow(["epoch"] + self._keys)
        row = [epoch] + [_fmt(logs.get(k, "")) for k in self._keys]
        self._writer.writerow(row)
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
        self._file = None
        self._writer = None

    def state_dict(self):
        """The file's length when the checkpoint is written: a resume truncates to it."""
        if self._file is None:
            return {}
        self._file.flush()
        return {"size": os.fstat(self._file.fileno()).st_size}

    def load_state_dict(self, state):
        self._resume_size = state.get("size")

    def __repr__(self):
        return f"CSVLogger({self.path!r})"


def _fmt(v):
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return v


class TensorBoard(Callback):
    """Write the training curves, weight histograms and kernel images for TensorBoard.

    Event files go to ``log_dir/train`` and ``log_dir/validation`` (Keras's layout): after
    every epoch the scalars ``epoch_<key>`` for each key of the epoch logs (``val_``
    keys in ``validation`` without the prefix, the learning rate as
    ``epoch_learning_rate``); with ``update_freq`` the running ``batch_<key>`` values;
    every ``histogram_freq`` epochs a histogram of every weight (tag ``<layer>/<weight>``)
    and, with ``write_images``, the kernels of each ``Conv2D`` as an image (one tile per
    filter: RGB for 3 input channels, their mean otherwise). Steps are epoch indices (and
    the optimizer's update count for batch values). Files are flushed after every epoch;
    a failed epoch writes no epoch values.

    The writer is cconv's own (no TensorFlow or TensorBoard needed); view the files with
    ``pip install "cconv[tensorboard]"`` and ``tensorboard --logdir <log_dir>``.

    Parameters
    ----------
    log_dir : str or os.PathLike, default "logs"
    histogram_freq : int, default 0
        Every this many epochs (0: never).
    write_images : bool, default False
        With the histograms, images of the convolution kernels.
    update_freq : "epoch", "batch" or int, default "epoch"
        Also write the batch values every batch, or every ``update_freq`` batches.

    In a distributed fit only rank 0 writes (the logs are the global batches' on every rank).
    """

    rank_zero_only = True

    def __init__(self, log_dir="logs", histogram_freq=0, write_images=False, update_freq="epoch"):
        super().__init__()
        from ._tfevents import EventWriter
        self.log_dir = os.fspath(log_dir)
        self.histogram_freq = V.non_negative_int(histogram_freq, "histogram_freq")
        self.write_images = bool(write_images)
        if update_freq == "epoch":
            self.update_freq = 0
        elif update_freq == "batch":
            self.update_freq = 1
        else:
            self.update_freq = V.positive_int(update_freq, "update_freq")
        self._writers = {"train": EventWriter(os.path.join(self.log_dir, "train")),
                         "validation": EventWriter(os.path.join(self.log_dir, "validation"))}

    def on_batch_end(self, batch, logs=None):
        if not self.update_freq or not logs:
            return
        step = int(self.model.optimizer.iterations)
        if step % self.update_freq:
            return
        for k, v in logs.items():
            if k != "size" and isinstance(v, (int, float, np.floating)):
                self._writers["train"].scalar(f"batch_{k}", float(v), step)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        logs.setdefault("lr", float(self.model.optimizer.lr))
        for k, v in logs.items():
            if not isinstance(v, (int, float, np.floating)):
                continue
            which, key = ("validation", k[4:]) if k.startswith("val_") else ("train", k)
            key = "learning_rate" if key == "lr" else key
            self._writers[which].scalar(f"epoch_{key}", float(v), epoch)
        if self.histogram_freq and (epoch + 1) % self.histogram_freq == 0:
            self._weights(epoch)
        for w in self._writers.values():
            w.flush()

    def _weights(self, epoch):
        train = self._writers["train"]
        for layer in self.model.layers:
            for role, key, a in layer.weights():
                train.histogram(f"{layer.name}/{key}", a, epoch)
            if self.write_images and type(layer).__name__ == "Conv2D":
                train.image(f"{layer.name}/kernel", _kernel_image(layer.params["kernel"]), epoch)

    def on_train_end(self, logs=None):
        for w in self._writers.values():
            w.close()

    def __repr__(self):
        return f"TensorBoard({self.log_dir!r}, histogram_freq={self.histogram_freq})"


def _kernel_image(kernel, scale=4):
    """A uint8 grid of a convolution kernel's filters ``(KH, KW, C_in, C_out)``, each
    scaled to [0, 255] and enlarged ``scale`` times."""
    k = np.asarray(kernel, dtype=np.float64)
    kh, kw, cin, cout = k.shape
    tiles = k if cin == 3 else k.mean(axis=2, keepdims=True)
    lo = tiles.min(axis=(0, 1, 2), keepdims=True)
    span = np.maximum(tiles.max(axis=(0, 1, 2), keepdims=True) - lo, 1e-12)
    tiles = np.rint((tiles - lo) / span * 255).astype(np.uint8)
    tiles = tiles.repeat(scale, axis=0).repeat(scale, axis=1)
    cols = int(math.ceil(math.sqrt(cout)))
    rows = -(-cout // cols)
    th, tw, c = tiles.shape[0], tiles.shape[1], tiles.shape[2]
    grid = np.zeros((rows * (th + 1) + 1, cols * (tw + 1) + 1, c), np.uint8)
    for i in range(cout):
        r, q = divmod(i, cols)
        grid[1 + r * (th + 1):1 + r * (th + 1) + th, 1 + q * (tw + 1):1 + q * (tw + 1) + tw] = tiles[..., i]
    return grid


class SkipNonFinite(Callback):
    """Skip batches whose loss is NaN or infinite instead of stopping ``fit``.

    Without this callback, a non-finite loss stops ``fit`` with
    :class:`cconv.model.NonFiniteLossError` naming the epoch and batch. With it, such a
    batch is skipped (no backward pass, no update) and counted.

    Parameters
    ----------
    max_skips : int or None, default None
        Stop anyway (with the error) once more than this many batches were skipped in
        one ``fit`` call. None means no limit.
    verbose : int, default 1
        Print a line for every skipped batch.

    Attributes
    ----------
    skipped : list of (epoch, batch, loss)
        Every skipped batch (epoch and batch counted from 0).
    """

    def __init__(self, max_skips=None, verbose=1):
        super().__init__()
        self.max_skips = None if max_skips is None else V.non_negative_int(max_skips, "max_skips")
        self.verbose = verbose
        self.skipped = []

    def on_train_begin(self, logs=None):
        self.skipped = []

    def on_nonfinite_loss(self, epoch, batch, loss):
        if self.max_skips is not None and len(self.skipped) >= self.max_skips:
            return False
        self.skipped.append((epoch, batch, float(loss)))
        if self.verbose:
            print(f"\nskipping epoch {epoch + 1} batch {batch + 1}: loss is {loss}")
        return True

    def __repr__(self):
        return f"SkipNonFinite(max_skips={self.max_skips})"


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``."""

    _HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
              "on_batch_begin", "on_batch_end", "on_train_batch_begin", "on_train_batch_end")

    def __init__(self, **hooks):
        super().__init__()
        for name, fn in hooks.items():
            if name not in self._HOOKS:
                raise ValueError(f"unknown hook {name!r}; expected one of {self._HOOKS}")
            if not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
            setattr(self, name, fn)
