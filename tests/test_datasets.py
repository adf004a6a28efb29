"""cconv.datasets: LFW loader (folder and .tgz), digits, train/test split."""
import sys
import tarfile

import numpy as np
import pytest

from cconv import datasets

Image = pytest.importorskip("PIL.Image")

# person -> number of images; each image is one flat grey level that encodes
# (person, image index), so the order can be read back after JPEG round-tripping.
PEOPLE = {"Carol_Chen": 1, "Alice_Adams": 3, "Bob_Brown": 2}


def _level(person_idx, i):
    return 30 + 60 * person_idx + 15 * i


def _write_lfw(root, side=50):
    root.mkdir(parents=True)
    for p, (person, count) in enumerate(sorted(PEOPLE.items())):
        (root / person).mkdir()
        for i in range(count):
            img = Image.new("RGB", (side, side), (_level(p, i),) * 3)
            img.save(root / person / f"{person}_{i + 1:04d}.jpg", quality=95)
    (root / "Empty_Person").mkdir()          # a person folder without images is ignored
    (root / "README.txt").write_text("not an image")
    return root


@pytest.fixture
def lfw_dir(tmp_path):
    return _write_lfw(tmp_path / "lfw_fixture")


@pytest.fixture
def lfw_tgz(lfw_dir, tmp_path):
    archive = tmp_path / "lfw_fixture.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(lfw_dir, arcname="lfw_fixture")
    return archive


def _expected(min_faces):
    names = sorted(p for p, c in PEOPLE.items() if c >= min_faces)
    levels, labels = [], []
    for label, person in enumerate(names):
        p = sorted(PEOPLE).index(person)
        for i in range(PEOPLE[person]):
            levels.append(_level(p, i))
            labels.append(label)
    return names, np.array(levels) / 255.0, np.array(labels)


@pytest.mark.parametrize("min_faces", [0, 1, 2, 3])
def test_load_lfw_folder_counts_order_shapes(lfw_dir, min_faces):
    x, y, names = datasets.load_lfw(lfw_dir, min_faces_per_person=min_faces, size=(8, 6))
    exp_names, exp_levels, exp_labels = _expected(min_faces)
    assert names == exp_names
    assert x.shape == (len(exp_labels), 8, 6, 3)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_array_equal(y, exp_labels)
    # sorted person, then sorted file: the grey levels come back in that order
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), exp_levels, atol=3 / 255)


def test_load_lfw_tgz_matches_folder(lfw_dir, lfw_tgz):
    xf, yf, nf = datasets.load_lfw(lfw_dir, min_faces_per_person=2, size=8)
    xt, yt, nt = datasets.load_lfw(lfw_tgz, min_faces_per_person=2, size=8)
    assert nf == nt == ["Alice_Adams", "Bob_Brown"]
    np.testing.assert_array_equal(yf, yt)
    np.testing.assert_array_equal(xf, xt)


def test_load_lfw_parent_folder(lfw_dir):
    x, y, names = datasets.load_lfw(lfw_dir.parent, min_faces_per_person=1, size=8)
    assert names == sorted(PEOPLE) and len(y) == 6


def test_load_lfw_options(lfw_dir):
    x, _, _ = datasets.load_lfw(lfw_dir, min_faces_per_person=1, size=None, crop=None)
    assert x.shape == (6, 50, 50, 3)
    x, _, _ = datasets.load_lfw(lfw_dir, min_faces_per_person=1, size=None)
    # the default 128x128 box on the 250x250 frame, scaled to 50x50 images
    assert x.shape == (6, 26, 26, 3)
    x, _, _ = datasets.load_lfw(lfw_dir, min_faces_per_person=1, size=(5, 7), color=False)
    assert x.shape == (6, 5, 7, 1) and x.dtype == np.float32
    x, y, names = datasets.load_lfw(lfw_dir, min_faces_per_person=2, size=4, max_faces_per_person=2)
    np.testing.assert_array_equal(y, [0, 0, 1, 1])


def test_load_lfw_crop_takes_the_box(tmp_path):
    # left half black, right half white: a crop inside the right half is all white
    root = tmp_path / "lfw"
    (root / "A_B").mkdir(parents=True)
    arr = np.zeros((250, 250, 3), np.uint8)
    arr[:, 125:] = 255
    Image.fromarray(arr).save(root / "A_B" / "A_B_0001.jpg", quality=95)
    x, _, _ = datasets.load_lfw(root, min_faces_per_person=1, size=4, crop=(150, 50, 250, 150))
    assert x.min() > 0.95
    x, _, _ = datasets.load_lfw(root, min_faces_per_person=1, size=4, crop=(0, 50, 100, 150))
    assert x.max() < 0.05


def test_load_lfw_corrupt_jpeg_names_file(lfw_dir, tmp_path):
    bad = lfw_dir / "Alice_Adams" / "Alice_Adams_0002.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])          # truncated
    with pytest.raises(ValueError, match="Alice_Adams_0002.jpg"):
        datasets.load_lfw(lfw_dir, min_faces_per_person=1)
    bad.write_bytes(b"this is not a JPEG at all")     # garbage
    with pytest.raises(ValueError, match="Alice_Adams_0002.jpg"):
        datasets.load_lfw(lfw_dir, min_faces_per_person=1)
    archive = tmp_path / "bad.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(lfw_dir, arcname="lfw")
    with pytest.raises(ValueError, match="Alice_Adams_0002.jpg"):
        datasets.load_lfw(archive, min_faces_per_person=1)


def test_load_lfw_empty_and_filtered_out(tmp_path, lfw_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        datasets.load_lfw(empty)
    with pytest.raises(ValueError, match="min_faces_per_person=4"):
        datasets.load_lfw(lfw_dir, min_faces_per_person=4)
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        datasets.load_lfw(tmp_path / "does_not_exist")
    not_tar = tmp_path / "x.tgz"
    not_tar.write_bytes(b"nope")
    with pytest.raises(ValueError, match="neither a folder nor a tar"):
        datasets.load_lfw(not_tar)


@pytest.mark.parametrize("kwargs", [
    {"min_faces_per_person": -1}, {"min_faces_per_person": 2.5}, {"size": (0, 4)},
    {"size": "big"}, {"crop": (10, 10, 5, 20)}, {"crop": (1, 2, 3)}, {"max_faces_per_person": 0},
])
def test_load_lfw_bad_arguments(lfw_dir, kwargs):
    with pytest.raises(ValueError):
        datasets.load_lfw(lfw_dir, **kwargs)


def test_load_lfw_without_pillow(lfw_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r'pip install "cconv\[data\]"'):
        datasets.load_lfw(lfw_dir, min_faces_per_person=1)


def test_load_digits():
    pytest.importorskip("sklearn")
    x, y = datasets.load_digits()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))


def test_load_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install "cconv\[data\]"'):
        datasets.load_digits()


def test_train_test_split_lfw_sizes_and_partition():
    n = 2370
    x = np.arange(n * 2).reshape(n, 2)
    y = np.arange(n)
    x_tr, x_te, y_tr, y_te = datasets.train_test_split(x, y, test_size=0.25, seed=0)
    assert (len(x_tr), len(x_te), len(y_tr), len(y_te)) == (1777, 593, 1777, 593)
    np.testing.assert_array_equal(x_tr[:, 0] // 2, y_tr)      # rows stay with their labels
    np.testing.assert_array_equal(x_te[:, 0] // 2, y_te)
    assert sorted(np.concatenate([y_tr, y_te]).tolist()) == list(range(n))
    again = datasets.train_test_split(x, y, test_size=0.25, seed=0)
    np.testing.assert_array_equal(again[3], y_te)
    other = datasets.train_test_split(x, y, test_size=0.25, seed=1)
    assert not np.array_equal(other[3], y_te)
    assert len(datasets.train_test_split(x, y, test_size=100)[1]) == 100


def test_train_test_split_stratified():
    y = np.repeat(np.arange(4), [40, 20, 12, 8])
    x = np.arange(len(y))
    x_tr, x_te, y_tr, y_te = datasets.train_test_split(x, y, test_size=0.25, seed=3, stratify=True)
    assert len(y_te) == 20
    np.testing.assert_array_equal(np.bincount(y_te), [10, 5, 3, 2])
    np.testing.assert_array_equal(y[x_te], y_te)
    assert set(x_tr.tolist()).isdisjoint(x_te.tolist())
    with pytest.raises(ValueError, match="at least 2 samples per class"):
        datasets.train_test_split(x[:41], y[:41], stratify=True)


@pytest.mark.parametrize("test_size", [0, 0.0, 1.0, 1.5, -3, 10, True, "a"])
def test_train_test_split_bad_size(test_size):
    with pytest.raises(ValueError, match="test_size"):
        datasets.train_test_split(np.zeros((10, 1)), np.zeros(10), test_size=test_size)


def test_train_test_split_length_mismatch():
    with pytest.raises(ValueError, match=r"\(10, 2\).*\(9,\)"):
        datasets.train_test_split(np.zeros((10, 2)), np.zeros(9))


# --------------------------------------------------------------------------- hostile archives
GiB = 1 << 30


def _load_limited(path, **kwargs):
    from hostile import run_limited
    code = f"""
        from cconv import datasets
        try:
            datasets.load_lfw({str(path)!r}, min_faces_per_person=1, **{kwargs!r})
        except ValueError as exc:
            print("ValueError", exc)
        _report()
        """
    return run_limited(code, address_space=768 << 20, timeout=120)


def test_load_lfw_archive_member_bomb_is_refused_from_its_header(tmp_path):
    """A 1 MB .tgz with a 1 GiB member: before, 1 GB RSS (extractfile().read() had no cap);
    under a 768 MiB address-space limit, a MemoryError."""
    from hostile import tgz_of
    path = tmp_path / "bomb.tgz"
    path.write_bytes(tgz_of([("lfw/Big_Person/Big_Person_0001.jpg", GiB)]))
    assert path.stat().st_size < 2 << 20
    rc, out, err, seconds, rss = _load_limited(path)
    assert rc == 0, err
    assert "ValueError" in out and "Big_Person_0001.jpg declares 1,073,741,824 bytes" in out, out
    assert seconds < 30 and rss < 200 << 20, (seconds, rss)


def test_load_lfw_archive_expanding_far_beyond_its_size_is_refused(tmp_path):
    """Forty 48 MiB members (each under the per-file cap): 1.9 GiB from 2 MB on disk.
    Before, all of it was decompressed (time proportional to the declared size)."""
    from hostile import tgz_of
    path = tmp_path / "wide.tgz"
    path.write_bytes(tgz_of([(f"lfw/P_Q/P_Q_{i:04d}.jpg", 48 << 20) for i in range(40)]))
    rc, out, err, seconds, rss = _load_limited(path)
    assert rc == 0, err
    assert "ValueError" in out and "expands to more than" in out, out
    assert seconds < 30 and rss < 200 << 20, (seconds, rss)


def test_load_lfw_truncated_or_damaged_archive(lfw_tgz, tmp_path):
    """Before: a truncated .tgz raised EOFError from inside tarfile."""
    blob = lfw_tgz.read_bytes()
    bad = tmp_path / "bad.tgz"
    for cut in (40, len(blob) // 3, len(blob) // 2, 3 * len(blob) // 4):
        bad.write_bytes(blob[:cut])
        with pytest.raises(ValueError, match="bad.tgz"):
            datasets.load_lfw(bad, min_faces_per_person=1)


def test_load_lfw_huge_size_is_refused_before_decoding(lfw_dir, monkeypatch):
    """size=(20000, 20000): before, 93 s and 7.3 GB on LFW, then an error with an empty reason."""
    import time
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"size=\(20000, 20000\) asks for 400,000,000 pixels"):
        datasets.load_lfw(lfw_dir, min_faces_per_person=1, size=(20000, 20000))
    assert time.perf_counter() - t0 < 1.0
    # within the per-image bound, the whole result must still fit in this machine's memory
    import os
    monkeypatch.setattr(os, "sysconf", lambda name: 4096 if name == "SC_PAGE_SIZE" else 1000)
    with pytest.raises(ValueError, match=r"6 images of 1000x1000x3 .* need 0.0 GiB|need .* GiB"):
        datasets.load_lfw(lfw_dir, min_faces_per_person=1, size=(1000, 1000))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_load_lfw_refuses_images_beyond_pillows_pixel_limit(lfw_dir, monkeypatch):
    """Pillow only warns between its limit and twice it; load_lfw refuses at the limit."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)      # the fixture images are 50x50
    with pytest.raises(ValueError, match="Alice_Adams_0001.jpg.*MAX_IMAGE_PIXELS"):
        datasets.load_lfw(lfw_dir, min_faces_per_person=1)


def test_load_lfw_unreadable_image_error_is_never_empty(lfw_dir, monkeypatch):
    """A decoder failing with an exception without a message (MemoryError) still says what."""
    def fail(*args, **kwargs):
        raise MemoryError()
    monkeypatch.setattr(Image.Image, "convert", fail)
    with pytest.raises(ValueError, match=r"Alice_Adams_0001.jpg: MemoryError"):
        datasets.load_lfw(lfw_dir, min_faces_per_person=1)
