"""Callbacks: hook order, early stopping, checkpoints, learning-rate schedules, CSV logging."""
import csv
import math

import numpy as np
import pytest

import cconv
from cconv import callbacks, optim
from cconv.layers import Dense


def model_and_data(seed=0, lr=0.05):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    m = cconv.Sequential([Dense(8, activation="tanh"), Dense(2, activation="softmax")], input_shape=(4,),
                         seed=seed)
    m.compile(optim.SGD(lr=lr), "categorical_crossentropy")
    return m, x, y


class Recorder(callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.events = []

    def on_train_begin(self, logs=None):
        self.events.append(("train_begin",))

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(("epoch_begin", epoch))

    def on_batch_begin(self, batch, logs=None):
        self.events.append(("batch_begin", batch))

    def on_batch_end(self, batch, logs=None):
        self.events.append(("batch_end", batch, sorted(logs)))

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(("epoch_end", epoch, sorted(logs)))

    def on_train_end(self, logs=None):
        self.events.append(("train_end",))


def test_hook_order_and_logs():
    m, x, y = model_and_data()
    rec = Recorder()
    m.fit(x, y, epochs=2, batch_size=20, validation_split=0.5, callbacks=[rec], verbose=0)
    assert rec.model is m and rec.params["epochs"] == 2 and rec.params["steps"] == 1
    batch_keys = ["accuracy", "loss", "size"]
    epoch_keys = ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert rec.events == [
        ("train_begin",),
        ("epoch_begin", 0), ("batch_begin", 0), ("batch_end", 0, batch_keys), ("epoch_end", 0, epoch_keys),
        ("epoch_begin", 1), ("batch_begin", 0), ("batch_end", 0, batch_keys), ("epoch_end", 1, epoch_keys),
        ("train_end",),
    ]


def test_train_end_called_even_on_error():
    m, x, y = model_and_data()
    rec = Recorder()
    xb = x.copy()
    xb[0] = np.nan
    with pytest.raises(FloatingPointError):
        m.fit(xb, y, epochs=1, shuffle=False, callbacks=[rec], verbose=0)
    assert rec.events[-1] == ("train_end",)


def test_lambda_callback_and_stop_training():
    m, x, y = model_and_data()
    seen = []

    def stop_after_two(epoch, logs):
        seen.append(epoch)
        if epoch == 1:
            m.stop_training = True

    h = m.fit(x, y, epochs=10, callbacks=[callbacks.LambdaCallback(on_epoch_end=stop_after_two)], verbose=0)
    assert seen == [0, 1] and h.epoch == [0, 1]
    with pytest.raises(ValueError, match="unknown hook"):
        callbacks.LambdaCallback(on_epoch_finish=print)


def test_early_stopping_patience_and_restore_best_weights():
    m, x, y = model_and_data()
    # monitor a quantity that gets worse every epoch: stop after 1 + patience epochs
    values = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    snapshots = []

    class Inject(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["score"] = next(values)
            snapshots.append([p.copy() for _, p, _ in self.model.parameters()])

    es = callbacks.EarlyStopping(monitor="score", patience=2, restore_best_weights=True)
    h = m.fit(x, y, epochs=8, callbacks=[Inject(), es], verbose=0)
    assert h.epoch == [0, 1, 2] and es.stopped_epoch == 2 and es.best_epoch == 0 and es.best == 1.0
    for (_, p, _), best in zip(m.parameters(), snapshots[0]):
        np.testing.assert_array_equal(p, best)          # weights of epoch 0 put back
    assert not np.array_equal(snapshots[0][0], snapshots[2][0])


def test_early_stopping_mode_min_delta_and_missing_key():
    es = callbacks.EarlyStopping(monitor="val_accuracy")
    assert es.mode == "max"
    es2 = callbacks.EarlyStopping(monitor="loss", min_delta=10.0, patience=0)
    m, x, y = model_and_data()
    h = m.fit(x, y, epochs=5, callbacks=[es2], verbose=0)
    assert h.epoch == [0, 1]                              # improvements smaller than 10 do not count
    with pytest.raises(ValueError, match="val_loss.*validation_data"):
        m.fit(x, y, epochs=2, callbacks=[callbacks.EarlyStopping()], verbose=0)
    with pytest.raises(ValueError, match="patience"):
        callbacks.EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="mode"):
        callbacks.EarlyStopping(mode="up")


def test_model_checkpoint_every_epoch_and_best_only(tmp_path):
    m, x, y = model_and_data()
    every = callbacks.ModelCheckpoint(tmp_path / "ep{epoch:02d}-{loss:.3f}.npz")
    h = m.fit(x, y, epochs=3, callbacks=[every], verbose=0)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert [f[:4] for f in files] == ["ep01", "ep02", "ep03"]
    assert files[2] == f"ep03-{h.history['loss'][2]:.3f}.npz"
    last = cconv.load_model(tmp_path / files[2])
    np.testing.assert_array_equal(last.predict(x), m.predict(x))

    scores = iter([0.5, 0.3, 0.4, 0.2])
    versions = []

    class Inject(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["score"] = next(scores)
            versions.append([p.copy() for _, p, _ in self.model.parameters()])

    best = callbacks.ModelCheckpoint(tmp_path / "best.npz", monitor="score", save_best_only=True)
    saves = []
    orig_save = m.save
    m.save = lambda path, **kw: (saves.append(len(versions) - 1), orig_save(path, **kw))
    m.fit(x, y, epochs=4, callbacks=[Inject(), best], verbose=0)
    assert saves == [0, 1, 3] and best.best == 0.2
    loaded = cconv.load_model(tmp_path / "best.npz")
    for (_, p, _), v in zip(loaded.parameters(), versions[3]):
        np.testing.assert_array_equal(p, v)
    with pytest.raises(ValueError, match="cannot be filled"):
        m.fit(x, y, epochs=1, callbacks=[callbacks.ModelCheckpoint(tmp_path / "{nope}.npz")], verbose=0)


def test_learning_rate_scheduler_forms():
    m, x, y = model_and_data(lr=0.1)
    h = m.fit(x, y, epochs=3, callbacks=[callbacks.LearningRateScheduler(lambda e: 0.1 / (e + 1))], verbose=0)
    assert h.history["lr"] == pytest.approx([0.1, 0.05, 0.1 / 3])

    m, x, y = model_and_data(lr=0.1)
    h = m.fit(x, y, epochs=3, callbacks=[callbacks.LearningRateScheduler(lambda e, lr: lr * 0.5)], verbose=0)
    assert h.history["lr"] == pytest.approx([0.05, 0.025, 0.0125])

    m, x, y = model_and_data(lr=0.1)
    sched = callbacks.LearningRateScheduler(optim.StepLR(step_size=2, gamma=0.1))
    h = m.fit(x, y, epochs=5, callbacks=[sched], verbose=0)
    assert h.history["lr"] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])

    m, x, y = model_and_data(lr=0.2)
    h = m.fit(x, y, epochs=3, callbacks=[callbacks.LearningRateScheduler(optim.CosineAnnealingLR(2))],
              verbose=0)
    assert h.history["lr"] == pytest.approx([0.2, 0.1, 0.0], abs=1e-12)


def test_learning_rate_really_used():
    """lr 0 from the schedule: the weights do not move."""
    m, x, y = model_and_data()
    before = [p.copy() for _, p, _ in m.parameters()]
    m.fit(x, y, epochs=2, callbacks=[callbacks.LearningRateScheduler(lambda e: 0.0)], verbose=0)
    for (_, p, _), b in zip(m.parameters(), before):
        np.testing.assert_array_equal(p, b)
    with pytest.raises(ValueError, match="finite and >= 0"):
        m.fit(x, y, epochs=1, callbacks=[callbacks.LearningRateScheduler(lambda e: math.nan)], verbose=0)
    with pytest.raises(TypeError, match="not a number"):
        m.fit(x, y, epochs=1, callbacks=[callbacks.LearningRateScheduler(lambda e: "fast")], verbose=0)
    with pytest.raises(TypeError):
        callbacks.LearningRateScheduler(0.1)


def test_csv_logger(tmp_path):
    m, x, y = model_and_data()
    path = tmp_path / "log.csv"
    h = m.fit(x, y, epochs=3, validation_split=0.25, callbacks=[callbacks.CSVLogger(path)], verbose=0)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert set(rows[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"}
    assert [float(r["val_loss"]) for r in rows] == h.history["val_loss"]
    # append=True adds rows without a second header
    m.fit(x, y, epochs=1, callbacks=[callbacks.CSVLogger(path, append=True)], verbose=0)
    with open(path) as f:
        lines = f.read().splitlines()
    assert len(lines) == 5 and lines[0].startswith("epoch")


def test_callback_state_survives_resume(tmp_path):
    """EarlyStopping's counters are checkpointed, so a resumed run stops at the same epoch."""
    m, x, y = model_and_data()
    ckpt = tmp_path / "c.npz"
    values = [5.0, 4.0, 4.5, 4.6, 4.7, 4.8]

    class Inject(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["score"] = values[epoch]

    es = callbacks.EarlyStopping(monitor="score", patience=2)
    m.fit(x, y, epochs=3, checkpoint=ckpt, callbacks=[Inject(), es], verbose=0)
    assert es.wait == 1 and es.best == 4.0 and es.stopped_epoch is None
    m2, _, _ = model_and_data()
    es2 = callbacks.EarlyStopping(monitor="score", patience=2)      # a fresh one would stop at epoch 5
    h = m2.fit(x, y, epochs=6, checkpoint=ckpt, resume=ckpt, callbacks=[Inject(), es2], verbose=0)
    assert h.epoch == [0, 1, 2, 3] and es2.stopped_epoch == 3


def test_a_skipped_non_finite_batch_leaves_batch_norm_statistics_alone():
    """A NaN sample in one batch, skipped by SkipNonFinite: before, the batch-norm running
    statistics had already taken the NaN in the forward pass (every later prediction NaN);
    now a skipped batch changes nothing, as train_on_batch's NonFiniteLossError promises."""
    import cconv
    from cconv.layers import BatchNorm2D, Dense
    from cconv.training import NonFiniteLossError
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = rng.integers(0, 2, 64)
    x[5, 0] = np.nan
    model = cconv.Sequential([Dense(8), BatchNorm2D(), Dense(2, activation="softmax")], input_shape=(4,), seed=0)
    model.compile("sgd", "categorical_crossentropy")
    bn = model.layers[1]
    before = {k: v.copy() for k, v in bn.state.items()}
    with pytest.raises(NonFiniteLossError):
        model.train_on_batch(x[:16], y[:16])
    for k, v in bn.state.items():
        np.testing.assert_array_equal(v, before[k])
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False,
              callbacks=[callbacks.SkipNonFinite(verbose=0)])
    assert all(np.all(np.isfinite(v)) for v in bn.state.values())
    assert np.all(np.isfinite(model.predict(x[16:])))
