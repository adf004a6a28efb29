"""cconv.models: the paper's LFW network and the digits CNN."""
import numpy as np
import pytest

from cconv import models

PAPER_SHAPES = [
    ("conv1", (62, 62, 32)), ("pool1", (31, 31, 32)),
    ("conv2", (29, 29, 64)), ("pool2", (14, 14, 64)),
    ("conv3", (12, 12, 128)), ("pool3", (6, 6, 128)),
    ("flatten", (4608,)), ("dense1", (128,)), ("dense2", (256,)), ("dropout", (256,)),
    ("output", (34,)),
]


def _trainable(model):
    return sum(p.size for layer in model.layers if layer.trainable for p in layer.params.values())


def test_paper_lfw_shapes_and_parameter_count():
    model = models.paper_lfw(seed=0)
    acts = model.activations(np.zeros((2, 64, 64, 3), np.float32))
    assert [(name, a.shape[1:]) for name, a in acts.items()] == PAPER_SHAPES
    assert _trainable(model) == 724_962
    assert model.count_params() == 724_962
    # 3*3*3*32+32, 3*3*32*64+64, 3*3*64*128+128, 4608*128+128, 128*256+256, 256*34+34
    sizes = [sum(p.size for p in l.params.values()) for l in model.layers]
    assert sizes == [896, 0, 18_496, 0, 73_856, 0, 0, 589_952, 33_024, 0, 8_738]


def test_paper_lfw_layers_follow_the_paper():
    model = models.paper_lfw(seed=0)
    convs = [l.get_config() for l in model.layers if type(l).__name__ == "Conv2D"]
    assert [c["filters"] for c in convs] == [32, 64, 128]
    for c in convs:
        assert tuple(c["kernel_size"]) == (3, 3) and c["padding"] == "valid" and c["activation"] == "relu"
    pools = [l.get_config() for l in model.layers if type(l).__name__ == "MaxPool2D"]
    assert [tuple(p["pool_size"]) for p in pools] == [(2, 2)] * 3
    dense = [l.get_config() for l in model.layers if type(l).__name__ == "Dense"]
    assert [(d["units"], d["activation"]) for d in dense] == [(128, "relu"), (256, "relu"), (34, "softmax")]
    drop = [l.get_config() for l in model.layers if type(l).__name__ == "Dropout"]
    assert [d["rate"] for d in drop] == [0.5]
    probs = model.predict(np.random.default_rng(0).random((3, 64, 64, 3)))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_paper_lfw_options_and_seed():
    model = models.paper_lfw(num_classes=5, input_shape=(32, 32, 1), seed=3)
    acts = model.activations(np.zeros((1, 32, 32, 1), np.float32))
    assert acts["pool3"].shape == (1, 2, 2, 128) and acts["output"].shape == (1, 5)
    a = models.paper_lfw(seed=7).get_weights()
    b = models.paper_lfw(seed=7).get_weights()
    c = models.paper_lfw(seed=8).get_weights()
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c))
    with pytest.raises(ValueError):
        models.paper_lfw(input_shape=(8, 8, 3))          # too small for three conv+pool blocks


def test_digits_cnn():
    model = models.digits_cnn(seed=0)
    acts = model.activations(np.zeros((1, 8, 8, 1), np.float32))
    shapes = [a.shape[1:] for a in acts.values()]
    assert shapes == [(8, 8, 16), (4, 4, 16), (4, 4, 32), (2, 2, 32), (128,), (64,), (10,)]
    assert _trainable(model) == 13_706
