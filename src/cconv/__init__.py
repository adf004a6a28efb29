"""cconv: convolutional neural networks on the CPU with a compiled core.

Activations are NHWC ``(N, H, W, C)``, convolution weights HWIO
``(KH, KW, C_in // groups, C_out)``, in float32 or float64.

The submodules (``layers``, ``losses``, ``optim``, ``datasets``, ``viz``, ...) and the
model classes are imported on first use, which keeps ``import cconv`` fast.
"""
from importlib import import_module as _import_module

from ._version import __version__
from ._config import get_num_threads, set_num_threads, show_config
from . import functional

_SUBMODULES = {
    "layers", "losses", "optim", "initializers", "callbacks", "model", "models",
    "datasets", "viz", "adversarial", "kernels", "io", "cli",
}
_NAMES = {
    "Sequential": "model",
    "History": "model",
    "load_model": "model",
    "gradcheck": "gradcheck",
}

__all__ = sorted(
    ["__version__", "functional", "get_num_threads", "set_num_threads", "show_config"]
    + list(_SUBMODULES) + list(_NAMES)
)


def __getattr__(name):
    if name in _SUBMODULES:
        return _import_module(f"{__name__}.{name}")
    if name in _NAMES:
        return getattr(_import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'cconv' has no attribute {name!r}")


def __dir__():
    return __all__
