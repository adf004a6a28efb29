"""Names Keras and PyTorch users type: Keras's spellings are aliases, PyTorch's get an error
naming cconv's, PyTorch's Conv2d argument order warns, (N, 1) labels train."""
import warnings

import numpy as np
import pytest

import cconv
from cconv import optim
from cconv.layers import (BatchNorm2D, Conv2D, Conv2DTranspose, Dense, DepthwiseConv2D, Dropout, Layer,
                          LeakyReLU, MaxPool2D)


def test_keras_spellings_are_aliases():
    assert Conv2D(8, 3, strides=2).stride == (2, 2)
    assert Conv2D(8, 3, dilation_rate=2).dilation == (2, 2)
    assert Conv2DTranspose(8, 3, strides=2).get_config() == Conv2DTranspose(8, 3, stride=2).get_config()
    assert MaxPool2D(pool_size=3, strides=1).stride == (1, 1)
    assert BatchNorm2D(epsilon=1e-3).eps == 1e-3
    assert LeakyReLU(negative_slope=0.2).alpha == 0.2
    assert DepthwiseConv2D(3, depthwise_initializer="zeros").get_config()["kernel_initializer"] == "zeros"
    assert optim.Adam(learning_rate=0.01, beta_1=0.8, beta_2=0.9).get_config() == \
        optim.Adam(lr=0.01, beta1=0.8, beta2=0.9).get_config()
    assert optim.SGD(learning_rate=0.5).lr == 0.5
    m = cconv.Sequential([Conv2D(4, 3, strides=2), MaxPool2D(pool_size=2, strides=1)], input_shape=(9, 9, 1))
    assert m.output_shape == (3, 3, 4)
    with pytest.raises(TypeError, match="both strides= .* and stride="):
        Conv2D(8, 3, strides=2, stride=2)


@pytest.mark.parametrize("make, says", [
    (lambda: Conv2D(out_channels=8, kernel_size=3), "'out_channels' .*calls it filters"),
    (lambda: Conv2D(8, 3, in_channels=3), "'in_channels'.*input channels from its input"),
    (lambda: MaxPool2D(kernel_size=2), "'kernel_size' .*calls it pool_size"),
    (lambda: Dense(10, bias=False), "'bias' .*use_bias"),
    (lambda: Dense(10, in_features=4), "input features"),
    (lambda: Dropout(p=0.5), "'p' .*calls it rate"),
    (lambda: BatchNorm2D(num_features=8), "channels from its input"),
    (lambda: optim.Adam(betas=(0.9, 0.99)), "beta1= and beta2="),
    (lambda: optim.SGD([np.zeros(2)], lr=0.1), r"takes the learning rate first.*compile.*attach"),
    (lambda: Dense(10, activaton="relu"), "did you mean 'activation'"),
    (lambda: Conv2D(3, 16, kernel_size=3), "kernel_size twice.*Conv2D\\(out_channels, kernel_size\\)"),
])
def test_pytorch_spellings_name_cconvs(make, says):
    with pytest.raises(TypeError, match=says):
        make()


def test_pytorch_argument_order_warns():
    with pytest.warns(UserWarning, match=r"3 filters of 16x16 with stride 3.*write Conv2D\(16, 3\)"):
        Conv2D(3, 16, 3)
    with pytest.warns(UserWarning, match="Conv2DTranspose"):
        Conv2DTranspose(32, 64, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Conv2D(64, 7, 2)                 # a ResNet stem, Keras's order: no warning
        Conv2D(16, 9, 1)
        Conv2D(3, 16, stride=3)          # the stride by name: the user knows the order


def test_user_layers_keep_their_own_keywords():
    class Scale(Layer):
        def __init__(self, strides=1, **kwargs):       # its own "strides", not an alias
            super().__init__(**kwargs)
            self.strides = strides

    assert Scale(strides=3).strides == 3
    with pytest.raises(TypeError, match="unexpected keyword argument 'stride'"):
        Scale(stride=3)
    with pytest.raises(TypeError, match="did you mean 'name'"):
        Scale(nme="x")


def test_labels_of_shape_n_by_1_with_a_softmax_and_mse():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    for loss in ("categorical_crossentropy", "mse"):
        a = cconv.Sequential([Dense(2, activation="softmax")], input_shape=(4,), seed=0)
        b = cconv.Sequential([Dense(2, activation="softmax")], input_shape=(4,), seed=0)
        a.compile("sgd", loss)
        b.compile("sgd", loss)
        assert a.fit(x, y[:, None], verbose=0).history == b.fit(x, y, verbose=0).history
