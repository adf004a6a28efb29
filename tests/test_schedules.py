"""Learning-rate control against hand-computed sequences: ReduceLROnPlateau, LinearWarmup,
per-batch schedules (one-cycle, cosine with warm-up, PyTorch parity), and the TensorBoard
callback read back with TensorBoard's own reader."""
import math

import numpy as np
import pytest

import cconv
from conftest import assert_resume_is_exact
from cconv import callbacks, optim
from cconv.layers import Conv2D, Dense, Flatten


def data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5, 5, 2)).astype(np.float32)
    y = (x[:, 0, 0, 0] > 0).astype(np.int64)
    return x, y


def model(lr=0.1, seed=0):
    m = cconv.Sequential([Conv2D(3, 3, activation="relu"), Flatten(), Dense(2, activation="softmax")],
                         input_shape=(5, 5, 2), seed=seed)
    m.compile(optim.SGD(lr=lr), "categorical_crossentropy")
    return m


class LrRecorder(callbacks.Callback):
    """The learning rate each batch trains with (put it after the callbacks that set it)."""

    def __init__(self):
        super().__init__()
        self.lrs = []

    def on_batch_begin(self, batch, logs=None):
        self.lrs.append(self.model.optimizer.lr)


# --------------------------------------------------------------------------- ReduceLROnPlateau
def test_reduce_lr_on_plateau_hand_sequence():
    m = model(lr=1.0)
    cb = callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, cooldown=1,
                                     min_delta=0.01, min_lr=0.2)
    cb.set_model(m)
    cb.set_params({"do_validation": True})
    cb.on_train_begin()
    values = [1.0, 0.995, 0.99, 0.98, 0.975, 0.972, 0.96, 0.955, 0.94, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    lrs = []
    for epoch, v in enumerate(values):
        logs = {"val_loss": v}
        cb.on_epoch_end(epoch, logs)
        lrs.append(m.optimizer.lr)
        assert logs["lr"] == (lrs[-2] if epoch else 1.0)         # the rate the epoch trained with
    # by hand: best 1.0; 0.995 and 0.99 are not better by more than 0.01 -> wait 1, 2 -> lr
    # 0.5, cooldown 1; epoch 3 (0.98): the cooldown ends (wait 0), 0.98 < 1.0 - 0.01 -> best
    # 0.98; 0.975, 0.972 (wait 1, 2) -> lr 0.25, cooldown; 0.96 better (best 0.96); 0.955
    # wait 1; 0.94 better; 0.9 better; then 0.9 x5: wait 1, 2 -> 0.2 (0.125 raised to
    # min_lr), cooldown; wait 1, 2, 3 -> already at min_lr: it stays.
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2, 0.2]
    # an epoch that validation_freq left without validation is skipped, not an error
    cb.on_epoch_end(99, {"loss": 1.0})
    with pytest.raises(ValueError, match="val_loss"):
        cb.set_params({})
        cb.on_epoch_end(100, {"loss": 1.0})
    # a longer cooldown: no bad epochs are counted while it lasts
    m.optimizer.lr = 1.0
    cb = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, cooldown=2)
    cb.set_model(m)
    cb.on_train_begin()
    lrs = []
    for epoch in range(7):
        cb.on_epoch_end(epoch, {"loss": 1.0})
        lrs.append(m.optimizer.lr)
    assert lrs == [1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125]


def test_reduce_lr_on_plateau_in_fit_and_max_mode():
    x, y = data()
    m = model(lr=1e-6)                                     # too small to learn: a plateau
    h = m.fit(x, y, epochs=6, verbose=0, callbacks=[callbacks.ReduceLROnPlateau(
        monitor="loss", factor=0.1, patience=2, min_delta=1.0)])
    assert h.history["lr"] == pytest.approx([1e-6, 1e-6, 1e-6, 1e-7, 1e-7, 1e-8], rel=1e-12)
    cb = callbacks.ReduceLROnPlateau(monitor="val_accuracy", patience=0, factor=0.5)
    assert cb.mode == "max"
    cb.set_model(model(lr=1.0))
    cb.on_train_begin()
    for e, v in enumerate([0.5, 0.6, 0.6]):
        cb.on_epoch_end(e, {"val_accuracy": v})
    assert cb.model.optimizer.lr == 0.5


# --------------------------------------------------------------------------- per-batch schedules
def test_linear_warmup_hand_sequence_then_hands_over():
    x, y = data(n=30)
    rec = LrRecorder()
    m = model(lr=0.1)
    m.fit(x, y, batch_size=5, epochs=2, shuffle=False, verbose=0,
          callbacks=[callbacks.LinearWarmup(4, start_factor=0.2), rec])
    expected = [0.1 * (0.2 + 0.8 * t / 4) for t in range(4)] + [0.1] * 8
    assert rec.lrs == pytest.approx(expected, rel=1e-12)
    # after the warm-up it leaves the rate to the others (an epoch schedule)
    rec = LrRecorder()
    m = model(lr=0.1)
    m.fit(x, y, batch_size=5, epochs=2, verbose=0, callbacks=[
        callbacks.LearningRateScheduler(lambda e: 0.1 / (e + 1)), callbacks.LinearWarmup(3), rec])
    assert rec.lrs == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1] + [0.05] * 6)


def test_one_cycle_per_batch_hand_sequence():
    x, y = data(n=20)
    rec = LrRecorder()
    m = model(lr=0.1)
    sched = optim.OneCycleLR(10, pct_start=0.3, anneal_strategy="linear", div_factor=10.0,
                             final_div_factor=10.0)
    m.fit(x, y, batch_size=4, epochs=2, verbose=0,
          callbacks=[callbacks.LearningRateScheduler(sched, unit="batch"), rec])
    # initial 0.01, peak 0.1 at step 2 (= 0.3 * 10 - 1), minimum 0.001 at step 9
    up = [0.01, 0.055, 0.1]
    down = [0.1 + (0.001 - 0.1) * (s - 2) / 7 for s in range(3, 10)]
    assert rec.lrs == pytest.approx(up + down, rel=1e-12)
    with pytest.raises(ValueError, match="beyond its total_steps"):
        m.fit(x, y, batch_size=4, epochs=1, verbose=0,
              callbacks=[callbacks.LearningRateScheduler(sched, unit="batch")])


def test_warmup_cosine_hand_sequence():
    s = optim.WarmupCosineLR(warmup_steps=2, total_steps=6)
    got = [s(t, 0.1) for t in range(8)]
    c = math.cos
    assert got == pytest.approx([0.0, 0.05, 0.1, 0.05 * (1 + c(math.pi / 4)), 0.05,
                                 0.05 * (1 + c(3 * math.pi / 4)), 0.0, 0.0], abs=1e-15)
    lin = optim.LinearLR(start_factor=0.25, end_factor=1.0, total_iters=3)
    assert [lin(t, 1.0) for t in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    with pytest.raises(ValueError, match="total_steps"):
        optim.WarmupCosineLR(5, 5)


def test_schedules_match_pytorch():
    torch = pytest.importorskip("torch")

    def torch_lrs(make, n, base=0.1):
        p = torch.nn.Parameter(torch.zeros(1))
        o = torch.optim.SGD([p], lr=base)
        s = make(o)
        out = []
        for _ in range(n):
            out.append(o.param_groups[0]["lr"])
            o.step()
            s.step()
        return out

    S = torch.optim.lr_scheduler
    for kw in ({}, {"three_phase": True}, {"anneal_strategy": "linear", "pct_start": 0.25}):
        ref = torch_lrs(lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=23, cycle_momentum=False, **kw), 23)
        assert [optim.OneCycleLR(23, **kw)(t, 0.1) for t in range(23)] == pytest.approx(ref, rel=1e-12)
    ref = torch_lrs(lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.1, 1.0, 3), S.CosineAnnealingLR(o, 7, 0.001)],
                                             milestones=[3]), 10)
    assert [optim.WarmupCosineLR(3, 10, 0.1, 0.001)(t, 0.1) for t in range(10)] == pytest.approx(ref, rel=1e-12)
    ref = torch_lrs(lambda o: S.LinearLR(o, 0.2, 0.9, 4), 7)
    assert [optim.LinearLR(0.2, 0.9, 4)(t, 0.1) for t in range(7)] == pytest.approx(ref, rel=1e-12)


def test_per_batch_schedule_resumes_exactly(tmp_path, restore_threads):
    cconv.set_num_threads(1)
    x, y = data(n=24)

    def run(epochs, **kw):
        m = model(lr=0.05)
        cbs = [callbacks.LearningRateScheduler(optim.WarmupCosineLR(3, 24), unit="batch"),
               callbacks.ReduceLROnPlateau(monitor="loss", patience=1)]
        m.fit(x, y, batch_size=6, epochs=epochs, verbose=0, callbacks=cbs, **kw)
        return m

    assert_resume_is_exact(run, tmp_path, epochs=5)


# --------------------------------------------------------------------------- TensorBoard
def _accumulator(path):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(path), size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.IMAGES: 0})
    acc.Reload()
    return acc


def test_tensorboard_files_read_back_with_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    x, y = data(n=30)
    m = model(lr=0.05)
    tb = callbacks.TensorBoard(tmp_path / "logs", histogram_freq=2, write_images=True, update_freq="batch")
    h = m.fit(x, y, batch_size=10, epochs=4, validation_split=0.2, verbose=0, callbacks=[tb])
    train, val = _accumulator(tmp_path / "logs" / "train"), _accumulator(tmp_path / "logs" / "validation")
    loss = train.Scalars("epoch_loss")
    assert [e.step for e in loss] == [0, 1, 2, 3]
    np.testing.assert_allclose([e.value for e in loss], h.history["loss"], rtol=1e-6)
    np.testing.assert_allclose([e.value for e in train.Scalars("epoch_accuracy")], h.history["accuracy"],
                               rtol=1e-6)
    np.testing.assert_allclose([e.value for e in val.Scalars("epoch_loss")], h.history["val_loss"], rtol=1e-6)
    assert [e.value for e in train.Scalars("epoch_learning_rate")] == pytest.approx([0.05] * 4)
    assert len(train.Scalars("batch_loss")) == 4 * 3
    # histograms of every weight after epochs 2 and 4, with the final values at step 3
    tags = train.Tags()["histograms"]
    names = [f"{layer.name}/{k}" for layer in m.layers for _, k, _ in layer.weights()]
    assert sorted(tags) == sorted(names)
    for layer in m.layers:
        for _, k, a in layer.weights():
            hs = train.Histograms(f"{layer.name}/{k}")
            assert [e.step for e in hs] == [1, 3]
            hv = hs[-1].histogram_value
            assert hv.num == a.size and hv.min == pytest.approx(a.min()) and hv.max == pytest.approx(a.max())
            assert hv.sum == pytest.approx(a.sum(), rel=1e-5, abs=1e-6)
            counts, edges = np.histogram(a.astype(np.float64), bins=30)
            np.testing.assert_array_equal(hv.bucket, counts)
            np.testing.assert_allclose(hv.bucket_limit, edges[1:])
    img = train.Images(f"{m.layers[0].name}/kernel")[-1]
    assert (img.height, img.width) == (2 * 13 + 1, 2 * 13 + 1)   # 3 filters on a 2x2 grid of 12x12 tiles


def test_tensorboard_writes_nothing_for_a_failed_epoch(tmp_path):
    pytest.importorskip("tensorboard")
    x, y = data(n=20)

    def batches():
        for k in range(100):
            if k == 5:
                raise OSError("disk gone")
            yield x[:4], y[:4]

    tb = callbacks.TensorBoard(tmp_path / "logs")
    with pytest.raises(RuntimeError, match="batch 3 of epoch 2"):
        model().fit(batches(), steps_per_epoch=3, epochs=3, verbose=0, callbacks=[tb])
    assert [e.step for e in _accumulator(tmp_path / "logs" / "train").Scalars("epoch_loss")] == [0]


def test_keras_batch_hook_names():
    x, y = data(n=12)
    seen = []

    class KerasStyle(callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(("begin", batch))

        def on_train_batch_end(self, batch, logs=None):
            seen.append(("end", batch, round(logs["size"])))

    old_style = LrRecorder()
    model().fit(x, y, batch_size=5, verbose=0, callbacks=[KerasStyle(), old_style,
                callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(("lambda", b)))])
    assert seen == [("begin", 0), ("end", 0, 5), ("lambda", 0), ("begin", 1), ("end", 1, 5), ("lambda", 1),
                    ("begin", 2), ("end", 2, 2), ("lambda", 2)]
    assert len(old_style.lrs) == 3
