"""Models: :class:`Model` (a graph of layer calls, Keras's functional API) and
:class:`Sequential` (a stack of layers: the same class on a chain).

A functional model::

    import cconv
    from cconv.layers import Add, Conv2D, Dense, Flatten, ReLU

    inp = cconv.Input(shape=(8, 8, 1))
    x = Conv2D(16, 3, padding="same", activation="relu")(inp)
    y = Conv2D(16, 3, padding="same")(x)
    x = ReLU()(Add()([x, y]))                           # a residual connection
    out = Dense(10, activation="softmax")(Flatten()(x))
    model = cconv.Model(inputs=inp, outputs=out, seed=0)
    model.compile("adam", "categorical_crossentropy")
    model.fit(x_train, y_train, epochs=10)

A layer called twice shares its weights (their gradients are summed); a tensor used by
several layers receives the sum of their gradients. Several inputs (``fit([x1, x2], y)``,
or a dict by input name) and several outputs (one loss each, see :meth:`Model.compile`)
are supported.

This module holds the structure and its forward and backward passes; the training loop
is :mod:`cconv.training`, checkpoints :mod:`cconv.checkpoint`, input gradients
:mod:`cconv.gradients`, files :mod:`cconv.saving`. ``Model``'s methods are the public
entry points to all of them.

Reproducibility
---------------
All randomness comes from ``numpy.random.Generator`` objects derived from ``seed`` (weights
and dropout masks from one stream, the shuffling of ``fit`` from another, ``shuffle_rng``).
The same seed and the same thread count (``cconv.set_num_threads``) give the same weights
after ``fit``; ``fit(checkpoint=path)`` and ``fit(resume=path)`` continue a run exactly.
"""
import re

import numpy as np

from . import _config
from . import _validate as V
from . import functional as F
from ._printable import printable
from . import gradients as _gradients
from . import training as _training
from .layers import Layer, deserialize, serialize
from .symbolic import Input, InputLayer, SymbolicTensor
from .training import History, NonFiniteLossError

#: Inference on inputs of at most this many elements in all runs its kernels on the calling
#: thread (see _config.thread_limit): below it, splitting work between threads costs more
#: than it saves. A 64x64x3 image (12,288) is above it: on a quiet 2-core machine the paper
#: network's batch-1 predict took 0.38 ms at 2 threads against 0.57 ms on one. On a machine
#: whose cores are taken by other jobs the threads wait for each other at every kernel and
#: one thread is faster (7-14 ms against 0.7-1.0 ms here once): cconv.set_num_threads(1).
INFERENCE_SERIAL_MAX = 1 << 12

__all__ = ["Model", "Sequential", "Input", "History", "load_model", "NonFiniteLossError"]


def _default_name(layer):
    """``Conv2D -> conv2d``, ``MaxPool2D -> max_pool2d``, ``LeakyReLU -> leaky_relu``."""
    cls = type(layer).__name__.replace("ReLU", "Relu")
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", cls).lower()


def _shape_str(shape):
    return "(" + ", ".join(["None"] + [str(s) for s in shape]) + ")"


def _unique_name(base, taken):
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def _check_name(name, what):
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"{what} name must be a non-empty str without '/', got {name!r}")


def _as_list(value, what):
    if isinstance(value, SymbolicTensor):
        return [value], True
    if isinstance(value, (list, tuple)) and value:
        return list(value), False
    raise TypeError(f"{what} must be a symbolic tensor (from cconv.Input or a layer call) or a "
                    f"non-empty list of them, got {type(value).__name__}")


class _Step:
    """One node of the execution plan: a layer applied to tensor slots."""

    __slots__ = ("layer", "inputs", "output", "multiple", "node")

    def __init__(self, node, slot):
        self.node = node
        self.layer = node.layer
        self.inputs = [slot[id(t)] for t in node.inputs]
        self.output = slot[id(node.output)]
        self.multiple = node.multiple


class Model:
    """A network of layers from ``inputs`` to ``outputs`` (Keras's functional model).

    Parameters
    ----------
    inputs : SymbolicTensor or list of SymbolicTensor
        Tensors made by :func:`cconv.Input`.
    outputs : SymbolicTensor or list of SymbolicTensor
        Tensors computed from ``inputs`` by layer calls.
    name : str, default "model"
    seed : int, optional
        Seed of every random choice (weights, dropout masks, shuffling). None draws one from
        the OS; it is recorded in ``model.seed``.
    dtype : {"float32", "float64"}, default "float32"
        Dtype of the weights and activations. Inputs are converted to it.

    Attributes
    ----------
    inputs, outputs : list of SymbolicTensor
    layers : list of Layer
        Every layer once (a shared layer too), in the order they first run; the inputs are
        not layers.
    input_names, output_names : list of str
    input_shape, output_shape : tuple, or list of tuples with several inputs / outputs
        Sample shapes, without the batch dimension.
    built, compiled : bool
    optimizer, loss, loss_weights, metrics
        Set by :meth:`compile` (``loss`` is a list with several outputs).
    shuffle_rng : numpy.random.Generator
        Where ``fit`` draws the order of the samples from.
    stop_training : bool
        A callback sets it to end ``fit`` after the current epoch.
    history : History or None
        Of the last ``fit``.

    Raises
    ------
    TypeError
        ``inputs`` that are not :func:`cconv.Input` tensors, outputs that are not symbolic.
    ValueError
        An output that depends on a tensor not computed from ``inputs`` (an Input left out,
        or a tensor of another model), an input no output depends on, duplicate names, or a
        layer that cannot take its input (the message names the layers and shapes).
    """

    def __init__(self, inputs=None, outputs=None, name="model", seed=None, dtype="float32"):
        self.name = str(name)
        self.dtype = V.float_dtype(dtype)
        if seed is None:
            seed = int(np.random.SeedSequence().entropy)
        self.seed = V.seed(seed)
        build_ss, fit_ss = np.random.SeedSequence(self.seed).spawn(2)
        self._build_rng = np.random.default_rng(build_ss)
        self.shuffle_rng = np.random.default_rng(fit_ss)
        self.optimizer = None
        self.loss = None
        self.loss_weights = None
        self.metrics = ()
        self.compiled = False
        self.stop_training = False
        self.history = None
        self.built = False
        self.layers = []
        self.inputs, self.outputs = [], []
        self._tape = None
        self._plans = {}
        if type(self) is Model or inputs is not None or outputs is not None:
            if inputs is None or outputs is None:
                raise TypeError("Model needs inputs= and outputs= (or use Sequential)")
            self._init_graph(inputs, outputs)

    def __getstate__(self):
        """Copies and pickles leave out the inference plans (functions bound to this
        model's layers): a copy makes its own on its first inference call."""
        state = self.__dict__.copy()
        state["_plans"] = {}
        return state

    # ------------------------------------------------------------------ structure
    def _init_graph(self, inputs, outputs):
        ins, self._single_input = _as_list(inputs, "inputs")
        outs, self._single_output = _as_list(outputs, "outputs")
        for i, t in enumerate(ins):
            if not isinstance(t, SymbolicTensor):
                raise TypeError(f"inputs[{i}] is a {type(t).__name__}, not a tensor made by cconv.Input")
            if not isinstance(t.layer, InputLayer):
                raise TypeError(f"inputs[{i}] is {t.describe()}, not a tensor made by cconv.Input: a "
                                f"model's inputs are the tensors cconv.Input returns")
        if len({id(t) for t in ins}) != len(ins):
            raise ValueError("the same Input appears twice in inputs")
        for i, t in enumerate(outs):
            if not isinstance(t, SymbolicTensor):
                raise TypeError(f"outputs[{i}] is a {type(t).__name__}, not a symbolic tensor (the "
                                f"result of calling a layer on cconv.Input tensors)")
        nodes = self._topological_nodes(ins, outs)
        self._name_everything(ins, nodes)
        self.inputs, self.outputs = ins, outs
        self._nodes = nodes
        self.layers = list({id(n.layer): n.layer for n in nodes}.values())
        self._build_layers()
        owner = {}
        for layer in self.layers:
            for path, sub in layer.named_layers():
                if id(sub) in owner and (sub.weights() or sub.get_rng_state()):
                    raise ValueError(f"layer {sub.name or type(sub).__name__!r} is held by both "
                                     f"{owner[id(sub)]!r} and {layer.name + '/' + path!r}: its weights "
                                     f"would be updated twice; share a layer by calling it twice instead")
                owner[id(sub)] = layer.name + "/" + path
        slot = {id(t): i for i, t in enumerate(ins)}
        for n in nodes:
            slot[id(n.output)] = len(slot)
        self._n_slots = len(slot)
        self._steps = [_Step(n, slot) for n in nodes]
        first = {}
        for k, st in enumerate(self._steps):
            first.setdefault(id(st.layer), k)
        # A layer's gradients are final once the backward pass (which runs the steps in
        # reverse) has passed its first call.
        self._grads_final = [first[id(st.layer)] == k for k, st in enumerate(self._steps)]
        self._producer = {st.output: st for st in self._steps}
        self._slot_shape = [t.shape[1:] for t in ins] + [n.output.shape[1:] for n in nodes]
        self._out_slots = [slot[id(t)] for t in outs]
        consumers = [0] * self._n_slots
        for st in self._steps:
            for s in st.inputs:
                consumers[s] += 1
        for s in self._out_slots:
            consumers[s] += 1
        self._consumers = consumers
        self._final = [self._final_activation(t, consumers, slot) for t in outs]
        self._plans = {}
        self.built = True
        if self.compiled:
            self.optimizer.attach(self.parameters())

    def _topological_nodes(self, ins, outs):
        """Layer calls from the inputs to the outputs, each after the calls it depends on."""
        allowed = {id(t) for t in ins}
        order, state = [], {}
        for k, out in enumerate(outs):
            stack = [(out, False)]
            while stack:
                t, done = stack.pop()
                node = t.node
                if done:
                    if state.get(id(node)) != "done":
                        state[id(node)] = "done"
                        order.append(node)
                    continue
                if id(t) in allowed or state.get(id(node)) == "done":
                    continue
                if isinstance(node.layer, InputLayer):
                    raise ValueError(
                        f"outputs[{k}] depends on {t.describe()}, which is not in inputs: list every "
                        f"Input the outputs are computed from (a tensor of another model brings its "
                        f"own Inputs)")
                if state.get(id(node)) == "open":
                    continue
                state[id(node)] = "open"
                stack.append((t, True))
                stack.extend((u, False) for u in reversed(node.inputs))
        used = {id(u) for n in order for u in n.inputs} | {id(t) for t in outs}
        for i, t in enumerate(ins):
            if id(t) not in used:
                raise ValueError(f"inputs[{i}] ({t.describe()}) is not connected to any output")
        return order

    def _name_everything(self, ins, nodes):
        taken = set()
        for t in ins:
            if t.layer.name is not None:
                _check_name(t.layer.name, "an Input")
                if t.layer.name in taken:
                    raise ValueError(f"duplicate Input name {t.layer.name!r}")
                taken.add(t.layer.name)
        layers = list({id(n.layer): n.layer for n in nodes}.values())
        for layer in layers:
            if layer.name is not None:
                _check_name(layer.name, "layer")
                if layer.name in taken:
                    raise ValueError(f"duplicate layer name {layer.name!r}: layer and input names "
                                     f"must be unique within a model")
                taken.add(layer.name)
        for t in ins:
            if t.layer.name is None:
                t.layer.name = _unique_name("input", taken)
                taken.add(t.layer.name)
        for layer in layers:
            if layer.name is None:
                layer.name = _unique_name(_default_name(layer), taken)
                taken.add(layer.name)

    def _build_layers(self):
        """Build each layer for its first call (with the model's generator and dtype) and
        check every call against the weights."""
        seen = set()
        for node in self._nodes:
            layer = node.layer
            shapes = [t.shape[1:] for t in node.inputs]
            shape = shapes if node.multiple else shapes[0]
            try:
                if id(layer) not in seen and not layer.built:
                    layer.build(shape, self._build_rng, self.dtype)
                elif layer.dtype is not None and np.dtype(layer.dtype) != self.dtype:
                    raise ValueError(f"it was already built with dtype {np.dtype(layer.dtype).name}, "
                                     f"the model uses {self.dtype.name}")
                out = layer.check_input_shape(shape)
            except (ValueError, TypeError) as exc:
                where = " and ".join(t.describe() for t in node.inputs)
                raise type(exc)(f"layer {layer.name!r} ({type(layer).__name__}) cannot take input "
                                f"{where}: {exc}") from exc
            if tuple(out) != node.output.shape[1:]:
                raise ValueError(f"layer {layer.name!r} now gives output {_shape_str(out)} for {where}, "
                                 f"but {_shape_str(node.output.shape[1:])} when it was called")
            seen.add(id(layer))

    def _final_activation(self, out, consumers, slot):
        """How the activation that makes ``out`` can be left out: ``(name, kind)`` with kind
        "layer" (an activation layer of its own) or "fused" (an ``activation=`` argument)."""
        node = out.node
        layer = node.layer
        if isinstance(layer, InputLayer) or consumers[slot[id(out)]] != 1:
            return None, None              # an input, or also used inside the model
        name = getattr(layer, "activation_name", "")
        if name and not node.multiple and len(node.inputs) == 1:
            if getattr(layer, "axis", -1) in (-1, len(out.shape) - 1):
                return name, "layer"
            return None, None
        act = getattr(layer, "activation", None)
        if act is not None and getattr(act, "activation_name", "") and \
                getattr(act, "axis", -1) in (-1, len(out.shape) - 1):
            return act.activation_name, "fused"
        return None, None

    def final_activation(self, index=0):
        """The name of the activation that produces output ``index`` (``"softmax"``,
        ``"sigmoid"``, ``"relu"``...), when ``forward(..., pre_activation=True)`` can leave
        it out; else None."""
        self._require_built("final_activation()")
        return self._final[index][0]

    @property
    def input_names(self):
        return [t.layer.name for t in self.inputs]

    @property
    def output_names(self):
        return [t.layer.name for t in self.outputs]

    @property
    def input_shape(self):
        if not self.built:
            return None
        shapes = [t.shape[1:] for t in self.inputs]
        return shapes[0] if self._single_input else shapes

    @property
    def output_shape(self):
        if not self.built:
            return None
        shapes = [t.shape[1:] for t in self.outputs]
        return shapes[0] if self._single_output else shapes

    def parameters(self):
        """``[(name, param, grad)]`` of every trainable weight (``"conv2d_1/kernel"``,
        ``"block/conv/kernel"`` for a sublayer); a shared layer's once."""
        self._require_built("parameters()")
        return [(f"{layer.name}/{n}", p, g) for layer in self.layers for n, p, g in layer.parameters()]

    def count_params(self):
        """Total number of weights (trainable and not, including layer state)."""
        self._require_built("count_params()")
        return sum(layer.count_params() for layer in self.layers)

    def get_layer(self, name):
        """The layer called ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r}; layers: {[l.name for l in self.layers]}")

    def layer_output(self, layer, call=0):
        """The symbolic output of a layer (object or name) in this model, of its ``call``-th
        call for a shared layer: ``cconv.Model(model.inputs, model.layer_output("conv2"))``
        is a feature extractor sharing the weights."""
        self._require_built("layer_output()")
        name = layer if isinstance(layer, str) else getattr(layer, "name", None)
        nodes = [n for n in self._nodes if n.layer is layer or n.layer.name == name]
        if not nodes:
            raise ValueError(f"no layer {name!r} in this model; layers: {[l.name for l in self.layers]}")
        if not 0 <= call < len(nodes):
            raise ValueError(f"layer {name!r} is called {len(nodes)} time(s) in this model, got call={call}")
        return nodes[call].output

    def zero_grad(self):
        """Set every layer's gradients to zero (:meth:`backward` does it first)."""
        for layer in self.layers:
            layer.zero_grads()

    def _require_built(self, what):
        if not self.built:
            raise ValueError(f"{what} needs a built model: give input_shape= or call build(input_shape) first")

    # ------------------------------------------------------------------ forward / backward
    def forward(self, x, training=False, *, cache=None, pre_activation=False):
        """Run the network on a batch.

        Parameters
        ----------
        x : ndarray of shape (N, *input_shape), or a list (dict by name) with several inputs
            Converted to the model's dtype.
        training : bool, default False
            Training mode: dropout active, batch statistics in BatchNorm.
        cache : bool, optional
            Keep what :meth:`backward` needs (default: ``training``).
        pre_activation : bool or list of bool, default False
            Per output (or for all): return the values before its final activation (see
            :meth:`final_activation`), the logits of a softmax output; :meth:`backward` then
            starts from there.

        Returns
        -------
        ndarray of shape (N, *output_shape), or a list with several outputs
        """
        xs = _training.input_arrays(self, x)
        outs = self.run([np.ascontiguousarray(a, dtype=self.dtype) for a in xs], training,
                        cache=cache, pre_activation=pre_activation)
        return outs[0] if self._single_output else outs

    def run(self, xs, training=False, cache=None, pre_activation=False):
        """:meth:`forward` on a list of arrays already checked and converted to the model's
        dtype (one per input); returns the list of outputs. The training engine's entry."""
        cache = bool(training) if cache is None else bool(cache)
        training = bool(training)
        if not cache and not training and sum(a.size for a in xs) <= INFERENCE_SERIAL_MAX:
            with _config.thread_limit(1), _config.blas_threads(1):
                return self._run(xs, False, False, pre_activation)
        with _config.blas_threads(1):       # once for the pass (see _config.blas_threads)
            return self._run(xs, training, cache, pre_activation)

    def _run(self, xs, training, cache, pre_activation):
        if not (training or cache or pre_activation):
            return self._inference_plan(xs).run(xs, self.dtype)
        pre = pre_activation if isinstance(pre_activation, (list, tuple)) else \
            [bool(pre_activation)] * len(self.outputs)
        if len(pre) != len(self.outputs):
            raise ValueError(f"pre_activation has {len(pre)} entries for {len(self.outputs)} outputs")
        skip, unfused, out_slots = set(), set(), list(self._out_slots)
        for i, p in enumerate(pre):
            name, kind = self._final[i]
            if p and kind == "layer":
                skip.add(out_slots[i])
                out_slots[i] = self._producer[out_slots[i]].inputs[0]
            elif p and kind == "fused":
                unfused.add(out_slots[i])
        values = [None] * self._n_slots
        values[:len(xs)] = xs
        remaining = list(self._consumers) if not cache else None
        saved = [None] * len(self._steps) if cache else None
        joint = {}      # step k + 1 -> the backward of steps k and k + 1 in one (fusions)
        dt = self.dtype
        infer = not cache and not training
        fused_away = -1
        for k, st in enumerate(self._steps):
            if st.output in skip or k == fused_away:
                continue
            if st.multiple:
                x = [_conform(values[s], dt) for s in st.inputs]
            else:
                x = _conform(values[st.inputs[0]], dt)
            if st.output in unfused:
                y, s = st.layer.call(x, training, apply_activation=False)
            elif infer:
                fused = self._fusion(k, out_slots, skip)
                if fused is None:
                    y = st.layer.infer(x)
                else:       # this step and the next in one: the next one's output
                    y = fused(x)
                    fused_away = k + 1
                    self._release(st.inputs, values, remaining)
                    st = self._steps[k + 1]
            else:
                fused = self._fusion(k, out_slots, skip, training=True) if cache else None
                if fused is None:
                    y, s = st.layer.call(x, training)
                else:       # this step and the next in one, each with its own saved
                    y, saved[k], s = fused(x, training)
                    fused_away = k + 1
                    if getattr(fused, "backward", None) is not None:
                        joint[k + 1] = fused.backward
                    k, st = k + 1, self._steps[k + 1]
            values[st.output] = y
            if cache:
                saved[k] = s
            else:
                self._release(st.inputs, values, remaining)
        self._tape = (saved, skip, out_slots, xs, joint) if cache else None
        return [values[s] for s in out_slots]

    def _inference_plan(self, xs):
        """The :class:`_InferencePlan` for inputs of these shapes under the current
        :func:`cconv.functional.route_state`, made on first use and kept (the last
        ``_PLANS_MAX`` of them; a change to the graph drops them)."""
        key = (tuple(a.shape for a in xs), F.route_state())
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= _PLANS_MAX:
                self._plans.pop(next(iter(self._plans), None), None)
            plan = self._plans[key] = _InferencePlan(self, key[0])
        return plan

    @staticmethod
    def _release(slots, values, remaining):
        """Drop the values of ``slots`` whose last consumer has run."""
        for s in slots:
            remaining[s] -= 1
            if remaining[s] == 0:
                values[s] = None

    def _fusable(self, k, out_slots, skip):
        """Whether step ``k + 1`` alone consumes step ``k``'s output, which is no output of
        the model (``out_slots``) and not left out (``skip``)."""
        if k + 1 >= len(self._steps):
            return False
        st, nxt = self._steps[k], self._steps[k + 1]
        return not (st.multiple or nxt.multiple or nxt.inputs[0] != st.output
                    or nxt.output in skip or self._consumers[st.output] != 1
                    or st.output in out_slots)

    def _fusion(self, k, out_slots, skip, training=False):
        """The layers' inference (or training) fusion of step ``k`` with step ``k + 1``
        (:meth:`cconv.layers.Layer.inference_fusion`, ``training_fusion``) when step
        ``k + 1`` alone consumes step ``k``'s output, which is no output of the model; else
        None."""
        if not self._fusable(k, out_slots, skip):
            return None
        st, nxt = self._steps[k], self._steps[k + 1]
        if training:
            return st.layer.training_fusion(nxt.layer)
        return st.layer.inference_fusion(nxt.layer)

    def backward(self, dy, input_grad=False):
        """Backpropagate ``dy`` (the gradient of a loss with respect to what the last
        ``forward(..., cache=True)`` or ``forward(training=True)`` returned).

        The layers' gradients are zeroed first, then filled (summed over the calls of a
        shared layer). Returns ``dL/dx`` (a list with several inputs) when ``input_grad``
        is True, else None: the first layers then skip the input gradient.
        """
        dys = dy if isinstance(dy, (list, tuple)) else [dy]
        if len(dys) != len(self.outputs):
            raise ValueError(f"backward needs one dy per output ({len(self.outputs)}), got {len(dys)}")
        dxs = self.run_backward(dys, input_grad)
        if not input_grad:
            return None
        return dxs[0] if self._single_input else dxs

    def run_backward(self, dys, input_grad=False, grads_ready=None):
        """:meth:`backward` on a list of gradients (None for an output without one); returns
        the list of input gradients with ``input_grad``, else None.

        ``grads_ready(layer)``, if given, is called for each layer as soon as its gradients
        are final in this pass (after the backward of its first call, for a shared layer),
        while the layers before it are still to run: data-parallel training
        (:mod:`cconv.distributed`) starts sending them there.
        """
        if self._tape is None:
            raise RuntimeError("backward() needs a preceding forward(x, training=True) (or cache=True); "
                               "each backward releases what forward kept")
        with _config.blas_threads(1):       # once for the pass (see _config.blas_threads)
            return self._run_backward(dys, input_grad, grads_ready)

    def _run_backward(self, dys, input_grad, grads_ready):
        saved, skip, out_slots, xs, joint = self._tape
        self._tape = None
        self.zero_grad()
        dt = self.dtype
        grads = [None] * self._n_slots
        owned = [False] * self._n_slots
        for i, (s, g) in enumerate(zip(out_slots, dys)):
            if g is None:
                continue
            g = np.asarray(g)
            if g.ndim == 0 or g.shape[1:] != self._slot_shape[s] or g.shape[0] != xs[0].shape[0]:
                raise ValueError(f"dy for output {i} must have shape ({xs[0].shape[0]}, "
                                 f"{', '.join(map(str, self._slot_shape[s]))}), got {g.shape}")
            _accumulate(grads, owned, s, np.ascontiguousarray(g, dtype=dt))
        requires = [bool(input_grad)] * len(xs) + [False] * (self._n_slots - len(xs))
        for st in self._steps:
            if st.output not in skip:
                requires[st.output] = any(requires[s] for s in st.inputs) or _trainable(st.layer)
        k = len(self._steps) - 1
        while k >= 0:
            done = [k]
            if k in joint:          # steps k - 1 and k fused: one backward for both
                self._backward_step(k, grads, owned, requires, (saved[k - 1], saved[k]), skip,
                                    joint[k])
                done = [k, k - 1]
            else:
                self._backward_step(k, grads, owned, requires, saved[k], skip)
            for j in done:
                saved[j] = None     # what step j kept goes as soon as its backward is done
                if grads_ready is not None and self._grads_final[j]:
                    grads_ready(self._steps[j].layer)
            k -= len(done)
        if not input_grad:      # no input gradient asked for: none built (a training step)
            return None
        return [grads[i] if grads[i] is not None else np.zeros_like(x) for i, x in enumerate(xs)]

    def _backward_step(self, k, grads, owned, requires, saved, skip, joint=None):
        """Backward of step ``k``: its layer adds into its grads; its input gradients are
        accumulated into ``grads``. With ``joint`` (a training fusion's backward, see
        :meth:`cconv.layers.Layer.training_fusion`), steps ``k - 1`` and ``k`` in one call:
        ``saved`` holds both steps' saved, and the gradient goes to step ``k - 1``'s
        input (step ``k`` alone consumes step ``k - 1``'s output)."""
        st = self._steps[k]
        g = grads[st.output]
        grads[st.output] = None
        if g is None or st.output in skip or not requires[st.output]:
            return
        if joint is not None:
            st = self._steps[k - 1]     # the inputs, layer and checks of the first step
        layer = st.layer
        layer.need_input_grad = any(requires[s] for s in st.inputs)
        # A gradient the model owns (a sum of its own, or a layer's new array) is the
        # layer's to overwrite: a fused ReLU's gradient then needs no second buffer.
        layer.dy_writable = owned[self._steps[k].output] and g.dtype == self.dtype
        try:
            if joint is not None:
                dx = joint(_conform(g, self.dtype), *saved)
            else:
                dx = layer.backward(_conform(g, self.dtype), saved)
        finally:
            layer.need_input_grad = True
            layer.dy_writable = False
        if not any(requires[s] for s in st.inputs):
            return
        parts = dx if st.multiple else [dx]
        if len(parts) != len(st.inputs):
            raise ValueError(f"layer {layer.name!r} returned {len(parts)} gradients for "
                             f"{len(st.inputs)} inputs")
        fresh = vars(type(layer)).get("fresh_input_grad", False) and not st.multiple
        for s, part, t in zip(st.inputs, parts, st.node.inputs):
            if part is None or not requires[s]:
                continue
            if part.shape[1:] != t.shape[1:]:
                raise ValueError(f"layer {layer.name!r} returned an input gradient of shape "
                                 f"{part.shape} for an input of shape {_shape_str(t.shape[1:])}")
            _accumulate(grads, owned, s, part, fresh)

    # ------------------------------------------------------------------ training (cconv.training)
    def compile(self, optimizer="adam", loss="categorical_crossentropy", metrics=("accuracy",),
                loss_weights=None):
        """Choose the optimizer, the loss(es) and the metrics.

        Parameters
        ----------
        optimizer : str or optimizer object
            ``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"`` (default settings) or an
            instance from :mod:`cconv.optim`.
        loss : str, loss object, or a list / dict (by output name) of them
            ``"categorical_crossentropy"``, ``"mse"``, ``"binary_crossentropy"`` or an
            instance from :mod:`cconv.losses`. One loss is used for every output; otherwise
            one per output.
        metrics : sequence of str or cconv.metrics.Metric, default ("accuracy",)
            ``"accuracy"``, ``"top_k_accuracy"``, ``"precision"``, ``"recall"``, ``"f1"``
            (macro averages) or :mod:`cconv.metrics` objects, computed for each output they
            apply to.
        loss_weights : list or dict of float, optional
            With several outputs, the training loss is ``sum(w_i * loss_i)`` (default all 1).

        Raises
        ------
        ValueError
            Unknown names; a loss list of the wrong length; a cross-entropy with
            ``from_logits=True`` on an output that ends with its softmax (sigmoid).
        TypeError
            An object that is not an optimizer or a loss.
        """
        _training.compile(self, optimizer, loss, metrics, loss_weights)
        return self

    def fit(self, x, y=None, epochs=1, batch_size=None, validation_split=0.0, validation_data=None,
            shuffle=True, callbacks=None, verbose=1, checkpoint=None, resume=None, sample_weight=None,
            class_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_freq=1, distributed=False):
        """Train the model; see :func:`cconv.training.fit` for every parameter.

        ``x`` is an array (a list / dict by input name of arrays with several inputs) with
        ``y`` beside it, or a :class:`cconv.data.Dataset`, a sequence or an iterable of
        ``(x, y)`` / ``(x, y, sample_weight)`` batches. ``distributed=True`` trains
        data-parallel over the processes of ``mpirun`` (:mod:`cconv.distributed`). Returns a
        :class:`History`.
        """
        return _training.fit(self, x, y, epochs=epochs, batch_size=batch_size,
                            validation_split=validation_split, validation_data=validation_data,
                            shuffle=shuffle, callbacks=callbacks, verbose=verbose,
                            checkpoint=checkpoint, resume=resume, sample_weight=sample_weight,
                            class_weight=class_weight, initial_epoch=initial_epoch,
                            steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
                            validation_freq=validation_freq, distributed=distributed)

    def evaluate(self, x, y=None, batch_size=None, verbose=0, sample_weight=None, steps=None):
        """Loss and metrics on ``(x, y)`` (or a dataset / iterable of batches) in inference
        mode: ``{"loss": ..., "accuracy": ...}``."""
        return _training.evaluate(self, x, y, batch_size=batch_size, verbose=verbose,
                                  sample_weight=sample_weight, steps=steps)

    def predict(self, x, batch_size=None, steps=None):
        """Outputs of the whole network in inference mode, batch by batch (probabilities if
        it ends with a softmax); a list with several outputs. ``x`` may be a dataset or an
        iterable of batches."""
        return _training.predict(self, x, batch_size=batch_size, steps=steps)

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None):
        """One optimisation step on a batch; returns ``{"loss": ..., "accuracy": ...}``.

        Raises :class:`NonFiniteLossError` (the weights are not updated) for a NaN or
        infinite loss.
        """
        return _training.train_on_batch(self, x, y, sample_weight=sample_weight,
                                        class_weight=class_weight)

    def activations(self, x):
        """Every layer call's output for ``x`` in inference mode: a dict from the layer name
        (``"name:k"`` for the k-th further call of a shared layer) to the array."""
        xs = [np.ascontiguousarray(a, dtype=self.dtype) for a in _training.input_arrays(self, x)]
        values = list(xs) + [None] * (self._n_slots - len(xs))
        out, calls = {}, {}
        for st in self._steps:
            x_ = ([_conform(values[s], self.dtype) for s in st.inputs] if st.multiple
                  else _conform(values[st.inputs[0]], self.dtype))
            values[st.output], _ = st.layer.call(x_, False)
            k = calls.get(st.layer.name, 0)
            calls[st.layer.name] = k + 1
            out[st.layer.name if k == 0 else f"{st.layer.name}:{k}"] = values[st.output]
        return out

    def input_gradient(self, x, y=None, loss=None, output_index=None, output=0):
        """Gradient of a scalar with respect to the input(s), in inference mode; see
        :func:`cconv.gradients.input_gradient`."""
        return _gradients.input_gradient(self, x, y, loss=loss, output_index=output_index, output=output)

    # ------------------------------------------------------------------ persistence
    def save(self, path, include_optimizer=True):
        """Save architecture, weights, layer state and (by default) optimizer state to one
        ``.npz`` file that never executes code when loaded; the write is atomic. Load it with
        :func:`cconv.load_model`."""
        from . import saving
        saving.save_model(self, path, include_optimizer=include_optimizer)

    def export(self, path, format="onnx", **kwargs):
        """Export the model for inference elsewhere (Keras's name): ``format="onnx"`` (the
        only one) writes an ONNX file with NHWC inputs and outputs and a dynamic batch size;
        keyword arguments (``opset_version``, ``dtype``) go to :func:`cconv.onnx.export`,
        which documents the graph. Needs the ``onnx`` package (``pip install "cconv[onnx]"``)."""
        if format != "onnx":
            raise ValueError(f"format must be 'onnx' (the only export format), got {format!r}")
        from . import onnx as _onnx
        _onnx.export(self, path, **kwargs)

    def save_weights(self, path, format=None):
        """Save the weights and layer state (not the architecture's code, not the optimizer)
        to ``path``: safetensors for a name ending in ``.safetensors`` (tensors named
        ``"<layer>/<key>"``, readable by any safetensors reader), else cconv's ``.npz``; or
        choose with ``format="safetensors"`` / ``"cconv"``. See :func:`cconv.saving.save_weights`."""
        from . import saving
        saving.save_weights(self, path, format=format)

    def load_weights(self, path):
        """Load weights and layer state into this model from a file written by
        :meth:`save_weights` (either format) or :meth:`save`.

        Raises ValueError naming every array whose shape does not match.
        """
        from . import saving
        self._require_built("load_weights()")
        saving.load_weights(self, path)

    def get_weights(self):
        """Copies of every weight and state array, layer by layer."""
        return [a.copy() for layer in self.layers for _, _, a in layer.weights()]

    def set_weights(self, weights):
        """Inverse of :meth:`get_weights` (values are copied into the existing buffers)."""
        targets = [a for layer in self.layers for _, _, a in layer.weights()]
        if len(weights) != len(targets):
            raise ValueError(f"set_weights expects {len(targets)} arrays, got {len(weights)}")
        for i, (t, w) in enumerate(zip(targets, weights)):
            w = np.asarray(w)
            if w.shape != t.shape:
                raise ValueError(f"weight {i} has shape {w.shape}, expected {t.shape}")
        for t, w in zip(targets, weights):
            np.copyto(t, w, casting="unsafe")

    def get_rng_state(self):
        """The states of every random generator: shuffling, weight building, the layers'."""
        layers = {}
        for layer in self.layers:
            st = layer.get_rng_state()
            if st:
                layers[layer.name] = st
        return {"fit_rng": self.shuffle_rng.bit_generator.state,
                "build_rng": self._build_rng.bit_generator.state, "layer_rngs": layers}

    def set_rng_state(self, state):
        """Inverse of :meth:`get_rng_state`."""
        self.shuffle_rng.bit_generator.state = state["fit_rng"]
        self._build_rng.bit_generator.state = state["build_rng"]
        for name, st in state.get("layer_rngs", {}).items():
            self.get_layer(name).set_rng_state(st)

    # ------------------------------------------------------------------ config
    def get_config(self):
        """JSON-serialisable description of the architecture (no weights)."""
        self._require_built("get_config()")
        calls, nodes = {}, []

        def ref(t):
            if isinstance(t.layer, InputLayer):
                return [t.layer.name, 0]
            return [t.layer.name, calls[id(t.node)]]

        seen = {}
        for n in self._nodes:
            k = seen.get(id(n.layer), 0)
            seen[id(n.layer)] = k + 1
            calls[id(n)] = k
            nodes.append({"layer": n.layer.name, "inputs": [ref(t) for t in n.inputs],
                          "list": bool(n.multiple)})
        return {
            "name": self.name, "seed": self.seed, "dtype": self.dtype.name,
            "inputs": [{"name": t.layer.name, "shape": list(t.shape[1:])} for t in self.inputs],
            "layers": [serialize(layer) for layer in self.layers],
            "nodes": nodes,
            "outputs": [ref(t) for t in self.outputs],
            "single_input": self._single_input, "single_output": self._single_output,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """Rebuild an (untrained) model from :meth:`get_config`'s output; ``custom_objects``
        maps class names to your own Layer subclasses."""
        if isinstance(config, dict) and "nodes" not in config and isinstance(config.get("layers"), list):
            return Sequential.from_config(config, custom_objects)
        try:
            inputs = {d["name"]: Input(tuple(d["shape"]), name=d["name"]) for d in config["inputs"]}
            layers = {}
            for d in config["layers"]:
                layer = deserialize(d, custom_objects=custom_objects)
                layers[layer.name] = layer
            made = {(name, 0): t for name, t in inputs.items()}
            calls = {}
            for n in config["nodes"]:
                layer = layers[n["layer"]]
                args = [made[tuple(r)] for r in n["inputs"]]
                k = calls.get(n["layer"], 0)
                calls[n["layer"]] = k + 1
                made[(n["layer"], k)] = layer(args if n.get("list") else args[0])
            ins = [inputs[d["name"]] for d in config["inputs"]]
            outs = [made[tuple(r)] for r in config["outputs"]]
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"not a Model config ({type(exc).__name__}: {exc}): {config!r:.200}") from None
        return cls(ins[0] if config.get("single_input", len(ins) == 1) else ins,
                   outs[0] if config.get("single_output", len(outs) == 1) else outs,
                   name=config.get("name", "model"), seed=config.get("seed"),
                   dtype=config.get("dtype", "float32"))

    # ------------------------------------------------------------------ description
    def summary(self, print_fn=None):
        """Print a Keras-like table: layer (type), output shape, parameter count, and what
        each layer call is connected to; then the totals. Returns the table as a string."""
        rows = []
        if self.built:
            for t in self.inputs:
                rows.append((f"{t.layer.name} (Input)", _shape_str(t.shape[1:]), "0", ""))
            counted = set()
            calls = {}
            for n in self._nodes:
                layer = n.layer
                k = calls.get(id(layer), 0)
                calls[id(layer)] = k + 1
                count = "(shared)" if id(layer) in counted else f"{layer.count_params():,}"
                counted.add(id(layer))
                label = f"{layer.name} ({type(layer).__name__})" + (f" call {k + 1}" if k else "")
                rows.append((label, _shape_str(n.output.shape[1:]), count,
                             ", ".join(_tensor_label(t, self._nodes) for t in n.inputs)))
        return _table(self, rows, ("Layer (type)", "Output Shape", "Param #", "Connected to"), print_fn)

    def __repr__(self):
        return (f"Model(name={self.name!r}, inputs={self.input_names}, outputs={self.output_names}, "
                f"layers={len(self.layers)})")


def _tensor_label(t, nodes):
    layer = t.layer
    if isinstance(layer, InputLayer):
        return layer.name
    calls = [n for n in nodes if n.layer is layer]
    k = next(i for i, n in enumerate(calls) if n is t.node)
    return layer.name if len(calls) == 1 else f"{layer.name}[{k}]"


def _table(model, rows, heads, print_fn):
    """The summary table of ``rows`` under ``heads``: "Param #" right-aligned, the others left."""
    rows = [tuple(printable(cell) for cell in r) for r in rows]     # names may hold escapes
    widths = [max([len(h)] + [len(r[c]) for r in rows]) for c, h in enumerate(heads)]

    def line(cells):
        return "  ".join(f"{cell:>{w}}" if h == "Param #" else f"{cell:<{w}}"
                         for cell, w, h in zip(cells, widths, heads)).rstrip()

    width = sum(widths) + 2 * (len(heads) - 1)
    lines = [f'Model: "{printable(model.name)}"', "_" * width, line(heads), "=" * width]
    if model.built:
        shapes = [t.shape[1:] for t in model.inputs]
        lines.insert(1, "Input shape: " + ", ".join(_shape_str(s) for s in shapes) +
                     f", dtype {model.dtype.name}")
    for j, r in enumerate(rows):
        lines.append(line(r))
        lines.append("_" * width if j < len(rows) - 1 else "=" * width)
    if not rows:
        lines.append("=" * width)
    if model.built:
        trainable = sum(p.size for _, p, _ in model.parameters())
        total = model.count_params()
        lines += [f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {total - trainable:,}"]
    else:
        lines.append("(not built: call build(input_shape) or fit to see shapes and parameter counts)")
    text = "\n".join(lines)
    (print_fn or print)(text)
    return text


def _trainable(layer):
    """Whether the optimizer updates some weight of ``layer`` (its sublayers' included)."""
    if not layer.trainable:
        return False
    return bool(layer.params) or any(_trainable(sub) for _, sub in layer.sublayers)


#: Inference plans a model keeps (one per input shape and route state).
_PLANS_MAX = 8


class _InferencePlan:
    """The inference steps of a model for inputs of fixed shapes: each layer's (or fused
    pair's) :meth:`cconv.layers.Layer.inference_function` for its input shape, in order,
    with the slots each step reads and writes, and those it is the last to read. Running
    it makes none of the per-call decisions of :meth:`Model._run` (fusions, releases) and
    lets the layers skip their per-call checks: at batch 1 those cost about as much as the
    kernels of a small network."""

    __slots__ = ("steps", "n_slots", "out_slots")

    def __init__(self, model, shapes):
        n = shapes[0][0] if shapes else 0
        slot_shape = [(n,) + tuple(s) for s in model._slot_shape]
        slot_shape[:len(shapes)] = [tuple(s) for s in shapes]
        last_reader = {}
        steps, k, all_steps = [], 0, model._steps
        while k < len(all_steps):
            st = all_steps[k]
            shape = [slot_shape[s] for s in st.inputs] if st.multiple else slot_shape[st.inputs[0]]
            fn, out = None, st.output
            if model._fusable(k, model._out_slots, ()):
                nxt = all_steps[k + 1]
                fn = st.layer.inference_function(shape, nxt.layer)
                if fn is not None:
                    out, k = nxt.output, k + 1
            if fn is None:
                fn = st.layer.inference_function(shape)
            for s in st.inputs:
                last_reader[s] = len(steps)
            steps.append([fn, st.inputs, out, st.multiple, ()])
            k += 1
        kept = set(model._out_slots)
        for s, i in last_reader.items():
            if s not in kept:
                steps[i][4] += (s,)
        self.steps = [tuple(st) for st in steps]
        self.n_slots = model._n_slots
        self.out_slots = list(model._out_slots)

    def run(self, xs, dtype):
        values = [None] * self.n_slots
        values[:len(xs)] = xs
        for fn, ins, out, multiple, free in self.steps:
            if multiple:
                values[out] = fn([_conform(values[s], dtype) for s in ins])
            else:
                values[out] = fn(_conform(values[ins[0]], dtype))
            for s in free:
                values[s] = None
        return [values[s] for s in self.out_slots]


def _conform(a, dtype):
    """``a`` as a C-contiguous array of ``dtype`` (no copy when it already is one)."""
    if a.dtype == dtype and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=dtype)


def _accumulate(grads, owned, slot, g, fresh=False):
    """Add a gradient contribution to a tensor's (fan-out: contributions are summed). The
    first one is kept as is (it may be a view of another gradient, unless ``fresh``: a new
    array that nothing else references, which the model then owns); a sum is a new array."""
    if grads[slot] is None:
        grads[slot] = g
        owned[slot] = fresh
    elif owned[slot]:
        grads[slot] += g
    else:
        grads[slot] = np.add(grads[slot], g)
        owned[slot] = True


class Sequential(Model):
    """A linear stack of layers: a :class:`Model` whose graph is a chain.

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
    dtype : {"float32", "float64"}, default "float32"
    name : str, default "sequential"

    Everything else is :class:`Model`'s.
    """

    def __init__(self, layers=None, input_shape=None, seed=None, dtype="float32", name="sequential"):
        super().__init__(name=name, seed=seed, dtype=dtype)
        self._pending = []
        self._single_input = self._single_output = True
        for layer in layers or []:
            self.add(layer)
        if input_shape is not None:
            self.build(input_shape)

    @property
    def layers(self):
        return self._pending

    @layers.setter
    def layers(self, value):
        self._pending = list(value)

    def add(self, layer):
        """Append a layer (built at once if the model is already built)."""
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential takes Layer objects, got {type(layer).__name__}: {layer!r}")
        if layer.multiple_inputs:
            raise TypeError(f"{type(layer).__name__} takes several inputs: use cconv.Model for it")
        if any(layer is other for other in self._pending):
            raise ValueError(f"layer {layer.name!r} is already in this model")
        taken = {l.name for l in self._pending}
        if layer.name is None:
            layer.name = _unique_name(_default_name(layer), taken)
        else:
            _check_name(layer.name, "layer")
            if layer.name in taken:
                raise ValueError(f"duplicate layer name {layer.name!r}: layer names must be unique within a model")
        if self.built:
            try:
                out = layer(self.outputs[0])
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"layer {layer.name!r} ({type(layer).__name__}) cannot be added: {exc}") from exc
            pending = self._pending + [layer]
            try:
                self._init_graph(self.inputs[0], out)
            except (ValueError, TypeError):
                self._init_graph(self.inputs[0], self._nodes[-1].output)
                self._pending = pending[:-1]
                raise
            self._pending = pending
        else:
            self._pending.append(layer)
        return self

    def build(self, input_shape):
        """Create every layer's weights for samples of shape ``input_shape`` (no batch dim).

        Raises
        ------
        ValueError
            ``input_shape`` has a non-positive entry, or a layer cannot take its input
            (the message names the layer).
        """
        shape = V.shape(input_shape)
        if self.built:
            if shape != self.input_shape:
                raise ValueError(f"model is already built for input shape {self.input_shape}, got {shape}")
            return
        if not self._pending:
            raise ValueError("cannot build an empty Sequential: add layers first")
        inp = Input(shape, name="input")
        x = inp
        for layer in self._pending:
            try:
                x = layer(x)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"layer {layer.name!r} ({type(layer).__name__}) cannot take input of shape "
                                f"{_shape_str(x.shape[1:])}: {exc}") from exc
        layers = list(self._pending)
        self._init_graph(inp, x)
        self._pending = layers

    def get_config(self):
        """JSON-serialisable description of the architecture (no weights)."""
        return {
            "name": self.name,
            "input_shape": list(self.input_shape) if self.built else None,
            "seed": self.seed,
            "dtype": self.dtype.name,
            "layers": [serialize(l) for l in self._pending],
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """Rebuild an (untrained) model from :meth:`get_config`'s output.

        ``custom_objects`` maps class names to your own Layer subclasses.
        """
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError(f"not a Sequential config: {config!r:.200}")
        layers = [deserialize(d, custom_objects=custom_objects) for d in config["layers"]]
        shape = config.get("input_shape")
        return cls(layers, input_shape=None if shape is None else tuple(shape), seed=config.get("seed"),
                   dtype=config.get("dtype", "float32"), name=config.get("name", "sequential"))

    def summary(self, print_fn=None):
        """Print a Keras-like table: layer (type), output shape, parameter count, totals.
        Returns the table as a string."""
        rows = []
        for i, layer in enumerate(self._pending):
            if self.built:
                rows.append((f"{layer.name} ({type(layer).__name__})",
                             _shape_str(self._nodes[i].output.shape[1:]), f"{layer.count_params():,}"))
            else:
                rows.append((f"{layer.name} ({type(layer).__name__})", "?", "?"))
        return _table(self, rows, ("Layer (type)", "Output Shape", "Param #"), print_fn)

    def __repr__(self):
        inner = ", ".join(repr(l) for l in self._pending)
        extra = f", input_shape={self.input_shape}" if self.built else ""
        return f"Sequential([{inner}]{extra})"

    def __len__(self):
        return len(self._pending)

    def __iter__(self):
        return iter(self._pending)

    def __getitem__(self, i):
        return self._pending[i]


def load_model(path, compile=True, custom_objects=None):
    """Load a model saved with :meth:`Model.save` (see :func:`cconv.saving.load_model`)."""
    from . import saving
    return saving.load_model(path, compile=compile, custom_objects=custom_objects)
