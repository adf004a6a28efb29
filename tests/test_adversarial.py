"""cconv.adversarial: FGSM on a quickly trained digits model."""
import numpy as np
import pytest

from cconv import adversarial, datasets, models, optim

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def trained():
    x, y = datasets.load_digits()
    x_tr, x_te, y_tr, y_te = datasets.train_test_split(x, y, seed=0)
    model = models.digits_cnn(seed=0)
    model.compile(optim.Adam(lr=3e-3), "categorical_crossentropy")
    model.fit(x_tr, y_tr, epochs=4, batch_size=32, verbose=0)
    return model, x_te[:300], y_te[:300]


def _accuracy(model, x, y):
    return float(np.mean(model.predict(x).argmax(axis=1) == y))


def test_fgsm_is_the_signed_gradient_step(trained):
    model, x, y = trained
    weights = [w.copy() for w in model.get_weights()]
    eps = 0.1
    adv = adversarial.fgsm(model, x, y, eps, batch_size=64)
    assert adv.shape == x.shape and adv.dtype == np.float32
    grad = model.input_gradient(x, y)
    np.testing.assert_array_equal(adv, np.clip(x + np.float32(eps) * np.sign(grad), 0, 1))
    assert np.abs(adv - x).max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    np.testing.assert_array_equal(adversarial.fgsm(model, x, y, 0.0), x)
    unclipped = adversarial.fgsm(model, x, y, eps, clip=None)
    assert unclipped.min() < 0 and unclipped.max() > 1
    # the loss goes up
    assert model.evaluate(adv, y)["loss"] > model.evaluate(x, y)["loss"] + 0.5


def test_fgsm_lowers_accuracy_as_eps_grows(trained, capsys, tmp_path):
    model, x, y = trained
    eps_values = (0.0, 0.02, 0.05, 0.1, 0.2)
    rows = adversarial.robustness_report(model, x, y, eps_values=eps_values, path=tmp_path / "fgsm.png")
    assert [e for e, _ in rows] == list(eps_values)
    acc = [a for _, a in rows]
    assert acc[0] == pytest.approx(_accuracy(model, x, y))
    assert acc[0] > 0.9
    assert all(b <= a + 0.01 for a, b in zip(acc, acc[1:]))
    assert acc[-1] < acc[0] - 0.4
    # the gradient's direction matters: random signs of the same size barely hurt
    rng = np.random.default_rng(0)
    noisy = np.clip(x + 0.1 * rng.choice([-1.0, 1.0], size=x.shape), 0, 1).astype(np.float32)
    assert _accuracy(model, noisy, y) > acc[3] + 0.2
    out = capsys.readouterr().out
    assert "accuracy" in out and f"{acc[-1] * 100:.2f}%" in out
    Image = pytest.importorskip("PIL.Image")
    with Image.open(tmp_path / "fgsm.png") as im:
        assert im.size == (600, 400)
        arr = np.asarray(im.convert("RGB")).astype(int)
    assert arr.std() > 10


def test_robustness_report_default_eps(trained):
    model, x, y = trained
    rows = adversarial.robustness_report(model, x[:50], y[:50], verbose=False)
    assert [e for e, _ in rows] == pytest.approx([0, 1 / 255, 2 / 255, 4 / 255, 8 / 255])


def test_fgsm_uncompiled_model_uses_cross_entropy(trained):
    model, x, y = trained
    twin = models.digits_cnn(seed=0)
    twin.set_weights(model.get_weights())
    np.testing.assert_array_equal(adversarial.fgsm(twin, x[:20], y[:20], 0.05),
                                  adversarial.fgsm(model, x[:20], y[:20], 0.05))


@pytest.mark.parametrize("kwargs, match", [
    ({"eps": -0.1}, "eps"), ({"eps": float("nan")}, "eps"), ({"eps": "big"}, "eps"),
    ({"eps": 0.1, "clip": (1, 0)}, "clip"), ({"eps": 0.1, "clip": 3}, "clip"),
    ({"eps": 0.1, "batch_size": 0}, "batch_size"),
])
def test_fgsm_bad_arguments(trained, kwargs, match):
    model, x, y = trained
    with pytest.raises(ValueError, match=match):
        adversarial.fgsm(model, x[:4], y[:4], **kwargs)


def test_fgsm_length_mismatch(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="same number of samples"):
        adversarial.fgsm(model, x[:4], y[:3], 0.1)
