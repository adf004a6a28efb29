"""Keyword arguments that Keras and PyTorch users type, for layers and optimizers.

cconv's model-level names follow Keras, so a Keras spelling that means the same thing is
accepted as an alias (``strides`` for ``stride``, ``learning_rate`` for ``lr``); a PyTorch
spelling gets a TypeError that names cconv's (``out_channels`` -> ``filters``), and any other
unknown keyword a TypeError with the closest parameter names. The constructor's own
parameters always win: an alias applies only where the class has the cconv name and not the
alias.
"""
import difflib
import functools
import inspect

__all__ = ["KERAS_ALIASES", "PYTORCH_NAMES", "PYTORCH_UNNEEDED", "translate", "wrap_init"]

#: Keras spelling -> cconv's, for arguments that mean the same.
KERAS_ALIASES = {
    "strides": "stride",
    "dilation_rate": "dilation",
    "epsilon": "eps",
    "learning_rate": "lr",
    "beta_1": "beta1",
    "beta_2": "beta2",
    "negative_slope": "alpha",
    "depthwise_initializer": "kernel_initializer",
}

#: PyTorch spelling -> cconv's.
PYTORCH_NAMES = {
    "out_channels": "filters",
    "out_features": "units",
    "kernel_size": "pool_size",           # of a pooling layer
    "bias": "use_bias",
    "p": "rate",
    "betas": "beta1= and beta2=",
    "padding_mode": "padding= (zeros) or a ZeroPadding2D layer",
}

#: PyTorch arguments that cconv does not need, and why.
PYTORCH_UNNEEDED = {
    "in_channels": "a layer takes its input channels from its input",
    "in_features": "Dense takes its input features from its input",
    "num_features": "BatchNorm2D takes its channels from its input",
    "inplace": "cconv works in place where it can by itself",
    "params": "model.compile(optimizer) attaches the parameters (in your own loop, "
              "optimizer.attach(model.parameters()))",
}


def translate(cls_name, params, kwargs, has_var_kwargs=False):
    """``kwargs`` with Keras aliases renamed; TypeError for PyTorch spellings and unknown
    names (``params``: the constructor's parameter names)."""
    out = {}
    for key, value in kwargs.items():
        if key in params:
            out[key] = value
            continue
        target = KERAS_ALIASES.get(key)
        if target is not None and target in params:
            if target in kwargs:
                raise TypeError(f"{cls_name}() got both {key}= (Keras's name) and {target}=; pass one")
            out[target] = value
            continue
        if has_var_kwargs:
            out[key] = value
            continue
        if key in PYTORCH_NAMES and not (key == "kernel_size" and "pool_size" not in params):
            raise TypeError(f"{cls_name}() has no argument {key!r} (PyTorch's name): cconv calls it "
                            f"{PYTORCH_NAMES[key]}")
        if key in PYTORCH_UNNEEDED:
            raise TypeError(f"{cls_name}() has no argument {key!r} (PyTorch's): {PYTORCH_UNNEEDED[key]}; "
                            f"leave it out")
        close = difflib.get_close_matches(key, sorted(params), n=3, cutoff=0.6)
        known = ", ".join(sorted(p for p in params if p != "self"))
        raise TypeError(f"{cls_name}() got an unexpected keyword argument {key!r}"
                        + (f"; did you mean {' or '.join(map(repr, close))}?" if close else "")
                        + f" (its arguments: {known})")
    return out


def wrap_init(cls, check_positional=None):
    """Wrap ``cls.__init__`` (defined on ``cls``) so that its keyword arguments go through
    :func:`translate`; ``check_positional(cls_name, args, kwargs)`` may inspect the call."""
    init = cls.__dict__["__init__"]
    sig = inspect.signature(init)
    params = set(sig.parameters) - {"self"}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        if kwargs and not params.issuperset(kwargs):
            kwargs = translate(type(self).__name__, params, kwargs, var_kw)
        if check_positional is not None:
            check_positional(type(self).__name__, args, kwargs)
        return init(self, *args, **kwargs)

    cls.__init__ = wrapped
    return cls
