"""Write the model files of cconv 0.1.0 (commit 323127d, before functional models) that
tests/test_legacy_files.py loads with the current code.

Run once with that version installed (``python tests/data/make_legacy_files.py``); the files
are committed, so the tests never need the old code. Every file is a few KB.

- ``legacy_sequential.npz``: conv / batch norm / max-pool / conv / avg-pool / flatten / dense /
  dropout / softmax dense, compiled with Adam and "categorical_crossentropy" (which meant
  softmax fused with the loss, ``from_logits=True`` in the file), trained 3 steps.
- ``legacy_softmax_layer_f64.npz``: float64, a separate Softmax layer, SGD with momentum.
- ``legacy_logits.npz``: ends with a plain Dense (logits), cross-entropy from logits.
- ``legacy_sigmoid.npz``: Dense(1, sigmoid) with binary cross-entropy, RMSprop.
- ``legacy_uncompiled.npz``: never compiled.
- ``legacy_checkpoint.npz``: ``fit(checkpoint=...)`` stopped after epoch 2 of 4.
- ``legacy_expected.npz``: the inputs, each model's predictions, and the weights after an
  uninterrupted 4-epoch fit (what resuming the checkpoint must reach); for the compiled
  models, the loss, accuracy and weights after loading the file and one ``train_on_batch``.
"""
import os

import numpy as np

import cconv
from cconv import optim
from cconv.layers import (AvgPool2D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D,
                          Softmax)

HERE = os.path.dirname(os.path.abspath(__file__))


def data(n=24, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(0, 1, (n, 8, 8, 2)).astype(np.float32)
    x[np.arange(n), 2, 2, 0] += 2.0 * y
    return x, y


def big():
    return cconv.Sequential([
        Conv2D(4, 3, padding="same", activation="relu"), BatchNorm2D(), MaxPool2D(2),
        Conv2D(6, 3, padding="valid", activation="tanh"), AvgPool2D(2), Flatten(),
        Dense(8, activation="relu"), Dropout(0.3), Dense(3, activation="softmax"),
    ], input_shape=(8, 8, 2), seed=7)


def continued(model, x, y, name, expected):
    """Load the file again and train one step: what the current code must reproduce."""
    model = cconv.load_model(os.path.join(HERE, f"{name}.npz"))
    logs = model.train_on_batch(x, y)
    expected[f"{name}_next_loss"] = np.array(logs["loss"])
    expected[f"{name}_next_accuracy"] = np.array(logs.get("accuracy", np.nan))
    for i, w in enumerate(model.get_weights()):
        expected[f"{name}_next_{i}"] = w


def main():
    cconv.set_num_threads(1)
    x, y = data()
    expected = {"x": x, "y": y}

    m = big()
    m.compile(optim.Adam(lr=1e-2), "categorical_crossentropy")
    for _ in range(3):
        m.train_on_batch(x, y)
    m.save(os.path.join(HERE, "legacy_sequential.npz"))
    expected["legacy_sequential"] = m.predict(x)
    continued(m, x, y, "legacy_sequential", expected)

    m = cconv.Sequential([Conv2D(3, 3, activation="relu"), Flatten(), Dense(3), Softmax()],
                         input_shape=(8, 8, 2), seed=3, dtype="float64")
    m.compile(optim.SGD(lr=0.1, momentum=0.9), "categorical_crossentropy")
    for _ in range(2):
        m.train_on_batch(x, y)
    m.save(os.path.join(HERE, "legacy_softmax_layer_f64.npz"))
    expected["legacy_softmax_layer_f64"] = m.predict(x)
    continued(m, x, y, "legacy_softmax_layer_f64", expected)

    m = cconv.Sequential([Flatten(), Dense(5, activation="relu"), Dense(3)], input_shape=(8, 8, 2), seed=4)
    m.compile("adam", "categorical_crossentropy")
    m.train_on_batch(x, y)
    m.save(os.path.join(HERE, "legacy_logits.npz"))
    expected["legacy_logits"] = m.predict(x)
    continued(m, x, y, "legacy_logits", expected)

    m = cconv.Sequential([Flatten(), Dense(4, activation="tanh"), Dense(1, activation="sigmoid")],
                         input_shape=(8, 8, 2), seed=5)
    m.compile("rmsprop", "binary_crossentropy")
    m.train_on_batch(x, (y > 0).astype(np.float32))
    m.save(os.path.join(HERE, "legacy_sigmoid.npz"))
    expected["legacy_sigmoid"] = m.predict(x)
    continued(m, x, (y > 0).astype(np.float32), "legacy_sigmoid", expected)

    m = cconv.Sequential([Conv2D(2, 3), MaxPool2D(2), Flatten(), Dense(2)], input_shape=(8, 8, 2), seed=6)
    m.save(os.path.join(HERE, "legacy_uncompiled.npz"))
    expected["legacy_uncompiled"] = m.predict(x)

    kw = dict(batch_size=8, validation_split=0.25, verbose=0)
    full = big()
    full.compile(optim.Adam(lr=1e-2), "categorical_crossentropy")
    h = full.fit(x, y, epochs=4, **kw)
    for i, w in enumerate(full.get_weights()):
        expected[f"full_weight_{i}"] = w
    expected["full_val_loss"] = np.array(h.history["val_loss"])
    first = big()
    first.compile(optim.Adam(lr=1e-2), "categorical_crossentropy")
    first.fit(x, y, epochs=2, checkpoint=os.path.join(HERE, "legacy_checkpoint.npz"), **kw)

    np.savez(os.path.join(HERE, "legacy_expected.npz"), **expected)


if __name__ == "__main__":
    main()
