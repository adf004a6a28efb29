"""Saving and loading models: round trips, corrupted and crafted files, crash-safe writes."""
import glob
import json
import os
import random
import signal
import time
import zipfile

import numpy as np
import pytest

import cconv
from cconv import io as cio
from cconv import saving
from cconv.layers import BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D


def small_model(seed=0, units=5, compiled=True):
    model = cconv.Sequential([
        Conv2D(4, 3, padding="same", activation="relu"),
        BatchNorm2D(),
        MaxPool2D(2),
        Flatten(),
        Dropout(0.25),
        Dense(units, activation="softmax"),
    ], input_shape=(6, 6, 2), seed=seed)
    if compiled:
        model.compile("adam", "categorical_crossentropy")
    return model


def data(n=16, units=5, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 6, 6, 2)).astype(np.float32), rng.integers(0, units, n)


@pytest.fixture
def trained(tmp_path):
    model = small_model()
    x, y = data()
    for _ in range(3):
        model.train_on_batch(x, y)
    path = tmp_path / "model.npz"
    model.save(path)
    return model, path


def _all_arrays(model):
    return [a for l in model.layers for a in list(l.params.values()) + list(l.state.values())]


# --------------------------------------------------------------------------- round trips
def test_save_load_predict_identical(trained):
    model, path = trained
    x, _ = data(n=9, seed=5)
    loaded = cconv.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.get_config() == model.get_config()
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    for a, b in zip(_all_arrays(model), _all_arrays(loaded)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def _align_generators(src, dst):
    """Give dst's dropout generators src's state (masks then match)."""
    for a, b in zip(src.layers, dst.layers):
        for k, g in vars(a).items():
            if isinstance(g, np.random.Generator):
                getattr(b, k).bit_generator.state = g.bit_generator.state


def test_loaded_optimizer_continues_identically(trained):
    """The optimizer state (Adam moments, step count) is saved: training continues exactly."""
    model, path = trained
    loaded = cconv.load_model(path)
    assert type(loaded.optimizer) is type(model.optimizer)
    assert type(loaded.loss) is type(model.loss)
    x, y = data(seed=7)
    _align_generators(model, loaded)
    for _ in range(2):
        model.train_on_batch(x, y)
        loaded.train_on_batch(x, y)
    for a, b in zip(_all_arrays(model), _all_arrays(loaded)):
        np.testing.assert_array_equal(a, b)


def test_fresh_optimizer_differs_from_restored(trained):
    """Control for the test above: without the saved state the next step is different."""
    model, path = trained
    fresh = cconv.load_model(path, compile=False)
    assert not fresh.compiled
    fresh.compile("adam", "categorical_crossentropy")
    x, y = data(seed=7)
    _align_generators(model, fresh)
    model.train_on_batch(x, y)
    fresh.train_on_batch(x, y)
    assert not np.array_equal(model.layers[0].params["kernel"], fresh.layers[0].params["kernel"])


def test_save_without_optimizer_and_uncompiled(tmp_path):
    model = small_model(compiled=False)
    p = tmp_path / "plain.npz"
    model.save(p)
    loaded = cconv.load_model(p)
    assert not loaded.compiled
    x, _ = data()
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))

    model.compile("sgd", "mse")
    model.save(p, include_optimizer=False)
    doc, _ = cio.read_file(p)
    assert doc["optimizer_state"] is None
    assert cconv.load_model(p).compiled


def test_float64_model_round_trip(tmp_path):
    model = cconv.Sequential([Flatten(), Dense(3)], input_shape=(2, 2), seed=3, dtype="float64")
    p = tmp_path / "f64.npz"
    model.save(p)
    loaded = cconv.load_model(p)
    assert loaded.dtype == np.float64
    assert loaded.layers[1].params["kernel"].dtype == np.float64
    np.testing.assert_array_equal(loaded.layers[1].params["kernel"], model.layers[1].params["kernel"])


def test_file_is_plain_numeric_npz(trained):
    """Every member is a numeric .npy (no object arrays, no pickles); the config is JSON."""
    _, path = trained
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert "__config__.npy" in names and "__checksum__.npy" in names
        for name in names:
            with zf.open(name) as f:
                arr = np.lib.format.read_array(f, allow_pickle=False)
            assert not arr.dtype.hasobject
    with np.load(path, allow_pickle=False) as z:
        doc = json.loads(z["__config__"].tobytes().decode())
    assert doc["format"] == "cconv-model" and doc["model"]["class_name"] == "Sequential" and doc["model"]["config"]["layers"][0]["class_name"] == "Conv2D"


def test_save_is_atomic_and_leaves_no_temporaries(trained, tmp_path):
    model, path = trained
    before = os.stat(path).st_ino
    model.save(path)
    assert os.stat(path).st_ino != before              # replaced by rename, not rewritten in place
    assert glob.glob(str(tmp_path / ".*tmp*")) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.save(tmp_path / "no_such_dir" / "m.npz")


def test_unbuilt_model_cannot_be_saved(tmp_path):
    model = cconv.Sequential([Dense(3)])
    with pytest.raises(ValueError, match="not built"):
        model.save(tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- damaged files
def test_missing_empty_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        cconv.load_model(tmp_path / "nope.npz")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="not a cconv model file.*empty"):
        cconv.load_model(empty)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a cconv model file"):
        cconv.load_model(text)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.arange(3))
    with pytest.raises(ValueError, match="not a cconv model file"):
        cconv.load_model(plain)


def test_truncated_file_refused(trained, tmp_path):
    _, path = trained
    blob = path.read_bytes()
    cut = tmp_path / "cut.npz"
    for n in sorted({1, 10, 100, len(blob) // 3, len(blob) // 2, len(blob) - 200, len(blob) - 22, len(blob) - 1}):
        cut.write_bytes(blob[:n])
        with pytest.raises(ValueError, match="corrupted or truncated|not a cconv model file"):
            cconv.load_model(cut)


def test_bit_flips_refused_or_harmless(trained, tmp_path):
    """Any single flipped bit is refused, except in zip metadata that changes no content."""
    model, path = trained
    blob = bytearray(path.read_bytes())
    rng = random.Random(0)
    flipped = tmp_path / "flipped.npz"
    refused = 0
    positions = rng.sample(range(len(blob)), 60)
    for pos in positions:
        bad = bytearray(blob)
        bad[pos] ^= 1 << rng.randrange(8)
        flipped.write_bytes(bytes(bad))
        try:
            loaded = cconv.load_model(flipped)
        except ValueError as exc:
            assert "corrupted" in str(exc) or "not a cconv model file" in str(exc) or "malformed" in str(exc)
            refused += 1
        else:   # e.g. a timestamp in a zip header: the contents must be intact
            for a, b in zip(_all_arrays(model), _all_arrays(loaded)):
                np.testing.assert_array_equal(a, b)
    assert refused >= 40


def test_flip_inside_weights_refused(trained, tmp_path):
    """A flip inside the weight bytes (where only the CRC/checksum can notice) is refused."""
    model, path = trained
    blob = bytearray(path.read_bytes())
    kernel = model.layers[0].params["kernel"].tobytes()
    pos = bytes(blob).find(kernel)
    assert pos > 0
    blob[pos + len(kernel) // 2] ^= 0x10
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="corrupted"):
        cconv.load_model(bad)


def _rewrite_members(src, dst, change):
    with np.load(src, allow_pickle=False) as z:
        members = {k: z[k] for k in z.files}
    change(members)
    with open(dst, "wb") as f:
        np.savez(f, **members)


def test_modified_content_with_valid_zip_fails_checksum(trained, tmp_path):
    """Content changed and re-zipped (so the zip CRCs are valid): the SHA-256 catches it."""
    model, path = trained
    bad = tmp_path / "tampered.npz"

    def change(m):
        key = next(k for k in m if k.startswith("p/"))
        m[key] = m[key] + 1

    _rewrite_members(path, bad, change)
    with pytest.raises(ValueError, match="checksum"):
        cconv.load_model(bad)


class _Boom:
    """Unpickling this object would create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_object_array_is_refused_without_executing(trained, tmp_path):
    _, path = trained
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.npz"
    payload = np.array([_Boom(str(marker))], dtype=object)
    with np.load(path, allow_pickle=False) as z:
        members = {k: z[k] for k in z.files}
    members["p/0"] = payload
    with open(evil, "wb") as f:
        np.savez(f, **members)                         # allow_pickle=True by default when saving
    with pytest.raises(ValueError, match="pickle"):
        cconv.load_model(evil)
    assert not marker.exists()

    # a bare pickle file (not a zip) is refused too
    import pickle
    raw = tmp_path / "raw.npz"
    raw.write_bytes(pickle.dumps(_Boom(str(marker))))
    with pytest.raises(ValueError, match="not a cconv model file"):
        cconv.load_model(raw)
    assert not marker.exists()
    # and a single .npy holding an object array
    npy = tmp_path / "obj.npz"
    with open(npy, "wb") as f:
        np.save(f, payload)
    with pytest.raises(ValueError):
        cconv.load_model(npy)
    assert not marker.exists()


def test_unknown_layer_class_and_future_version(trained, tmp_path):
    model, path = trained
    doc, arrays = cio.read_file(path)
    doc2 = json.loads(json.dumps(doc))
    doc2["model"]["config"]["layers"][0]["class_name"] = "EvilLayer"
    p = tmp_path / "unknown.npz"
    cio.write_file(p, doc2, arrays)
    with pytest.raises(ValueError, match="EvilLayer"):
        cconv.load_model(p)
    doc3 = dict(doc, format_version=cio.FORMAT_VERSION + 1)
    cio.write_file(p, doc3, arrays)
    with pytest.raises(ValueError, match="format version"):
        cconv.load_model(p)


def test_mismatched_weights_named_exactly(tmp_path):
    """Architecture says Dense(5) but the file holds Dense(7)'s weights: every mismatch is listed."""
    a = small_model(units=5)
    b = small_model(units=7)
    doc_a, _ = saving.model_document(a)
    _, arrays_b = saving.model_document(b)
    p = tmp_path / "mismatch.npz"
    cio.write_file(p, doc_a, arrays_b)
    with pytest.raises(ValueError) as info:
        cconv.load_model(p)
    msg = str(info.value)
    last = a.layers[-1].name
    assert f"layer {last!r} parameter 'kernel'" in msg
    assert "(36, 7)" in msg and "(36, 5)" in msg
    assert f"layer {last!r} parameter 'bias'" in msg
    # load_weights into a different architecture: same kind of message, nothing modified
    a.save(p)
    before = [w.copy() for w in _all_arrays(b)]
    with pytest.raises(ValueError, match=r"file has shape \(36, 5\), the architecture expects \(36, 7\)"):
        b.load_weights(p)
    for w0, w1 in zip(before, _all_arrays(b)):
        np.testing.assert_array_equal(w0, w1)


def test_missing_and_extra_arrays_reported(trained, tmp_path):
    model, path = trained
    doc, arrays = cio.read_file(path)
    doc = json.loads(json.dumps(doc))
    dropped = doc["arrays"].pop(0)                     # the first conv kernel is gone
    doc["arrays"].append(dict(dropped, layer="ghost", key="kernel"))
    p = tmp_path / "holes.npz"
    cio.write_file(p, doc, arrays)
    with pytest.raises(ValueError) as info:
        cconv.load_model(p)
    msg = str(info.value)
    assert f"{model.layers[0].name!r} parameter 'kernel'" in msg and "missing" in msg
    assert "'ghost'" in msg


# --------------------------------------------------------------------------- kill during save
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kill_during_save_always_leaves_a_loadable_file(tmp_path):
    """A child process saves in a loop and is SIGKILLed at random moments, 30 times.

    After each kill the file must load and be one complete version (every weight equal to
    the same version number), never a mix or a truncated file.
    """
    model = cconv.Sequential([Flatten(), Dense(512), Dense(256)], input_shape=(32, 32), seed=0)
    model.compile("adam", "mse")
    path = tmp_path / "ckpt.npz"
    rng = random.Random(1)
    version = 0
    mid_save_kills = 0
    for _ in range(30):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                   # child: save forever
            try:
                os.close(r)
                v = version
                first = True
                while True:
                    v += 1
                    for _, p, _ in model.parameters():
                        p.fill(v)
                    model.save(path)
                    if first:
                        os.write(w, b"x")
                        first = False
            finally:
                os._exit(1)
        os.close(w)
        assert os.read(r, 1) == b"x"                  # the first save of this child is done
        os.close(r)
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        if glob.glob(str(tmp_path / ".ckpt.npz.tmp-*")):
            mid_save_kills += 1
        loaded = cconv.load_model(path)
        values = {float(v) for _, p, _ in loaded.parameters() for v in np.unique(p)}
        assert len(values) == 1, f"a mix of versions: {sorted(values)[:5]}"
        v = values.pop()
        assert v > version                             # progress, and never an older file
        version = int(v)
    # the kills really landed inside saves (a temporary file was left behind)
    assert mid_save_kills >= 3, mid_save_kills
    # the next save cleans up temporaries of dead writers
    model.save(path)
    assert glob.glob(str(tmp_path / ".ckpt.npz.tmp-*")) == []


def test_crafted_header_cannot_force_a_huge_allocation(trained, tmp_path):
    """A member whose header claims 4 TB of data is refused from its header alone."""
    _, path = trained
    bad = tmp_path / "huge.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            if info.filename == "p/0.npy":
                import io as _io
                buf = _io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    buf, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 12,)})
                buf.write(b"\0" * 64)
                dst.writestr(info.filename, buf.getvalue())
            else:
                dst.writestr(info, src.read(info.filename))
    with pytest.raises(ValueError, match="declares 4000000000000 bytes"):
        cconv.load_model(bad)


def test_custom_layer_round_trip(tmp_path):
    class Scale(Dense):
        """A user's layer: Dense with doubled output."""

        def call(self, x, training=False):
            y, saved = super().call(x, training)
            return y * 2, saved

        def backward(self, dy, saved):
            return super().backward(dy * 2, saved)

    model = cconv.Sequential([Flatten(), Scale(3)], input_shape=(2, 2), seed=0)
    p = tmp_path / "custom.npz"
    model.save(p)
    with pytest.raises(ValueError, match="unknown layer class 'Scale'"):
        cconv.load_model(p)
    loaded = cconv.load_model(p, custom_objects={"Scale": Scale})
    x = np.ones((2, 2, 2), np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
