"""A model defined and trained in PyTorch, exported with torch.onnx.export (the TorchScript
exporter, dynamo=False, and the default torch.export-based one, which needs onnxscript),
loads into cconv, predicts what PyTorch predicts and keeps training with fit."""
import contextlib
import io
import warnings

import numpy as np
import pytest

import cconv

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from torch import nn  # noqa: E402
from torch.nn import functional as TF  # noqa: E402

from onnx_util import assert_close, ort_run  # noqa: E402


class Net(nn.Module):
    """Asymmetric padding, dilation, groups, batch norm, GELU, a flatten of an NCHW image
    into a Linear layer (whose rows cconv must permute), dropout, SiLU."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4)
        self.c3 = nn.Conv2d(16, 12, (3, 2), stride=(2, 1))
        self.fc = nn.Linear(12 * 1 * 3, 32)
        self.drop = nn.Dropout(0.2)
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        x = TF.relu(self.bn(self.c1(x)))
        x = TF.gelu(self.c2(TF.pad(x, (1, 0, 0, 1))))
        x = TF.max_pool2d(x, 2)
        x = TF.leaky_relu(self.c3(x), 0.1)
        x = x.view(x.size(0), -1)
        return self.out(self.drop(TF.silu(self.fc(x))))


class ResNet(nn.Module):
    """Residual blocks, a transposed convolution, bilinear upsampling, a concatenation and an
    adaptive average pool."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = TF.relu(self.bn(self.stem(x)))
        x = TF.relu(x + self.b(TF.elu(self.a(x))))
        d = torch.tanh(self.down(x))
        u = TF.interpolate(d, scale_factor=2, mode="bilinear", align_corners=False)
        x = torch.cat([x, self.up(d), torch.sigmoid(u)], 1)
        return self.fc(TF.adaptive_avg_pool2d(x, 1).flatten(1))


def _digits():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]          # NCHW
    y = d.target
    return x[:1200], y[:1200], x[1200:], y[1200:]


def _train_torch(net, x, y, epochs=3, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 32):
            idx = perm[i:i + 32]
            opt.zero_grad()
            TF.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    return net.eval()


def _export(net, x, path, dynamo):
    kwargs = dict(input_names=["image"], output_names=["logits"])
    if dynamo:
        pytest.importorskip("onnxscript", reason="torch's default ONNX exporter needs onnxscript")
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    else:
        kwargs.update(dynamo=False, opset_version=17, dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x[:2]),), str(path), **kwargs)


@pytest.fixture(scope="module")
def trained():
    x, y, xt, yt = _digits()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)           # tiny batches: threads only contend
    try:
        return {name: _train_torch(cls(), x, y) for name, cls in (("net", Net), ("resnet", ResNet))}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", ["net", "resnet"])
def test_pytorch_model_predicts_the_same_and_keeps_training(tmp_path, trained, name, dynamo):
    x, y, xt, yt = _digits()
    net = trained[name]
    path = tmp_path / f"{name}.onnx"
    _export(net, x, path, dynamo)
    with torch.no_grad():
        reference = net(torch.from_numpy(xt)).numpy()
    (ort_logits,) = ort_run(path, xt)
    assert_close(ort_logits, reference)

    model = cconv.load_model(path)
    x_nhwc = xt.transpose(0, 2, 3, 1)                      # cconv takes NHWC
    assert model.input_shape == (8, 8, 1) and model.output_names == ["logits"]
    logits = model.predict(x_nhwc)
    err = assert_close(logits, reference)
    assert err < 1e-5
    assert np.mean(logits.argmax(1) == yt) > 0.3            # trained in PyTorch (chance: 0.1)

    # fine-tuning in cconv: the loss keeps decreasing from where PyTorch left it
    model.compile(cconv.optim.Adam(lr=1e-3), cconv.losses.SoftmaxCrossEntropy(from_logits=True))
    y1 = np.eye(10, dtype=np.float32)[y]
    before = model.evaluate(x.transpose(0, 2, 3, 1), y1)["loss"]
    history = model.fit(x.transpose(0, 2, 3, 1), y1, epochs=3, batch_size=32, verbose=0)
    after = model.evaluate(x.transpose(0, 2, 3, 1), y1)["loss"]
    assert after < before and history.history["loss"][-1] < history.history["loss"][0]
    # the fine-tuned model exports again and ONNX Runtime agrees with it
    model.export(tmp_path / "tuned.onnx")
    (tuned,) = ort_run(tmp_path / "tuned.onnx", x_nhwc)
    assert_close(tuned, model.predict(x_nhwc))


def test_torch_batch_norm_kept_as_a_layer(tmp_path):
    """Exported in training mode (TrainingMode.PRESERVE keeps BatchNormalization instead of
    folding it into the convolution): cconv gets a BatchNorm2D with PyTorch's statistics."""
    x, y, xt, yt = _digits()
    net = _train_torch(Net(), x[:256], y[:256], epochs=1)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x[:2]),), str(tmp_path / "bn.onnx"), dynamo=False,
                          opset_version=17, input_names=["image"], do_constant_folding=False,
                          dynamic_axes={"image": {0: "N"}})
    model = cconv.load_model(tmp_path / "bn.onnx")
    bn = [l for l in model.layers if isinstance(l, cconv.layers.BatchNorm2D)]
    assert len(bn) == 1
    np.testing.assert_allclose(bn[0].state["running_var"], net.bn.running_var.numpy())
    with torch.no_grad():
        assert_close(model.predict(xt.transpose(0, 2, 3, 1)), net(torch.from_numpy(xt)).numpy())
