"""The network of the LFW paper and its data, as every benchmark trains and runs it: in cconv,
PyTorch and Keras, one definition each.

64x64x3 input; conv 3x3 32 -> ReLU -> maxpool 2; conv 3x3 64 -> ReLU -> maxpool 2; conv 3x3
128 -> ReLU -> maxpool 2; flatten; Dense 128 ReLU; Dense 256 ReLU; Dropout 0.5; Dense 34
softmax; cross-entropy; Adam 1e-3; random images (``--images``, default 1,777), ``--batch``
(default 128). Module level needs only the standard library: the workers import their
library themselves (Keras's runs under TensorFlow's interpreter).
"""
import types

N_CLASSES = 34


def options(p):
    """The paper network's benchmark options (added to a harness script's parser)."""
    p.add_argument("--images", type=int, default=1777, help="random 64x64x3 training images")
    p.add_argument("--batch", type=int, default=128, help="training batch size")


def data(n, seed=0):
    """n random float32 images (NHWC) and integer labels, the same in every process."""
    import numpy as np
    rng = np.random.default_rng(seed)
    return rng.random((n, 64, 64, 3), dtype=np.float32), rng.integers(0, N_CLASSES, n)


def cconv_model(seed=0):
    """The paper network in cconv (``cconv.models.paper_lfw``), compiled with Adam 1e-3."""
    from cconv import optim
    from cconv.models import paper_lfw
    model = paper_lfw(N_CLASSES, seed=seed)
    model.compile(optim.Adam(lr=1e-3), "categorical_crossentropy")   # integer labels accepted
    return model


def torch_model():
    """The paper network in PyTorch (NCHW; the softmax is in the loss)."""
    from torch import nn
    return nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 6 * 128, 128), nn.ReLU(), nn.Linear(128, 256), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(256, N_CLASSES),
    )


def torch_trainer(threads, channels_last, seed=0):
    """The PyTorch paper network on `threads` threads in the chosen memory format, Adam 1e-3,
    as a namespace: ``model``, ``fmt`` (the memory format), ``tensor(x)`` (an NHWC array to
    an NCHW tensor in that format), ``step(xb, yb)`` (trains one batch, returns its loss) and
    ``epoch(xt, yt, batch)`` (one epoch in a random order over tensors; the mean loss)."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = torch_model().to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def tensor(x):
        return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=fmt)

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return loss.detach()

    def epoch(xt, yt, batch):
        model.train()
        n = len(yt)
        perm = torch.randperm(n)
        total = 0.0
        for lo in range(0, n, batch):
            idx = perm[lo:lo + batch]
            total += float(step(xt[idx].contiguous(memory_format=fmt), yt[idx])) * len(idx)
        return total / n

    return types.SimpleNamespace(model=model, fmt=fmt, tensor=tensor, step=step, epoch=epoch)


def keras_model(seed=0):
    """The paper network in Keras 3 (on whichever backend KERAS_BACKEND names), compiled with
    Adam 1e-3 and sparse categorical cross-entropy."""
    import keras
    from keras import layers
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((64, 64, 3)),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(128, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(128, activation="relu"), layers.Dense(256, activation="relu"),
        layers.Dropout(0.5), layers.Dense(N_CLASSES, activation="softmax"),
    ])
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    return model
