"""Saving and loading models: the model level of cconv's file format.

:mod:`cconv.io` knows the file (a checksummed ``.npz`` of numeric arrays plus a JSON
document, written atomically, never unpickled); this module knows what a model puts in
it and how to rebuild one from it:

``document["model"]``
    ``{"class_name": "Sequential" or "Model", "config": model.get_config()}`` (files of
    format version 1 hold a Sequential's config itself).
``document["arrays"]``
    One entry per weight: ``{"member", "role": "param" | "state", "layer", "key", "dtype",
    "shape"}``; a sublayer's weight has a key like ``"conv/kernel"``.
``document["compile"]``, ``document["optimizer_state"]``, ``document["training_state"]``
    The optimizer, loss(es) and metrics; the optimizer's moments; the position in training
    of a checkpoint (:mod:`cconv.checkpoint`).

Format version 2 (this version) changed the meaning of the cross-entropies' default: files of
version 1 stored ``from_logits=True`` for a model ending with a softmax (cconv then fused the
two); loading such a file gives the loss ``from_logits=False``, which trains the same way.
"""
import os

import numpy as np

from . import _shapes_only
from . import io as _io
from ._version import __version__

__all__ = ["save_model", "load_model", "save_weights", "load_weights", "model_document", "model_config",
           "architecture", "read", "layer_arrays", "assign_weights"]


def _describe(obj):
    cfg = obj.get_config() if hasattr(obj, "get_config") else {}
    return {"class_name": type(obj).__name__, "config": cfg}


def compile_config(model):
    """The optimizer, loss(es), loss weights and metrics of a compiled model."""
    loss = [_describe(lo) for lo in model.loss] if isinstance(model.loss, list) else _describe(model.loss)
    return {"optimizer": _describe(model.optimizer), "loss": loss, "metrics": list(model.metrics),
            "loss_weights": model.loss_weights}


def model_document(model, include_optimizer=True, training_state=None):
    """Build the (document, arrays) pair that :func:`save_model` writes."""
    if not model.built:
        raise ValueError("cannot save a model that is not built: call model.build(input_shape) or fit it first")
    arrays = {}
    table = []
    i = 0
    for layer in model.layers:
        for role, key, arr in layer.weights():
            member = f"{'p' if role == 'param' else 's'}/{i}"
            i += 1
            arrays[member] = arr
            table.append({"member": member, "role": role, "layer": layer.name, "key": key,
                          "dtype": np.dtype(arr.dtype).str, "shape": list(arr.shape)})
    kind = "Sequential" if hasattr(model, "add") else "Model"      # a subclass saves as its base
    document = {
        "format": _io.FORMAT,
        "format_version": _io.FORMAT_VERSION,
        "cconv_version": __version__,
        "model": {"class_name": kind, "config": model.get_config()},
        "arrays": table,
        "compile": None,
        "optimizer_state": None,
        "training_state": None,
    }
    if getattr(model, "compiled", False):
        document["compile"] = compile_config(model)
        if include_optimizer:
            document["optimizer_state"] = _io.split_tree(model.optimizer.state_dict(), "o/", arrays)
    if training_state is not None:
        document["training_state"] = _io.split_tree(training_state, "t/", arrays)
    return document, arrays


def save_model(model, path, include_optimizer=True, training_state=None):
    """Save ``model`` to ``path`` (architecture, weights, layer state, optimizer state).

    Parameters
    ----------
    model : Model or Sequential
        A built model.
    path : str or os.PathLike
        Target file; conventionally ends in ``.npz``. Replaced atomically.
    include_optimizer : bool, default True
        Also store the optimizer state (moments, step counts) so training can continue.
    training_state : dict or None
        Position in training for resuming (used by ``fit(checkpoint=...)``).
    """
    document, arrays = model_document(model, include_optimizer, training_state)
    _io.write_file(path, document, arrays)


def read(path):
    """``(document, arrays)`` of a model file, verified (see :func:`cconv.io.read_file`)."""
    return _io.read_file(path)


def model_config(document):
    """``(class_name, config)`` of the model a document describes."""
    entry = document.get("model")
    if not isinstance(entry, dict):
        raise ValueError("the model file has no model description")
    if document.get("format_version", 1) >= 2:
        if not isinstance(entry.get("config"), dict):
            raise ValueError(f"malformed model description in the file: {entry!r:.200}")
        return entry.get("class_name"), entry["config"]
    return "Sequential", entry


def architecture(config):
    """What two models must share for one's weights and checkpoints to fit the other:
    the config without the name and the seed."""
    if isinstance(config, tuple):
        config = config[1]
    return {k: v for k, v in config.items() if k not in ("name", "seed")}


def layer_arrays(document, arrays, path):
    """Return {layer_name: {"param": {key: arr}, "state": {key: arr}}} from the file table."""
    out = {}
    table = document.get("arrays")
    if not isinstance(table, list):
        raise ValueError(f"{path!r} is malformed: missing array table")
    for entry in table:
        try:
            member, role, lname, key = entry["member"], entry["role"], entry["layer"], entry["key"]
        except (TypeError, KeyError):
            raise ValueError(f"{path!r} is malformed: bad array table entry {entry!r}") from None
        if member not in arrays:
            raise ValueError(f"{path!r} is malformed: array {member!r} ({lname}/{key}) is missing")
        if role not in ("param", "state"):
            raise ValueError(f"{path!r} is malformed: unknown array role {role!r}")
        out.setdefault(lname, {"param": {}, "state": {}})[role][key] = arrays[member]
    return out


def _match(model, arrays_by_layer):
    """``(problems, plan)``: every missing, unexpected or mis-shaped array as a sentence, and
    the ``(target, source)`` pairs to copy when there is none."""
    problems = []
    plan = []
    names = {layer.name for layer in model.layers}
    for lname in arrays_by_layer:
        if lname not in names:
            problems.append(f"the file has weights for layer {lname!r}, which the architecture does not have")
    for layer in model.layers:
        got = arrays_by_layer.get(layer.name, {"param": {}, "state": {}})
        expected = {"param": {}, "state": {}}
        for role, key, arr in layer.weights():
            expected[role][key] = arr
        for role in ("param", "state"):
            what = "parameter" if role == "param" else "state"
            for key, target in expected[role].items():
                if key not in got[role]:
                    problems.append(f"layer {layer.name!r} {what} {key!r} {tuple(target.shape)} is missing from the file")
                    continue
                src = got[role][key]
                if src.shape != target.shape:
                    problems.append(
                        f"layer {layer.name!r} {what} {key!r}: the file has shape {tuple(src.shape)}, "
                        f"the architecture expects {tuple(target.shape)}"
                    )
                    continue
                if not (np.issubdtype(src.dtype, np.number) or src.dtype == np.bool_):
                    problems.append(f"layer {layer.name!r} {what} {key!r} has non-numeric dtype {src.dtype}")
                    continue
                plan.append((target, src))
            for key in got[role]:
                if key not in expected[role]:
                    problems.append(f"the file has {what} {key!r} for layer {layer.name!r}, which the layer does not have")
    return problems, plan


def _refuse(problems, path):
    raise ValueError(f"weights in {path!r} do not match the model architecture:\n  - " + "\n  - ".join(problems))


def assign_weights(model, arrays_by_layer, path="<arrays>"):
    """Copy weights and layer state into a built ``model`` after validating every shape.

    Arrays are copied into the existing buffers (so an attached optimizer keeps pointing at
    them). Raises ValueError listing every missing, unexpected or mis-shaped array if
    anything does not match the architecture; nothing is modified in that case.
    """
    problems, plan = _match(model, arrays_by_layer)
    if problems:
        _refuse(problems, path)
    for target, src in plan:
        np.copyto(target, src, casting="unsafe")


def _weights_format(path, format):
    if format is None:
        return "safetensors" if os.fspath(path).endswith(".safetensors") else "cconv"
    if format not in ("cconv", "safetensors"):
        raise ValueError(f"format must be 'cconv', 'safetensors' or None (from the file name), "
                         f"got {format!r}")
    return format


def save_weights(model, path, format=None):
    """Save the weights and layer state of ``model`` (no optimizer state) to ``path``.

    ``format`` "safetensors" (the default for a name ending in ``.safetensors``) writes one
    tensor per weight named ``"<layer>/<key>"`` (see :mod:`cconv.safetensors`); "cconv" (the
    default otherwise) writes cconv's model file without the optimizer state. Either is
    read back by :func:`load_weights`; both are written atomically.
    """
    if not model.built:
        raise ValueError("cannot save the weights of a model that is not built")
    if _weights_format(path, format) == "cconv":
        save_model(model, path, include_optimizer=False)
        return
    from . import safetensors
    tensors = {f"{layer.name}/{key}": arr for layer in model.layers for _, key, arr in layer.weights()}
    safetensors.save_file(tensors, path, metadata={"format": "cconv-weights",
                                                   "cconv_version": __version__,
                                                   "layout": "NHWC activations, HWIO kernels"})


def _safetensors_arrays(model, path):
    """The tensors of a safetensors file as :func:`assign_weights` takes them (the role of
    each weight is the model's; a name the model lacks is reported by assign_weights)."""
    from . import safetensors
    roles = {(layer.name, key): role for layer in model.layers for role, key, _ in layer.weights()}
    out = {}
    for name, arr in safetensors.load_file(path).items():
        lname, _, key = name.partition("/")
        role = roles.get((lname, key), "param")
        out.setdefault(lname, {"param": {}, "state": {}})[role][key] = arr
    return out


def load_weights(model, path):
    """Load the weights and layer state of the file at ``path`` into ``model``: a cconv model
    or weights file, or a safetensors file (told apart by their contents)."""
    from . import safetensors
    path = os.fspath(path)
    if safetensors.is_safetensors(path):
        assign_weights(model, _safetensors_arrays(model, path), path)
        return
    document, arrays = read(path)
    assign_weights(model, layer_arrays(document, arrays, path), path)


def _loss_from_config(cfg, model, version, index):
    from . import losses
    loss = losses.deserialize(cfg)
    if version < 2 and getattr(loss, "from_logits", False) and loss.fuses_with is not None \
            and model.final_activation(index) == loss.fuses_with:
        # version 1 stored from_logits=True for a softmax (sigmoid) fused with the loss
        loss = type(loss).from_config({**loss.get_config(), "from_logits": False})
    return loss


def _compile_from_config(model, cfg, version):
    from . import optim
    if not isinstance(cfg, dict):
        raise ValueError(f"malformed compile settings in the model file: {cfg!r:.100}")
    loss_cfg = cfg.get("loss")
    if isinstance(loss_cfg, list):
        loss = [_loss_from_config(c, model, version, i) for i, c in enumerate(loss_cfg)]
    else:
        loss = _loss_from_config(loss_cfg, model, version, 0)
        if len(model.outputs) > 1:
            loss = [_loss_from_config(loss_cfg, model, version, i) for i in range(len(model.outputs))]
    model.compile(optim.deserialize(cfg.get("optimizer")), loss, metrics=tuple(cfg.get("metrics") or ()),
                  loss_weights=cfg.get("loss_weights"))


def load_model(path, compile=True, custom_objects=None):
    """Load a model saved by :meth:`cconv.Model.save` / :func:`save_model`, or an ONNX model
    (a path ending in ``.onnx``: see :func:`cconv.onnx.load`, which needs the ``onnx``
    package; ``compile`` and ``custom_objects`` do not apply to it).

    Nothing in the file is executed: the file is a zip of numeric ``.npy`` arrays read with
    ``allow_pickle=False`` and a JSON config; layers are rebuilt from their class names in
    :mod:`cconv.layers` only. Files written by earlier cconv versions load too.

    Parameters
    ----------
    path : str or os.PathLike
    compile : bool, default True
        Re-create the optimizer and loss saved with the model (with the optimizer state),
        so ``fit`` can continue where it stopped.
    custom_objects : dict of str to Layer subclass, optional
        Your own layer classes, by the class name stored in the file. Only these and the
        classes of :mod:`cconv.layers` can be instantiated.

    Returns
    -------
    Model or Sequential

    Raises
    ------
    ValueError
        Corrupted, truncated, tampered-with or foreign file; unknown layer class;
        weights that do not match the architecture (every mismatch is listed).
    """
    from .model import Model, Sequential

    path = os.fspath(path)
    if path.lower().endswith(".onnx"):
        from . import onnx
        return onnx.load(path)
    document, arrays = read(path)
    kind, config = model_config(document)
    if kind not in ("Sequential", "Model"):
        raise ValueError(f"{path!r} holds a model of class {kind!r}; cconv rebuilds Sequential and Model")
    cls = Sequential if kind == "Sequential" else Model
    by_layer = layer_arrays(document, arrays, path)
    # The architecture's weights are compared with the file's before any is allocated: a
    # small file declaring a huge layer (or input) costs what the file holds, not what it
    # declares.
    with _shapes_only.shapes_only():
        skeleton = cls.from_config(config, custom_objects=custom_objects)
    if not skeleton.built:
        raise ValueError(f"{path!r} has no input shape in its architecture; cannot rebuild the weights")
    problems, _ = _match(skeleton, by_layer)
    if problems:
        _refuse(problems, path)
    model = cls.from_config(config, custom_objects=custom_objects)
    assign_weights(model, by_layer, path)
    if compile and document.get("compile"):
        _compile_from_config(model, document["compile"], int(document.get("format_version", 1)))
        if document.get("optimizer_state") is not None:
            model.optimizer.load_state_dict(_io.join_tree(document["optimizer_state"], arrays))
    return model
