"""cconv.data: datasets from arrays and folders of images, their order, shards, maps and
prefetching, and fit / evaluate / predict on datasets and generators (bad input included)."""
import csv
import os
import threading
import time

import numpy as np
import pytest

import cconv
from conftest import assert_resume_is_exact
from cconv import callbacks, data
from cconv.layers import Conv2D, Dense, Flatten, MaxPool2D

Image = pytest.importorskip("PIL.Image")


def write_folder(root, x, y, ext="png", classes=None):
    """Save uint8 images ``x`` under ``root/<class>/img<i>.<ext>``; returns the positions of
    the samples in the folder's order (class by class, files sorted)."""
    classes = classes or [f"class{c}" for c in range(int(y.max()) + 1)]
    for name in classes:
        os.makedirs(root / name, exist_ok=True)
    for i in range(len(x)):
        img = Image.fromarray(x[i] if x.shape[-1] > 1 else x[i, :, :, 0])
        img.save(root / classes[y[i]] / f"img{i:04d}.{ext}")
    return np.concatenate([np.flatnonzero(y == c) for c in range(len(classes))])


def images(n=30, side=8, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    y = np.arange(n) % classes
    return x, y


def small_model(seed=1, side=8, classes=3, lr=1e-3):
    m = cconv.Sequential([Conv2D(4, 3, activation="relu"), MaxPool2D(2), Flatten(),
                          Dense(classes, activation="softmax")], input_shape=(side, side, 3), seed=seed)
    m.compile(cconv.optim.Adam(lr=lr), "categorical_crossentropy")
    return m


# --------------------------------------------------------------------------- order
def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    a = data.epoch_order(50, 7, 3)
    assert sorted(a) == list(range(50))
    np.testing.assert_array_equal(a, data.epoch_order(50, 7, 3))
    assert not np.array_equal(a, data.epoch_order(50, 7, 4))
    assert not np.array_equal(a, data.epoch_order(50, 8, 3))
    ds = data.Dataset.from_arrays(np.arange(50)).shuffle(7)
    np.testing.assert_array_equal(ds.order(3), a)
    # iterating runs epochs 0, 1, ...: the second loop is epoch 1
    first, second = list(ds), list(ds)
    np.testing.assert_array_equal(first, data.epoch_order(50, 7, 0))
    np.testing.assert_array_equal(second, data.epoch_order(50, 7, 1))


@pytest.mark.parametrize("n, shards, drop", [(10, 3, False), (10, 3, True), (12, 4, False), (5, 5, True)])
def test_shards_are_disjoint_and_cover_the_epoch(n, shards, drop):
    base = data.Dataset.from_arrays(np.arange(n)).shuffle(3)
    for epoch in (0, 1):
        parts = [list(base.shard(shards, i, drop_remainder=drop).epoch(epoch)) for i in range(shards)]
        flat = [v for p in parts for v in p]
        assert len(flat) == len(set(flat))
        expected = base.order(epoch)
        if drop:
            expected = expected[:n - n % shards]
            assert {len(p) for p in parts} == {n // shards}
        assert sorted(flat) == sorted(expected)
        # tf.data's semantics: shard i holds elements i, i + k, ... of the epoch's order
        np.testing.assert_array_equal(parts[1], expected[1::shards])
        for i, p in enumerate(parts):
            assert len(base.shard(shards, i, drop_remainder=drop)) == len(p)


def test_batches_keep_every_sample_once_and_the_last_partial_batch():
    x = np.arange(23)
    for prefetch in (0, 1, 3):
        ds = data.Dataset.from_arrays(x, x * 10).shuffle(1).batch(5).prefetch(prefetch)
        for epoch in (0, 2):
            got = list(ds.batches(epoch))
            assert [len(b[0]) for b in got] == [5, 5, 5, 5, 3]
            seen = np.concatenate([b[0] for b in got])
            np.testing.assert_array_equal(seen, ds.order(epoch))
            np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), seen * 10)
    dropped = data.Dataset.from_arrays(x).batch(5, drop_remainder=True).prefetch(2)
    assert [len(b) for b in dropped.epoch(0)] == [5, 5, 5, 5] and len(dropped) == 4


@pytest.mark.parametrize("prefetch", [0, 2])
def test_batch_parts_for_data_parallel_fit(prefetch):
    """batches(epoch, part=) loads the contiguous part of each batch that part(m) names, in
    the epoch's order; None for an empty part; the parts of all processes are the batch."""
    x = np.arange(23, dtype=np.float64).reshape(23, 1)
    ds = data.Dataset.from_arrays(x, x[:, 0].astype(np.int64)).shuffle(seed=3).batch(10).prefetch(prefetch)
    whole = [bx[:, 0].tolist() for bx, _ in ds.batches(2)]
    assert [len(b) for b in whole] == [10, 10, 3]
    for p in (2, 4):
        parts = [list(ds.batches(2, part=lambda m, r=r: (r * m // p, (r + 1) * m // p))) for r in range(p)]
        for b, batch in enumerate(whole):
            got = []
            for r in range(p):
                element = parts[r][b]
                lo, hi = r * len(batch) // p, (r + 1) * len(batch) // p
                if hi == lo:
                    assert element is None
                else:
                    assert element[0][:, 0].tolist() == batch[lo:hi]
                    got += element[0][:, 0].tolist()
            assert got == batch
    with pytest.raises(ValueError, match="batch"):
        data.Dataset.from_arrays(x).epoch(0, part=lambda m: (0, m))


def test_take_skip_map_and_structures():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.arange(6)
    ds = data.Dataset.from_arrays(x, y).skip(1).take(4)
    assert len(ds) == 4 and [int(e[1]) for e in ds.epoch(0)] == [1, 2, 3, 4]
    doubled = ds.map(lambda a, b: (a * 2, b + 100)).batch(3)
    xb, yb = next(doubled.epoch(0))
    np.testing.assert_array_equal(xb, x[1:4] * 2)
    np.testing.assert_array_equal(yb, y[1:4] + 100)
    per_batch = ds.batch(2).map(lambda a, b: (a.sum(axis=1, keepdims=True), b))
    assert next(per_batch.epoch(0))[0].shape == (2, 1)
    multi = data.Dataset.from_arrays({"a": x, "b": x[:, :1]}, y).batch(4)
    xb, yb = next(multi.epoch(0))
    assert set(xb) == {"a", "b"} and xb["b"].shape == (4, 1)
    with pytest.raises(ValueError, match="before batch"):
        data.Dataset.from_arrays(x).batch(2).shuffle(0)
    with pytest.raises(ValueError, match="different numbers of samples"):
        data.Dataset.from_arrays(x, y[:5])
    with pytest.raises(ValueError, match="one shape"):
        list(data.Dataset.from_arrays(x).map(lambda a: a[: int(a[0]) % 4 // 2 + 1]).batch(6).epoch(0))


# --------------------------------------------------------------------------- prefetch
def _wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    return condition()


def test_prefetch_runs_ahead_but_stays_bounded():
    produced = []

    def record(v):
        produced.append(int(v[0]))
        return v

    ds = data.Dataset.from_arrays(np.arange(40)).batch(2).map(record).prefetch(3)
    it = ds.epoch(0)
    next(it)
    assert _wait_for(lambda: len(produced) >= 4)      # the one taken and 3 ahead
    time.sleep(0.2)                                   # the thread waits for room in the queue
    assert len(produced) <= 1 + 3 + 1, produced       # at most the queue and one in hand
    rest = list(it)
    assert len(rest) == 19 and len(produced) == 20


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "cconv-prefetch"]


def test_prefetch_thread_stops_when_abandoned_or_failed():
    before = len(_prefetch_threads())
    ds = data.Dataset.from_arrays(np.arange(1000)).batch(2).prefetch(2)
    it = ds.epoch(0)
    next(it)
    it.close()
    assert len(_prefetch_threads()) == before

    def fail(v):
        if v[0] >= 6:
            raise KeyError("bad sample")
        return v

    it = data.Dataset.from_arrays(np.arange(20)).batch(2).map(fail).prefetch(2).epoch(0)
    with pytest.raises(KeyError, match="bad sample"):     # the thread's exception, as it was
        list(it)
    time.sleep(0.05)
    assert len(_prefetch_threads()) == before


def test_prefetch_overlaps_loading_with_the_consumer():
    """While the consumer holds element i, the thread produces element i + 1 (without
    prefetching it would not, and the wait below would time out)."""
    ready = [threading.Event() for _ in range(6)]

    def mark(v):
        ready[int(v[0])].set()
        return v

    ds = data.Dataset.from_arrays(np.arange(6)).batch(1).map(mark)
    for v in ds.prefetch(1).epoch(0):
        i = int(v[0])
        if i + 1 < 6:
            assert ready[i + 1].wait(10), f"element {i + 1} was not produced while {i} was in use"
    ready = [threading.Event() for _ in range(6)]
    for v in ds.epoch(0):                             # no prefetch: nothing runs ahead
        assert not ready[int(v[0]) + 1].is_set() if int(v[0]) + 1 < 6 else True


# --------------------------------------------------------------------------- folders
def test_folder_dataset_reads_classes_in_order(tmp_path):
    x, y = images(n=9)
    order = write_folder(tmp_path / "imgs", x, y)
    ds = data.Dataset.from_folder(tmp_path / "imgs", image_size=None)
    assert ds.class_names == ["class0", "class1", "class2"] and len(ds) == 9
    xb, yb = next(ds.batch(9).epoch(0))
    assert xb.dtype == np.float32 and xb.shape == (9, 8, 8, 3)
    np.testing.assert_array_equal(xb, x[order].astype(np.float32))     # PNG: lossless, [0, 255]
    np.testing.assert_array_equal(yb, y[order])
    cat = data.Dataset.from_folder(tmp_path / "imgs", image_size=4, label_mode="categorical",
                                   color_mode="grayscale").batch(9)
    xb, yb = next(cat.epoch(0))
    assert xb.shape == (9, 4, 4, 1) and yb.shape == (9, 3)
    np.testing.assert_array_equal(yb.argmax(1), y[order])
    only = data.Dataset.from_folder(tmp_path / "imgs", labels=None, image_size=None).batch(4)
    assert next(only.epoch(0)).shape == (4, 8, 8, 3)
    crop = data.Dataset.from_folder(tmp_path / "imgs", image_size=None, crop=(2, 1, 6, 4)).batch(9)
    np.testing.assert_array_equal(next(crop.epoch(0))[0], x[order][:, 1:4, 2:6].astype(np.float32))


def test_folder_listing_skips_link_loops_and_non_regular_files(tmp_path):
    # Two links that point at each other's folders made the walk with follow_links endless,
    # and a FIFO named *.png was listed and then blocked its reader forever.
    x, y = images(n=6)
    write_folder(tmp_path / "imgs", x, y)
    os.symlink(tmp_path / "imgs" / "class1", tmp_path / "imgs" / "class0" / "loop")
    os.symlink(tmp_path / "imgs" / "class0", tmp_path / "imgs" / "class1" / "loop")
    os.mkfifo(tmp_path / "imgs" / "class2" / "pipe.png")
    t0 = time.perf_counter()
    ds = data.Dataset.from_folder(tmp_path / "imgs", image_size=None, follow_links=True)
    assert time.perf_counter() - t0 < 10
    assert len(ds) == 10          # each class's own 2 images, and through a link the other's 2
    xb, _ = next(ds.batch(len(ds)).epoch(0))
    assert xb.shape[0] == len(ds)


def test_folder_dataset_trains_like_the_same_images_as_arrays(tmp_path, restore_threads):
    cconv.set_num_threads(1)
    x, y = images(n=30)
    order = write_folder(tmp_path / "imgs", x, y)
    xs, ys = x[order].astype(np.float32), y[order]
    folder = data.Dataset.from_folder(tmp_path / "imgs", image_size=None)
    runs = {
        "folder": folder.shuffle(5).batch(7).prefetch(2),
        "arrays": data.Dataset.from_arrays(xs, ys).shuffle(5).batch(7),
    }
    results = {}
    for name, ds in runs.items():
        m = small_model()
        h = m.fit(ds, epochs=3, verbose=0, validation_data=folder.batch(16))
        results[name] = (h.history, m.get_weights())
    assert results["folder"][0] == results["arrays"][0]
    for a, b in zip(results["folder"][1], results["arrays"][1]):
        np.testing.assert_array_equal(a, b)
    # unshuffled, a folder dataset is fit(x, y, shuffle=False) on the same arrays
    m1, m2 = small_model(), small_model()
    m1.fit(folder.batch(7), epochs=2, verbose=0)
    m2.fit(xs, ys, batch_size=7, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert m1.evaluate(folder.batch(8)) == m2.evaluate(xs, ys, batch_size=8)
    np.testing.assert_array_equal(m1.predict(folder.batch(8)), m2.predict(xs))


def test_image_dataset_from_directory_subsets(tmp_path):
    x, y = images(n=20)
    write_folder(tmp_path / "imgs", x, y, ext="jpg")
    train, val = data.image_dataset_from_directory(tmp_path / "imgs", image_size=(6, 6), batch_size=4,
                                                   seed=3, validation_split=0.25, subset="both")
    assert train.num_samples() == 15 and val.num_samples() == 5
    files = lambda ds: set(ds._source.files)              # noqa: E731
    assert not files(train) & files(val) and len(files(train) | files(val)) == 20
    again = data.image_dataset_from_directory(tmp_path / "imgs", image_size=(6, 6), batch_size=4,
                                              seed=3, validation_split=0.25, subset="validation")
    assert files(again) == files(val)
    xb, yb = next(train.batches(0))
    assert xb.shape == (4, 6, 6, 3) and yb.dtype == np.int64
    with pytest.raises(ValueError, match="seed"):
        data.image_dataset_from_directory(tmp_path / "imgs", validation_split=0.2, subset="training")


def test_folder_dataset_memory_is_one_batch(tmp_path, monkeypatch):
    """Only the images of the batches asked for are decoded."""
    x, y = images(n=40)
    write_folder(tmp_path / "imgs", x, y)
    decoded = []
    real = data._images.decode
    monkeypatch.setattr(data._images, "decode", lambda *a, **k: decoded.append(a[1]) or real(*a, **k))
    it = data.Dataset.from_folder(tmp_path / "imgs", image_size=None).batch(4).epoch(0)
    next(it)
    next(it)
    assert len(decoded) == 8


# --------------------------------------------------------------------------- generators
def test_generator_with_steps_per_epoch_trains():
    rng = np.random.default_rng(0)
    x, y = images(n=60)
    xf = x.astype(np.float32) / 255
    y = (xf[:, :4, :, 0].mean(axis=(1, 2)) > xf[:, 4:, :, 0].mean(axis=(1, 2))).astype(np.int64)
    pulled = []

    def gen():
        while True:
            i = rng.integers(0, 60, 10)
            pulled.append(1)
            yield xf[i], y[i]

    m = small_model(classes=2, lr=1e-2)
    before = m.evaluate(xf, y)["loss"]
    h = m.fit(gen(), steps_per_epoch=6, epochs=5, verbose=0)
    assert len(h.history["loss"]) == 5 and len(pulled) == 30       # the generator continues
    assert m.evaluate(xf, y)["loss"] < 0.8 * before
    # a list of batches is re-iterated each epoch
    batches = [(xf[i:i + 10], y[i:i + 10]) for i in range(0, 60, 10)]
    h = m.fit(batches, epochs=2, verbose=0)
    assert len(h.history["loss"]) == 2
    assert m.predict(iter([xf[:5], (xf[5:9],)])).shape == (9, 2)


def test_generator_that_runs_out_stops_before_the_epoch(tmp_path):
    x, y = images(n=12)
    xf = x.astype(np.float32)
    m = small_model()
    log = tmp_path / "log.csv"
    gen = ((xf[i:i + 4], y[i:i + 4]) for i in range(0, 12, 4))
    with pytest.raises(ValueError, match=r"ran out: 0 batches in epoch 2"):
        m.fit(gen, epochs=3, verbose=0, callbacks=[callbacks.CSVLogger(log)])
    with open(log) as f:
        assert len(list(csv.reader(f))) == 2                # the header and epoch 1 only
    gen = ((xf[i:i + 4], y[i:i + 4]) for i in range(0, 12, 4))
    with pytest.raises(ValueError, match="ran out: 3 batches in epoch 1, steps_per_epoch=4"):
        m.fit(gen, steps_per_epoch=4, verbose=0)


def test_bad_batches_name_the_batch_and_write_nothing_for_the_epoch(tmp_path):
    x, y = images(n=16)
    xf = x.astype(np.float32)

    def bad_shape():
        yield xf[:4], y[:4]
        yield xf[4:8, :6, :6], y[4:8]

    m = small_model()
    with pytest.raises(ValueError, match=r"batch 2 of epoch 1.*shape \(4, 6, 6, 3\).*\(None, 8, 8, 3\)"):
        m.fit(bad_shape(), verbose=0)

    def bad_targets():
        yield xf[:4], y[:3]

    with pytest.raises(ValueError, match="batch 1 of epoch 1.*different numbers of samples"):
        m.fit(bad_targets(), verbose=0)
    with pytest.raises(TypeError, match="batch 1 of epoch 1.*tuples"):
        m.fit(iter([xf[:4]]), verbose=0)

    def raises(after):
        for k in range(100):
            if k == after:
                raise ZeroDivisionError("the data source broke")
            yield xf[:4], y[:4]

    ckpt, log = tmp_path / "ckpt.npz", tmp_path / "log.csv"
    with pytest.raises(RuntimeError, match="batch 3 of epoch 2.*ZeroDivisionError: the data source "
                                           "broke") as info:
        m.fit(raises(5), steps_per_epoch=3, epochs=3, verbose=0, checkpoint=ckpt,
              callbacks=[callbacks.CSVLogger(log)])
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    with open(log) as f:
        assert [r[0] for r in csv.reader(f)] == ["epoch", "0"]           # no row for epoch 2
    state = cconv.checkpoint.load_training_state(ckpt)[2]
    assert state["epoch"] == 1                                           # the checkpoint of epoch 1


@pytest.mark.parametrize("problem", ["corrupt", "not an image", "truncated"])
def test_bad_image_file_is_named_with_its_batch(tmp_path, problem):
    x, y = images(n=12)
    write_folder(tmp_path / "imgs", x, y, ext="jpg")
    bad = tmp_path / "imgs" / "class1" / "img0007.jpg"
    if problem == "corrupt":
        bad.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))
    elif problem == "not an image":
        bad.write_text("these are my notes, not a photo")
    else:
        bad.write_bytes(bad.read_bytes()[:60])
    ds = data.Dataset.from_folder(tmp_path / "imgs", image_size=(8, 8)).batch(4).prefetch(2)
    m = small_model()
    ckpt = tmp_path / "ckpt.npz"
    with pytest.raises(ValueError, match=r"batch 2 of epoch 1.*cannot decode image .*img0007\.jpg"):
        m.fit(ds, epochs=2, verbose=0, checkpoint=ckpt)
    assert not ckpt.exists()


def test_folder_problems_are_named(tmp_path):
    x, y = images(n=6)
    write_folder(tmp_path / "imgs", x, y)
    os.makedirs(tmp_path / "imgs" / "empty_class")
    (tmp_path / "imgs" / "class0" / "README.txt").write_text("ignored, as Keras does")
    with pytest.raises(ValueError, match=r"class folder .*empty_class.* holds no image"):
        data.Dataset.from_folder(tmp_path / "imgs")
    ok = data.Dataset.from_folder(tmp_path / "imgs", class_names=["class0", "class1"])
    assert len(ok) == 4 and ok.class_names == ["class0", "class1"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.Dataset.from_folder(tmp_path / "nowhere")
    os.makedirs(tmp_path / "flat")
    Image.fromarray(x[0]).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="no sub-folders"):
        data.Dataset.from_folder(tmp_path / "flat")
    with pytest.raises(ValueError, match="missing"):
        data.Dataset.from_folder(tmp_path / "imgs", class_names=["class0", "dogs"])
    with pytest.raises(ValueError, match="call .batch"):
        small_model().fit(data.Dataset.from_folder(tmp_path / "imgs", class_names=["class0"]), verbose=0)


def test_fit_with_dataset_checks_its_arguments(tmp_path):
    x, y = images(n=8)
    ds = data.Dataset.from_arrays(x.astype(np.float32), y).batch(4)
    m = small_model()
    with pytest.raises(ValueError, match="y must not be given"):
        m.fit(ds, y, verbose=0)
    with pytest.raises(ValueError, match="batch_size must not be given"):
        m.fit(ds, batch_size=4, verbose=0)
    with pytest.raises(ValueError, match="validation_split needs arrays"):
        m.fit(ds, validation_split=0.5, verbose=0)
    with pytest.raises(ValueError, match="steps_per_epoch is for datasets"):
        m.fit(x.astype(np.float32), y, steps_per_epoch=2, verbose=0)
    # an unbuilt Sequential is built from the first batch of a dataset
    lazy = cconv.Sequential([Flatten(), Dense(3, activation="softmax")], seed=0)
    lazy.compile("adam", "categorical_crossentropy")
    lazy.fit(ds, verbose=0)
    assert lazy.input_shape == (8, 8, 3)


def test_resume_with_a_dataset_equals_an_uninterrupted_run(tmp_path, restore_threads):
    cconv.set_num_threads(1)
    x, y = images(n=20)
    ds = data.Dataset.from_arrays(x.astype(np.float32) / 255, y).shuffle(4).batch(6).prefetch(1)

    def run(epochs, **kw):
        m = small_model()
        m.fit(ds, epochs=epochs, verbose=0, **kw)
        return m

    ckpt = assert_resume_is_exact(run, tmp_path)
    other = data.Dataset.from_arrays(x.astype(np.float32) / 255, y).shuffle(5).batch(6)
    with pytest.raises(ValueError, match="fit was called differently"):
        small_model().fit(other, epochs=4, verbose=0, resume=ckpt)


@pytest.mark.parametrize("in_file", [False, True])
def test_cache_decodes_each_file_once_and_changes_nothing(tmp_path, monkeypatch, in_file):
    x, y = images(n=20)
    write_folder(tmp_path / "imgs", x, y, ext="jpg")
    decoded = []
    real = data._images.decode
    monkeypatch.setattr(data._images, "decode", lambda *a, **k: decoded.append(a[1]) or real(*a, **k))
    plain = data.Dataset.from_folder(tmp_path / "imgs", image_size=(6, 6)).shuffle(2).batch(6)
    cached = data.Dataset.from_folder(tmp_path / "imgs", image_size=(6, 6)).cache(
        tmp_path / "cache.npy" if in_file else None).shuffle(2).batch(6).prefetch(2)
    for epoch in (0, 1, 2):
        for (a, b), (c, d) in zip(plain.batches(epoch), cached.batches(epoch)):
            np.testing.assert_array_equal(a, c)
            np.testing.assert_array_equal(b, d)
    assert len(decoded) == 3 * 20 + 20                    # plain: every epoch; cached: once
    assert sorted(set(decoded[-20:])) == sorted(set(decoded))
    if in_file:
        assert isinstance(cached._source.store[0], np.memmap)
        assert (tmp_path / "cache.npy").stat().st_size >= 20 * 6 * 6 * 3 * 4
    with pytest.raises(ValueError, match="right after"):
        data.Dataset.from_folder(tmp_path / "imgs").shuffle(0).cache()
    arrays = data.Dataset.from_arrays(np.zeros((3, 2)))
    assert arrays.cache() is arrays
