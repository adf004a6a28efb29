"""Training checkpoints: what ``fit(checkpoint=...)`` saves and ``fit(resume=...)`` restores.

A checkpoint is a model file (:mod:`cconv.saving`; it loads with :func:`cconv.load_model`)
that also holds the position in training: the epoch, the states of every random generator
(shuffling, weight building, dropout masks), the history, the callbacks' states, and a
signature of the data and settings (shapes, batch size, shuffling) so that a resume with
different data is refused. With the same seed, data and thread count a resumed run ends
with the same weights, bit for bit, as an uninterrupted one.
"""
import json
import os

from . import io as _io
from . import saving

__all__ = ["data_signature", "training_state", "save", "restore", "load_training_state"]


def data_signature(xs, ys, batch_size, shuffle):
    """The data and settings a checkpoint must be resumed with (shapes, not values)."""
    def shapes(arrays):
        return list(arrays[0].shape) if len(arrays) == 1 else [list(a.shape) for a in arrays]
    return {"x_shape": shapes(xs), "y_shape": shapes(ys), "batch_size": int(batch_size),
            "shuffle": bool(shuffle)}


def training_state(model, epoch, epochs, signature, history, callbacks):
    """The JSON-able position in training after ``epoch`` epochs."""
    rng = model.get_rng_state()
    return {
        "epoch": epoch,
        "epochs": epochs,
        "stop_training": bool(model.stop_training),
        "fit_rng": rng["fit_rng"],
        "build_rng": rng["build_rng"],
        "layer_rngs": rng["layer_rngs"],
        "history": history.history,
        "data": signature,
        "callbacks": [{"class_name": type(cb).__name__, "state": cb.state_dict()}
                      for cb in callbacks if cb is not history],
    }


def save(model, path, epoch, epochs, signature, history, callbacks):
    """Write the model, its optimizer and the training position to ``path`` (atomically)."""
    state = training_state(model, epoch, epochs, signature, history, callbacks)
    saving.save_model(model, path, include_optimizer=True, training_state=state)


def load_training_state(path):
    """Return ``(document, arrays, training_state)`` of a checkpoint file (training_state may be None)."""
    document, arrays = saving.read(path)
    ts = document.get("training_state")
    return document, arrays, (None if ts is None else _io.join_tree(ts, arrays))


def restore(model, path, signature, history, callbacks):
    """Load a checkpoint into ``model`` (weights, optimizer state, generators), ``history``
    and ``callbacks``; return the number of epochs already done.

    Raises
    ------
    ValueError
        ``path`` is a plain model file, or was written for another architecture, other data
        or settings, or another optimizer.
    """
    path = os.fspath(path)
    document, arrays, state = load_training_state(path)
    if state is None:
        raise ValueError(f"{path!r} is a saved model, not a training checkpoint: write one with "
                         "fit(..., checkpoint=path)")
    if saving.architecture(json.loads(json.dumps(model.get_config()))) != saving.architecture(
            saving.model_config(document)):
        raise ValueError(f"cannot resume from {path!r}: it was written by a model with a different architecture")
    data = state.get("data", {})
    diffs = [f"{k}: checkpoint {data.get(k)!r}, now {v!r}" for k, v in signature.items() if data.get(k) != v]
    if diffs:
        raise ValueError(f"cannot resume from {path!r}: fit was called differently ({'; '.join(diffs)}); "
                         "an exact continuation needs the same data and settings")
    saved_opt = ((document.get("compile") or {}).get("optimizer") or {}).get("class_name")
    if saved_opt is not None and saved_opt != type(model.optimizer).__name__:
        raise ValueError(f"cannot resume from {path!r}: it was trained with {saved_opt}, this model is "
                         f"compiled with {type(model.optimizer).__name__}")
    epoch = _epochs_done(state, path)
    saving.assign_weights(model, saving.layer_arrays(document, arrays, path), path)
    if document.get("optimizer_state") is not None:
        model.optimizer.load_state_dict(_io.join_tree(document["optimizer_state"], arrays))
    model.set_rng_state({"fit_rng": state["fit_rng"], "build_rng": state["build_rng"],
                         "layer_rngs": state.get("layer_rngs", {})})
    for k, v in state.get("history", {}).items():
        history.history[k] = list(v)
    history.epoch = list(range(epoch))
    mine = [cb for cb in callbacks if cb is not history]
    for cb, saved in zip(mine, state.get("callbacks", [])):
        if type(cb).__name__ == saved.get("class_name"):
            cb.load_state_dict(saved.get("state", {}))
    model.stop_training = bool(state.get("stop_training", False))
    return epoch


def _epochs_done(state, path):
    """The checkpoint's epoch count, checked against its history (one row per epoch), so a
    crafted count costs nothing (``history.epoch`` is a list of that length)."""
    epoch, hist = state.get("epoch"), state.get("history", {})
    if not isinstance(hist, dict) or not all(isinstance(v, list) for v in hist.values()):
        raise ValueError(f"{path!r} is corrupted: malformed history in its training state")
    rows = max((len(v) for v in hist.values()), default=0)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= rows:
        raise ValueError(f"{path!r} is corrupted: its training state says {epoch!r} epochs were "
                         f"done, its history holds {rows}")
    return epoch
