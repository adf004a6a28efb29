"""The model-file reader and writer against hostile files and careless calls.

Loading a file must cost memory and time proportional to its size on disk, whatever its
headers declare; every damaged or crafted file gets a ValueError that names it; a save
neither leaves files outside its target nor changes the target's permissions.
"""
import json
import os
import stat
import zipfile

import numpy as np
import pytest

import cconv
from cconv import io as cio
from cconv.layers import Dense

from hostile import deflate_with_zeros, load_limited, npy_header, run_limited, stored, write_zip

GiB = 1 << 30
#: Address-space limit of the bomb-loading subprocesses: the interpreter with numpy and
#: cconv maps about 300 MB; a reader that materialises a 1 GiB member cannot fit.
LIMIT = 768 << 20


def _member(data, descr="|u1"):
    return npy_header((len(data) // np.dtype(descr).itemsize,), descr) + data


def _valid_members(document=None, arrays=None):
    """Stored entries of a valid cconv file (config, checksum, arrays)."""
    document = document or {"format": cio.FORMAT, "format_version": cio.FORMAT_VERSION}
    members = {k: np.ascontiguousarray(v) for k, v in (arrays or {}).items()}
    members["__config__"] = np.frombuffer(json.dumps(document).encode(), np.uint8)
    digest = cio._checksum(members)  # noqa: SLF001 - the test crafts files the writer would not
    members["__checksum__"] = np.frombuffer(digest.encode(), np.uint8)
    return [stored(f"{k}.npy", npy_header(v.shape, v.dtype.str) + v.tobytes()) for k, v in members.items()]


def _load_in_subprocess(path):
    code = f"""
        import time
        from cconv import io
        t = time.perf_counter()
        try:
            io.read_file({str(path)!r})
        except ValueError as exc:
            print("ValueError", exc)
        print("seconds", time.perf_counter() - t)
        _report()
        """
    return run_limited(code, address_space=LIMIT, timeout=120)


@pytest.mark.parametrize("members", [1, 3])
def test_deflate_bomb_costs_what_the_file_holds(tmp_path, members):
    """A 1 MB file whose deflated members each declare 1 GiB is refused at once.

    Before: 13 s and 2.1 GB RSS (three members: 4.1 GB) before a checksum error; under the
    768 MiB limit, a MemoryError.
    """
    data, crc, size = deflate_with_zeros(npy_header((GiB // 4,)), GiB)
    entries = [(f"p/{i}.npy", 8, crc, size, data) for i in range(members)] + _valid_members()
    path = tmp_path / "bomb.npz"
    write_zip(path, entries)
    assert os.path.getsize(path) < members * (2 << 20)
    rc, out, err, seconds, rss = _load_in_subprocess(path)
    assert rc == 0, err
    assert "ValueError" in out and "compressed" in out, out
    assert seconds < 30 and rss < 200 << 20, (seconds, rss)


def test_stored_member_declaring_more_than_the_file_is_refused(tmp_path):
    """A stored member whose headers declare 1 GiB in a 2 KB file is refused from the headers."""
    head = npy_header((GiB // 4,))
    entries = [("p/0.npy", 0, 0, GiB + len(head), head + bytes(1024))] + _valid_members()
    path = tmp_path / "liar.npz"
    write_zip(path, entries)
    rc, out, err, seconds, rss = _load_in_subprocess(path)
    assert rc == 0, err
    assert "ValueError" in out and "corrupted" in out, out
    with pytest.raises(ValueError, match="corrupted"):
        cio.read_file(path)


def test_members_together_cannot_declare_more_than_the_file(tmp_path):
    """Each member fits, but together they claim more bytes than the file has."""
    path = tmp_path / "m.npz"
    cio.write_file(path, {"format": cio.FORMAT, "format_version": 1}, {"a": np.zeros(1000)})
    blob = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("a.npy")
        cd = zf.start_dir
    # make the central directory claim the member is 10x larger (local header unchanged)
    pos = blob.index(b"PK\x01\x02a.npy"[:4], cd)
    for off in (20, 24):   # compressed and uncompressed sizes
        blob[pos + off:pos + off + 4] = (info.file_size * 10).to_bytes(4, "little")
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="corrupted"):
        cio.read_file(path)


def _overlapping_members(path, count, payload):
    """``count`` stored members whose data all run to the end of the file.

    Local header i is followed by a .npy header, then local header i + 1, ..., then the
    shared payload: member i's data (its .npy header, every later header and the payload)
    is a valid uint8 array. Each member fits in the file, so only their total exposes them.
    """
    import struct
    import zlib
    tail, members = payload, []
    for i in reversed(range(count)):           # back to front: a member's data is what follows
        data = npy_header((len(tail),), "|u1") + tail
        name = f"p/{i}.npy".encode()
        crc = zlib.crc32(data)
        local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0x21, crc, len(data), len(data),
                            len(name), 0) + name
        members.append((name, crc, len(data), len(local) + len(data) - len(tail)))
        tail = local + data
    central, offset = bytearray(), 0
    for name, crc, size, own in reversed(members):
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0x21, crc, size, size,
                               len(name), 0, 0, 0, 0, 0, offset) + name
        offset += own                          # this member's local header and .npy header
    path.write_bytes(tail + central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count,
                                                  len(central), len(tail), 0))


def test_overlapping_members_cannot_multiply_the_file(tmp_path):
    """400 members each spanning the rest of a 2 MB file would read 800 MB; their declared
    sizes together exceed the file, so it is refused before any is read."""
    path = tmp_path / "overlap.npz"
    _overlapping_members(path, 400, bytes(2 << 20))
    with zipfile.ZipFile(path) as zf:              # a valid zip whose members zipfile would read
        assert len(zf.infolist()) == 400 and zf.open("p/399.npy").read(6) == b"\x93NUMPY"
    rc, out, err, seconds, rss = _load_in_subprocess(path)
    assert rc == 0, err
    assert "ValueError" in out and "declare more bytes than the file" in out, out
    assert seconds < 30 and rss < 200 << 20, (seconds, rss)


def test_config_and_format_are_checked_before_any_array_is_read(tmp_path, monkeypatch):
    """A newer format version is refused without reading its (large) arrays."""
    path = tmp_path / "future.npz"
    write_zip(path, _valid_members({"format": cio.FORMAT, "format_version": 99},
                                   {"p/0": np.zeros(1 << 18, np.float32)}))
    read = []
    original = cio._read_npy   # noqa: SLF001

    def spy(fp, size, key, where):
        read.append(key)
        return original(fp, size, key, where)

    monkeypatch.setattr(cio, "_read_npy", spy)
    with pytest.raises(ValueError, match="format version 99"):
        cio.read_file(path)
    assert "p/0" not in read, read


@pytest.mark.parametrize("header", [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (1,",        # tokenize.TokenError before
    "{'descr': '<f4', 'fortran_order': False, 'shape': (-2, -2), }",  # negative dimensions
    "{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 3000 + ")" * 3000 + ", }",
    "[1, 2",
])
def test_malformed_npy_header_is_a_clear_value_error(tmp_path, header):
    """Before: a malformed header raised tokenize.TokenError (or passed negative dims on)."""
    h = header.encode("latin1")
    h += b" " * (64 - (10 + len(h) + 1) % 64) + b"\n"
    raw = b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h + bytes(16)
    path = tmp_path / "bad.npz"
    write_zip(path, [stored("p/0.npy", raw)] + _valid_members())
    with pytest.raises(ValueError, match=r"bad\.npz.*(malformed \.npy header|negative|declares)"):
        cio.read_file(path)


def _config_only_file(path, value):
    """A file with a valid checksum whose config holds ``"x": <value>`` (raw JSON text)."""
    text = '{"format": "cconv-model", "format_version": 1, "x": ' + value + "}"
    digest = cio._checksum({"__config__": np.frombuffer(text.encode(), np.uint8)})   # noqa: SLF001
    write_zip(path, [stored("__config__.npy", _member(text.encode())),
                     stored("__checksum__.npy", _member(digest.encode()))])
    return path


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_config_is_refused(tmp_path, depth):
    """Before: 100,000 nested lists raised RecursionError; 100 levels passed on to the loader."""
    path = _config_only_file(tmp_path / "deep.npz", "[" * depth + "]" * depth)
    with pytest.raises(ValueError, match="levels deep"):
        cio.read_file(path)


def test_huge_integer_in_config_is_a_clear_value_error(tmp_path):
    path = _config_only_file(tmp_path / "int.npz", "9" * 5000)
    with pytest.raises(ValueError, match="int.npz.*unreadable config"):
        cio.read_file(path)


def test_encrypted_or_unknown_method_members_are_refused(tmp_path):
    data = _member(b"abc")
    path = tmp_path / "m.npz"
    write_zip(path, [("p/0.npy", 99, 0, len(data), data)] + _valid_members())
    with pytest.raises(ValueError, match="compressed or encrypted"):
        cio.read_file(path)


# --------------------------------------------------------------------------- the writer
_DOC = {"format": cio.FORMAT, "format_version": cio.FORMAT_VERSION}


@pytest.mark.parametrize("target", ["", ".", "..", "sub/"])
def test_save_to_a_path_that_names_no_file(tmp_path, monkeypatch, target):
    """Before: save("") wrote a temporary file in the parent directory, then failed on the rename."""
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work)
    with pytest.raises((ValueError, IsADirectoryError), match="must name a file|is a directory"):
        cio.write_file(target, _DOC, {})
    assert sorted(os.listdir(tmp_path)) == ["work"]
    assert sorted(os.listdir(work)) == ["sub"] and os.listdir(work / "sub") == []


def test_save_onto_a_directory_is_refused_before_writing(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        cio.write_file(tmp_path / "d", _DOC, {})
    assert os.listdir(tmp_path) == ["d"]


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o444])
def test_save_keeps_the_permissions_of_the_file_it_replaces(tmp_path, mode):
    """Before: a 0600 file became 0644 after save()."""
    model = cconv.Sequential([Dense(2)], input_shape=(3,))
    path = tmp_path / "m.npz"
    model.save(path)
    os.chmod(path, mode)
    model.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    cio.write_file(path, _DOC, {})
    assert stat.S_IMODE(os.stat(path).st_mode) == mode


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_new_file_gets_the_umask_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        cio.write_file(tmp_path / "m.npz", _DOC, {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "m.npz").st_mode) == 0o666 & ~umask


def test_round_trip_after_the_reader_changes(tmp_path):
    """Arrays of every dtype and layout the writer produces come back bit for bit."""
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.zeros((0, 3)),
              "c": np.array(7, dtype=np.int64), "d": np.asfortranarray(np.ones((2, 3)))}
    cio.write_file(tmp_path / "m.npz", _DOC, arrays)
    doc, back = cio.read_file(tmp_path / "m.npz")
    assert doc == _DOC
    for k, v in arrays.items():
        np.testing.assert_array_equal(back[k], v)
        assert back[k].dtype == v.dtype and back[k].flags.c_contiguous and back[k].flags.writeable


def test_fortran_order_member_is_read_in_its_order(tmp_path):
    """np.savez never writes one, but the format allows it: values land where they belong."""
    import io
    a = np.arange(12.0).reshape(3, 4)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asfortranarray(a))
    entries = [e for e in _valid_members(arrays={"p/0": a}) if e[0] != "p/0.npy"]
    path = tmp_path / "f.npz"
    write_zip(path, [stored("p/0.npy", buf.getvalue())] + entries)
    _, arrays = cio.read_file(path)
    np.testing.assert_array_equal(arrays["p/0"], a)
    assert arrays["p/0"].flags.c_contiguous


# --------------------------------------------------------------------------- declared sizes
def _with_config(path, model, edit):
    """Save ``model`` to ``path``, then rewrite its config with ``edit(config)``: a file with
    a valid checksum whose architecture declares what ``edit`` makes it declare."""
    model.save(path)
    document, arrays = cio.read_file(path)
    edit(document["model"]["config"])
    cio.write_file(path, document, arrays)


def _set_units(cfg):
    cfg["layers"][-1]["config"]["units"] = 25_000_000


def _set_input(cfg):
    cfg["input_shape"] = [30000, 30000, 1]


def _set_functional_input(cfg):
    cfg["inputs"][0]["shape"] = [30000, 30000, 1]


def _functional():
    inp = cconv.Input((4, 4, 1))
    return cconv.Model(inp, Dense(2)(cconv.layers.Flatten()(inp)), seed=0)


@pytest.mark.parametrize("make, edit", [
    (lambda: cconv.Sequential([Dense(2)], input_shape=(10,), seed=0), _set_units),
    (lambda: cconv.Sequential([cconv.layers.Flatten(), Dense(2)], input_shape=(4, 4, 1), seed=0), _set_input),
    (_functional, _set_functional_input),
], ids=["units", "sequential-input", "functional-input"])
def test_small_file_declaring_huge_layers_is_refused_before_building(tmp_path, make, edit):
    """A 2 KB file with a valid checksum whose config declares Dense(25,000,000), or an input
    of 30000 x 30000 before Flatten and Dense, is refused from the weights' shapes before the
    architecture is allocated. Before: 8.6 s and 2.1 GB RSS (units), 61 s and 14.1 GB (input)
    for the same error; under the 768 MiB limit, a MemoryError."""
    path = tmp_path / "declares.npz"
    _with_config(path, make(), edit)
    assert os.path.getsize(path) < 4096
    rc, out, err, seconds, rss = load_limited(path, address_space=LIMIT)
    assert rc == 0, err
    assert "ValueError" in out and "do not match the model architecture" in out, out
    assert "the architecture expects" in out, out
    assert seconds < 30 and rss < 200 << 20, (seconds, rss)


def test_a_large_declared_input_with_small_weights_still_loads(tmp_path):
    """Shapes, not declared sizes, decide: convolutions on 30000 x 30000 images have the same
    weights as on 8 x 8 ones, and such a file loads with its weights."""
    model = cconv.Sequential([cconv.layers.Conv2D(3, 3), cconv.layers.GlobalAvgPool2D(), Dense(2)],
                             input_shape=(8, 8, 1), seed=0)
    path = tmp_path / "big_input.npz"
    _with_config(path, model, _set_input)
    back = cconv.load_model(path)
    assert back.input_shape == (30000, 30000, 1)
    for (_, a, _), (_, b, _) in zip(model.parameters(), back.parameters()):
        np.testing.assert_array_equal(a, b)
        assert b.flags.c_contiguous and b.flags.writeable and b.strides == a.strides   # real arrays


_BAD_SHAPES = [(float("inf"), 3), (float("nan"), 3), (2.5, 3), (10**30, 3), (2**31, 1),
               (2**30, 2**30, 2**30)]


@pytest.mark.parametrize("shape", _BAD_SHAPES, ids=str)
@pytest.mark.parametrize("how", ["Input", "Sequential", "build", "from_config"])
def test_unusable_input_shapes_are_value_errors_naming_the_field(shape, how):
    """Before: Infinity gave an OverflowError (cannot convert float infinity to integer),
    2.5 was taken as 2, 10**30 reached numpy's allocator."""
    field = "shape" if how == "Input" else "input_shape"
    with pytest.raises(ValueError, match=field):
        if how == "Input":
            cconv.Input(shape=shape)
        elif how == "Sequential":
            cconv.Sequential([Dense(2)], input_shape=shape)
        elif how == "build":
            Dense(2).build(shape)
        else:
            cconv.Sequential.from_config({"layers": [{"class_name": "Dense", "config": {"units": 2}}],
                                          "input_shape": list(shape)})


@pytest.mark.parametrize("edit", [lambda c: c.update(input_shape=[float("inf"), 4, 1]),
                                  lambda c: c.update(input_shape=[1e300, 4, 1])], ids=["Infinity", "1e300"])
def test_input_shape_infinity_in_a_model_file(tmp_path, edit):
    path = tmp_path / "inf.npz"
    _with_config(path, cconv.Sequential([cconv.layers.Flatten(), Dense(2)], input_shape=(4, 4, 1)), edit)
    with pytest.raises(ValueError, match="input_shape"):
        cconv.load_model(path)


def test_integral_shapes_of_other_types_are_still_taken():
    assert cconv.Input(shape=(np.int64(4), 4.0, 1)).shape == (None, 4, 4, 1)


@pytest.mark.parametrize("epoch", [10**12, 3 * 10**8, -1, True, "1", 2.0])
def test_checkpoint_epoch_count_is_checked_against_its_history(tmp_path, epoch):
    """A checkpoint (valid checksum) claiming 10**12 epochs done: before, resuming built
    history.epoch = list(range(10**12)) (a MemoryError; for 3 * 10**8 a list of that many
    ints, about 11 GB by arithmetic, not run); -1, True, "1" and 2.0 were taken or raised
    TypeError. Now a ValueError naming the file, before any weight of the model is touched."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 4)).astype(np.float32), rng.integers(0, 2, 16)

    def model():
        m = cconv.Sequential([Dense(2, activation="softmax")], input_shape=(4,), seed=1)
        m.compile("sgd", "categorical_crossentropy")
        return m

    path = tmp_path / "ckpt.npz"
    trained = model()
    trained.fit(x, y, epochs=1, verbose=0, checkpoint=path)
    document, arrays = cio.read_file(path)
    document["training_state"]["epoch"] = epoch
    cio.write_file(path, document, arrays)
    fresh = model()
    before = [p.copy() for _, p, _ in fresh.parameters()]
    with pytest.raises(ValueError, match="corrupted.*epochs were done"):
        fresh.fit(x, y, epochs=3, verbose=0, resume=path)
    assert all(np.array_equal(a, p) for a, (_, p, _) in zip(before, fresh.parameters()))
