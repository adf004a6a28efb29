"""Symbolic tensors: the placeholders a functional model is written with (Keras's KerasTensor).

``Input(shape)`` makes one; calling a layer on symbolic tensors (``Conv2D(8, 3)(x)``)
checks the shapes and returns a new one that remembers the call (a :class:`Node`:
the layer and the tensors it was called on). :class:`cconv.Model` follows these links
back from its outputs to its inputs. Nothing is computed until the model runs.
"""
from . import _validate as V

__all__ = ["Input", "SymbolicTensor", "Node", "InputLayer"]


class InputLayer:
    """Where an :func:`Input` tensor comes from (it computes nothing and has no weights)."""

    def __init__(self, shape, name=None):
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(f"an Input name must be a non-empty str without '/', got {name!r}")
        self.shape = V.shape(shape, "shape")
        self.name = name

    def __repr__(self):
        return f"Input(shape={self.shape}{'' if self.name is None else f', name={self.name!r}'})"


class Node:
    """One call of a layer on symbolic tensors.

    Attributes
    ----------
    layer : Layer or InputLayer
    inputs : list of SymbolicTensor
    output : SymbolicTensor
    multiple : bool
        The layer was called on a list (a merge layer), not on one tensor.
    """

    __slots__ = ("layer", "inputs", "output", "multiple")

    def __init__(self, layer, inputs, output_shape, multiple=False):
        self.layer = layer
        self.inputs = list(inputs)
        self.multiple = bool(multiple)
        self.output = SymbolicTensor(output_shape, self)


class SymbolicTensor:
    """The output of an :func:`Input` or of a layer call in a functional model.

    Attributes
    ----------
    shape : tuple
        ``(None, *sample_shape)``: the batch size is left open.
    node : Node
        The call that produces it.
    """

    __slots__ = ("shape", "node")

    def __init__(self, sample_shape, node):
        self.shape = (None,) + tuple(int(s) for s in sample_shape)
        self.node = node

    @property
    def layer(self):
        """The layer (or :class:`InputLayer`) that produces this tensor."""
        return self.node.layer

    def describe(self):
        """``"(None, 8, 8, 16) from 'conv2d' (Conv2D)"``, for error messages and summaries."""
        layer = self.node.layer
        if isinstance(layer, InputLayer):
            who = "Input" if layer.name is None else f"Input {layer.name!r}"
        else:
            who = f"{layer.name!r} ({type(layer).__name__})" if layer.name else repr(layer)
        return f"{self.shape} from {who}"

    def __repr__(self):
        return f"<SymbolicTensor {self.describe()}>"


def Input(shape, name=None):
    """A model input: ``x = cconv.Input(shape=(28, 28, 1))``.

    Parameters
    ----------
    shape : tuple of int
        The shape of one sample, without the batch dimension (NHWC images: ``(H, W, C)``).
    name : str, optional
        Used to pass inputs as a dict (``model.fit({"image": x1, "meta": x2}, y)``) and in
        messages; :class:`cconv.Model` names unnamed inputs ``input``, ``input_1``, ...

    Returns
    -------
    SymbolicTensor
    """
    layer = InputLayer(shape, name)
    return Node(layer, [], layer.shape).output
