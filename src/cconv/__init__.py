"""cconv: convolutional neural networks on the CPU with a compiled core.

Activations are NHWC ``(N, H, W, C)``, convolution weights HWIO
``(KH, KW, C_in // groups, C_out)``, in float32 or float64.

The submodules (``layers``, ``losses``, ``optim``, ``datasets``, ``viz``, ...) and the
model classes are imported on first use, which keeps ``import cconv`` fast.
"""
from importlib import import_module as _import_module
from typing import Any as _Any

# "import X as X": explicit re-exports, which `mypy --strict` (no implicit re-export) needs.
from ._version import __version__ as __version__
from ._config import get_num_threads as get_num_threads
from ._config import set_num_threads as set_num_threads
from ._config import show_config as show_config
from ._config import set_cache_limit as set_cache_limit
from ._config import get_cache_limit as get_cache_limit
from ._config import empty_cache as empty_cache
from . import functional as functional
from .functional import Workspace as Workspace

_SUBMODULES = {
    "layers", "losses", "optim", "initializers", "callbacks", "model", "models",
    "training", "checkpoint", "gradients", "saving", "symbolic", "distributed",
    "datasets", "data", "metrics", "preprocessing", "viz", "adversarial", "kernels", "io", "cli",
    "safetensors", "onnx",
}
_NAMES = {
    "Model": "model",
    "Sequential": "model",
    "Input": "symbolic",
    "History": "training",
    "load_model": "saving",
    "gradcheck": "gradcheck",
}

__all__ = sorted(
    ["__version__", "functional", "get_num_threads", "set_num_threads", "show_config",
     "set_cache_limit", "get_cache_limit", "empty_cache", "Workspace", "get_include"]
    + list(_SUBMODULES) + list(_NAMES)
)


def get_include() -> str:
    """The directory of cconv's C headers, for packages that build against cconv.

    Pass it to the compiler (``Extension(..., include_dirs=[cconv.get_include()])``) to
    ``cimport`` cconv's kernels from Cython (``from cconv.conv cimport conv2d_forward``;
    the .pxd files declare them) or to use its C API (``#include <cconv/cconv.h>`` and
    ``import_cconv()``). See the README and examples/downstream in cconv's repository.
    """
    from os.path import dirname, join

    return join(dirname(__file__), "include")


def __getattr__(name: str) -> _Any:
    if name in _SUBMODULES:
        return _import_module(f"{__name__}.{name}")
    if name in _NAMES:
        value = getattr(_import_module(f"{__name__}.{_NAMES[name]}"), name)
        # Cache it: importing the submodule cconv.gradcheck would otherwise leave the
        # module, not the function, as the package attribute `gradcheck`.
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cconv' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
