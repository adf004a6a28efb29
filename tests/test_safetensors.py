"""Weights in safetensors format: cconv's own writer and reader (no dependency), checked
against the ``safetensors`` package where it is installed, and hostile files refused."""
import json
import os

import numpy as np
import pytest

import cconv
from cconv import safetensors as st
from cconv.layers import BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D


def _model(seed, dtype="float32"):
    m = cconv.Sequential([Conv2D(4, 3, padding="same", activation="relu"), BatchNorm2D(),
                          MaxPool2D(2), Flatten(), Dense(5, activation="softmax")],
                         input_shape=(6, 6, 2), seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    for w in [a for layer in m.layers for _, _, a in layer.weights()]:
        w[...] = rng.standard_normal(w.shape) + (2 if w.ndim == 1 else 0)   # running_var > 0
    return m


def _raw(header, data=b"", pad=True):
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_weights_round_trip_is_bit_exact(tmp_path, dtype):
    m = _model(0, dtype)
    x = np.random.default_rng(1).standard_normal((3, 6, 6, 2))
    path = tmp_path / "w.safetensors"
    m.save_weights(path)
    other = _model(7, dtype)
    assert not np.array_equal(other.predict(x), m.predict(x))
    other.load_weights(path)
    for a, b in zip(m.get_weights(), other.get_weights()):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    np.testing.assert_array_equal(other.predict(x), m.predict(x))
    names = set(st.load_file(path))
    assert {"conv2d/kernel", "conv2d/bias", "batch_norm2d/running_var", "dense/kernel"} <= names
    assert st.read_metadata(path)["format"] == "cconv-weights"
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]   # no temporary left


def test_cconv_format_weights_round_trip(tmp_path):
    m = _model(0)
    m.compile("adam", "categorical_crossentropy")
    m.save_weights(tmp_path / "w.npz")
    other = _model(3)
    other.load_weights(tmp_path / "w.npz")
    for a, b in zip(m.get_weights(), other.get_weights()):
        assert a.tobytes() == b.tobytes()
    with pytest.raises(ValueError, match="format must be"):
        m.save_weights(tmp_path / "w.bin", format="h5")
    m.save_weights(tmp_path / "w.bin", format="safetensors")     # content decides on load
    other = _model(4)
    other.load_weights(tmp_path / "w.bin")
    assert all(a.tobytes() == b.tobytes() for a, b in zip(m.get_weights(), other.get_weights()))


def test_readable_by_the_safetensors_package_and_back(tmp_path):
    sn = pytest.importorskip("safetensors.numpy")
    m = _model(0)
    m.save_weights(tmp_path / "w.safetensors")
    theirs = sn.load_file(str(tmp_path / "w.safetensors"))
    ours = {f"{l.name}/{k}": a for l in m.layers for _, k, a in l.weights()}
    assert set(theirs) == set(ours)
    for k in ours:
        assert theirs[k].dtype == ours[k].dtype and theirs[k].tobytes() == ours[k].tobytes()
    # a file the package writes, every dtype cconv reads, loads bit for bit
    rng = np.random.default_rng(0)
    tensors = {"f64": rng.standard_normal((2, 3)), "f32": rng.standard_normal(5).astype("f4"),
               "f16": rng.standard_normal((1, 2)).astype("f2"), "i64": np.arange(4),
               "i8": np.arange(-3, 3, dtype="i1"), "u8": np.arange(3, dtype="u1"),
               "b": np.array([True, False]), "empty": np.zeros((0, 4), "f4"),
               "scalar": np.array(2.5, "f4")}
    sn.save_file(tensors, str(tmp_path / "t.safetensors"), metadata={"k": "v"})
    back = st.load_file(tmp_path / "t.safetensors")
    assert set(back) == set(tensors) and st.read_metadata(tmp_path / "t.safetensors") == {"k": "v"}
    for k, a in tensors.items():
        assert back[k].dtype == a.dtype and back[k].shape == a.shape
        assert back[k].tobytes() == a.tobytes()
    # weights written by the package under cconv's names load into a model
    sn.save_file({k: v * 2 for k, v in ours.items()}, str(tmp_path / "x2.safetensors"))
    other = _model(5)
    other.load_weights(tmp_path / "x2.safetensors")
    np.testing.assert_array_equal(other.get_layer("dense").params["kernel"],
                                  2 * m.get_layer("dense").params["kernel"])


def test_mismatched_weights_are_listed_and_nothing_is_changed(tmp_path):
    m = _model(0)
    tensors = {f"{l.name}/{k}": a for l in m.layers for _, k, a in l.weights()}
    tensors["dense/kernel"] = np.zeros((3, 5), "f4")
    del tensors["conv2d/bias"]
    tensors["ghost/kernel"] = np.zeros(2, "f4")
    st.save_file(tensors, tmp_path / "bad.safetensors")
    before = m.get_weights()
    with pytest.raises(ValueError) as e:
        m.load_weights(tmp_path / "bad.safetensors")
    msg = str(e.value)
    assert "'dense' parameter 'kernel'" in msg and "(3, 5)" in msg
    assert "'bias'" in msg and "missing" in msg and "'ghost'" in msg
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, m.get_weights()))


def test_writer_refuses_what_it_cannot_hold(tmp_path):
    with pytest.raises(TypeError, match="dtype complex128"):
        st.save_file({"c": np.zeros(2, complex)}, tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="__metadata__"):
        st.save_file({"__metadata__": np.zeros(2)}, tmp_path / "c.safetensors")
    with pytest.raises(TypeError, match="metadata"):
        st.save_file({"a": np.zeros(2)}, tmp_path / "c.safetensors", metadata={"a": 1})
    assert list(tmp_path.iterdir()) == []
    # big-endian input is written little-endian, as the format says
    st.save_file({"a": np.arange(3, dtype=">i4")}, tmp_path / "be.safetensors")
    assert st.load_file(tmp_path / "be.safetensors")["a"].tolist() == [0, 1, 2]


_GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize("blob, message", [
    (b"", "shorter than"),
    (b"\x05\x00", "shorter than"),
    ((10 ** 12).to_bytes(8, "little") + b"{}", "declares 1000000000000 bytes"),
    ((200).to_bytes(8, "little") + b"{}", "truncated"),
    (_raw(_GOOD, b"\0" * 4), "spans bytes"),                                    # data cut short
    (_raw(_GOOD, b"\0" * 12), "cover 8 of the 12"),                             # trailing bytes
    (_raw({"a": {"dtype": "F32", "shape": [10 ** 9, 10 ** 9], "data_offsets": [0, 8]}},
          b"\0" * 8), "declares shape"),                                        # huge shape
    (_raw({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12), "overlaps"),
    (_raw({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
           "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, b"\0" * 12), "hole"),
    (_raw({"a": {"dtype": "O", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8), "dtype 'O'"),
    (_raw({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8), "shape"),
    (_raw({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8), "spans"),
    (_raw({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, b"\0" * 8), "shape"),
    (_raw({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}}, b"\0" * 8),
     "malformed"),
    (_raw({"a": [1, 2]}, b""), "malformed"),
    (_raw([1, 2]), "not a JSON object"),
    (_raw({"__metadata__": {"a": 1}}), "__metadata__"),
    (b"\x08\x00\x00\x00\x00\x00\x00\x00" + b"\xff" * 8, "unreadable header"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"[" * 16, "unreadable header|not a JSON object"),
    # empty tensors whose other dimensions numpy cannot hold: before, numpy's message alone
    (_raw({"a": {"dtype": "F32", "shape": [0, 2 ** 62], "data_offsets": [0, 0]}}), "'a' has shape"),
    (_raw({"a": {"dtype": "F32", "shape": [0, 2 ** 70], "data_offsets": [0, 0]}}), "'a' has shape"),
])
def test_hostile_files_are_refused_before_allocating(tmp_path, blob, message):
    path = tmp_path / "h.safetensors"
    path.write_bytes(blob)
    with pytest.raises(ValueError, match=message):
        st.load_file(path)
    if blob[8:9] == b"{":
        with pytest.raises(ValueError, match=message):
            _model(0).load_weights(path)


def test_deeply_nested_header_is_refused(tmp_path):
    path = tmp_path / "deep.safetensors"
    text = b"{\"a\":" + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path.write_bytes(len(text).to_bytes(8, "little") + text)
    with pytest.raises(ValueError, match="unreadable header|malformed"):
        st.load_file(path)


def test_is_safetensors_tells_the_formats_apart(tmp_path):
    m = _model(0)
    m.save(tmp_path / "m.npz")
    m.save_weights(tmp_path / "w.safetensors")
    (tmp_path / "e").write_bytes(b"")
    assert st.is_safetensors(tmp_path / "w.safetensors")
    assert not st.is_safetensors(tmp_path / "m.npz") and not st.is_safetensors(tmp_path / "e")
    assert os.path.getsize(tmp_path / "w.safetensors") % 4 == 0
