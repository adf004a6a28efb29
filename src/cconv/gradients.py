"""Gradients with respect to a model's inputs, for any :class:`cconv.Model`.

``input_gradient`` differentiates the loss (the same fused loss training minimises) or one
output unit; ``gradient_of`` differentiates any objective of any layer's output (saliency
maps, activation maximization in :mod:`cconv.viz`, FGSM in :mod:`cconv.adversarial`).
Both run the model in inference mode (dropout off, BatchNorm running statistics) and leave
its parameters, gradients, layer state and random generators exactly as they were.
"""
import contextlib

import numpy as np

from . import training

__all__ = ["input_gradient", "gradient_of", "preserved_state"]


@contextlib.contextmanager
def preserved_state(model):
    """Restore every gradient, state array (BatchNorm statistics) and random generator
    of ``model`` when the block ends."""
    grads = [(g, g.copy()) for layer in model.layers for _, sub in layer.named_layers()
             for g in sub.grads.values()]
    states = [(a, a.copy()) for layer in model.layers for role, _, a in layer.weights() if role == "state"]
    rng = model.get_rng_state()
    try:
        yield
    finally:
        for dst, src in grads + states:
            np.copyto(dst, src)
        model.set_rng_state(rng)


def _inputs(model, x):
    return [np.ascontiguousarray(a, dtype=model.dtype) for a in training.input_arrays(model, x)]


def _result(model, dxs):
    return dxs[0] if len(model.inputs) == 1 and not isinstance(model.input_shape, list) else dxs


def input_gradient(model, x, y=None, loss=None, output_index=None, output=0):
    """Gradient of a scalar with respect to the input(s), in inference mode.

    Parameters
    ----------
    model : Model
    x : ndarray of shape (N, *input_shape), or a list / dict with several inputs
    y : ndarray (a list with several outputs), optional
        Targets for the loss (needed unless ``output_index`` is given).
    loss : str or loss object, optional
        Defaults to the compiled loss(es); given, it is used for every output. The loss is
        a batch mean, so each sample's gradient is divided by N.
    output_index : int or tuple of int, optional
        Instead of a loss, differentiate the sum over the batch of this unit of output
        ``output`` (e.g. a class probability; the index is into the output without the
        batch dim).
    output : int, default 0
        Which output ``output_index`` refers to.

    Returns
    -------
    ndarray of x's shape in the model's dtype (a list with several inputs)
    """
    xs = _inputs(model, x)
    if output_index is None:
        if y is None:
            raise ValueError("input_gradient needs y (targets for the loss) or output_index")
        if loss is None and not model.compiled:
            raise ValueError("model must be compiled before input_gradient() without loss=: "
                             "call model.compile(optimizer, loss) first")
        plan = training.LossPlan(model, None if loss is None else training.make_loss(loss))
        ys = training.target_arrays(model, y, xs[0].shape[0], plan_losses=plan.losses)
        with preserved_state(model):
            _, _, dxs = training.loss_and_gradients(model, xs, ys, plan, training=False, input_grad=True)
        return _result(model, dxs)
    if not 0 <= output < len(model.outputs):
        raise ValueError(f"output {output} is out of range for a model with {len(model.outputs)} outputs")
    idx = output_index if isinstance(output_index, tuple) else (output_index,)
    shape = model.outputs[output].shape[1:]
    try:
        np.zeros(shape)[idx]
    except (IndexError, TypeError):
        raise ValueError(f"output_index {output_index!r} is out of range for output shape {shape}") from None

    def unit(out):
        dy = np.zeros_like(out)
        dy[(slice(None),) + idx] = 1.0
        return float(out[(slice(None),) + idx].sum()), dy

    return gradient_of(model, xs, unit, output=output)[1]


def gradient_of(model, x, objective, layer=None, pre_activation=False, output=0):
    """``(value, d value / d x)`` for ``objective`` of a layer's output, in inference mode.

    Parameters
    ----------
    model : Model
    x : ndarray (a list or dict with several inputs)
    objective : callable
        ``objective(h) -> (value, dh)`` with ``h`` the layer's output for the batch and ``dh``
        the gradient of ``value`` with respect to it.
    layer : Layer or str, optional
        The layer whose output (of its first call) is differentiated; default the model's
        output number ``output``.
    pre_activation : bool or str, default False
        Use the values before the layer's final activation (see
        :meth:`cconv.Model.final_activation`): True for any activation, an activation name
        (``"softmax"``) for that one only.

    Returns
    -------
    value, ndarray of x's shape (a list with several inputs)
    """
    from .model import Model

    xs = _inputs(model, x)
    if layer is None:
        target = model.outputs[output]
    else:
        target = model.layer_output(layer)
    if target is model.outputs[0] and len(model.outputs) == 1:
        sub = model
    else:
        ins = model.inputs if len(model.inputs) > 1 else model.inputs[0]
        sub = Model(ins, target, name=f"{model.name}_to_{target.layer.name}", seed=0, dtype=model.dtype)
    pre = pre_activation
    if isinstance(pre, str):
        pre = sub.final_activation(0) == pre
    with preserved_state(model):
        out = sub.run(xs, False, cache=True, pre_activation=bool(pre))[0]
        value, dy = objective(out)
        dxs = sub.run_backward([np.ascontiguousarray(dy, dtype=out.dtype)], input_grad=True)
    return value, _result(model, dxs)
