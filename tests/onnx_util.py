"""Shared by the ONNX tests: models with every weight set to something a bug would change,
ONNX Runtime on a model, and the tolerance check of the issue (1e-5 relative, float32)."""
import numpy as np
import pytest

import cconv


def randomise(model, seed=0):
    """Every weight random (running variances positive), so a wrongly placed one shows;
    scaled so that activations keep a unit scale (no saturated softmax or sigmoid)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for _, key, a in layer.weights():
            if key.endswith("running_var"):
                a[...] = rng.uniform(0.5, 2.0, a.shape)
            elif a.ndim > 1:        # kernels: unit-variance outputs, as trained nets have
                a[...] = rng.standard_normal(a.shape) / np.sqrt(np.prod(a.shape[:-1]))
            else:
                a[...] = rng.standard_normal(a.shape) * 0.3
    return model


def ort_session(model_or_path):
    ort = pytest.importorskip("onnxruntime")
    data = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") \
        else str(model_or_path)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def ort_run(model_or_path, feeds):
    """ONNX Runtime's outputs (a list) for ``feeds`` (a dict, or one array for one input)."""
    s = ort_session(model_or_path)
    if not isinstance(feeds, dict):
        feeds = {s.get_inputs()[0].name: feeds}
    return s.run(None, {k: np.asarray(v) for k, v in feeds.items()})


def assert_close(actual, expected, rtol=1e-5):
    """Within ``rtol`` of the largest magnitude of ``expected`` (the issue's 1e-5 relative):
    an elementwise relative test would fail on values that cancel to near zero."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    err = float(np.max(np.abs(actual.astype(np.float64) - expected))) if actual.size else 0.0
    assert err <= rtol * scale, f"max error {err:.3g} is {err / scale:.3g} of the scale {scale:.3g}"
    return err / scale


def predict(model, x):
    out = model.predict(x, batch_size=64)
    return out if isinstance(out, list) else [out]


def sample(shape, n=3, seed=1, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(dtype)


__all__ = ["randomise", "ort_session", "ort_run", "assert_close", "predict", "sample", "cconv"]
