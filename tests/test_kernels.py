"""cconv.kernels: classic fixed kernels against hand-computed outputs."""
import numpy as np
import pytest

from cconv import kernels

# A 3x3 image; "same" mode pads it with one ring of zeros.
IMG = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.float64)

# Worked out by hand: out[i, j] = sum_{m,n} padded[i+m, j+n] * k[m, n].
HAND = {
    "identity": IMG,
    "sobel_x": [[9, 6, -9], [20, 8, -20], [21, 6, -21]],
    "sobel_y": [[13, 20, 17], [18, 24, 18], [-13, -20, -17]],
    "edge_laplacian4": [[-2, -1, 4], [3, 0, 7], [16, 11, 22]],
    "sharpen": [[-1, 1, 7], [7, 5, 13], [23, 19, 31]],
    "edge_laplacian8": [[-3, -3, 11], [9, 0, 21], [39, 33, 53]],
    "edge_diagonal": [[5, 2, -5], [6, 0, -6], [-5, -2, 5]],
    "box_blur": np.array([[12, 21, 16], [27, 45, 33], [24, 39, 28]]) / 9,
    "gaussian_blur_3x3": np.array([[21, 36, 33], [52, 80, 68], [57, 84, 69]]) / 16,
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_kernels_match_hand_computed(name):
    out = kernels.apply(IMG, name)
    assert out.shape == (3, 3) and out.dtype == np.float64
    np.testing.assert_allclose(out, np.asarray(HAND[name], dtype=np.float64), atol=1e-12)


def _direct(img, k):
    """'same' zero-padded correlation written from the definition."""
    kh, kw = k.shape
    p = np.pad(img, (((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)))
    out = np.zeros_like(img)
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            out[i, j] = np.sum(p[i:i + kh, j:j + kw] * k)
    return out


@pytest.mark.parametrize("name", list(kernels.KERNELS))
def test_every_kernel_matches_the_definition(name):
    img = np.random.default_rng(0).random((7, 9))
    np.testing.assert_allclose(kernels.apply(img, name), _direct(img, kernels.get(name)), atol=1e-12)


def test_kernel_values():
    assert set(kernels.KERNELS) == {
        "identity", "edge_diagonal", "edge_laplacian4", "edge_laplacian8", "sharpen",
        "box_blur", "gaussian_blur_3x3", "gaussian_blur_5x5", "sobel_x", "sobel_y"}
    for blur in ("box_blur", "gaussian_blur_3x3", "gaussian_blur_5x5", "identity", "sharpen"):
        assert kernels.get(blur).sum() == pytest.approx(1.0)
    for edge in ("edge_diagonal", "edge_laplacian4", "edge_laplacian8", "sobel_x", "sobel_y"):
        assert kernels.get(edge).sum() == pytest.approx(0.0)
    g5 = kernels.get("gaussian_blur_5x5")
    assert g5.shape == (5, 5) and g5[2, 2] == 36 / 256 and g5[0, 0] == 1 / 256
    np.testing.assert_array_equal(kernels.get("sobel_y"), kernels.get("sobel_x").T)
    k = kernels.get("sobel_x")
    k[0, 0] = 100                                     # get() returns a copy
    assert kernels.get("sobel_x")[0, 0] == -1


def test_sobel_directions():
    ramp_x = np.tile(np.arange(6.0), (5, 1))          # grows to the right
    assert (kernels.apply(ramp_x, "sobel_x", mode="valid") == 8).all()
    assert (kernels.apply(ramp_x, "sobel_y", mode="valid") == 0).all()
    assert (kernels.apply(ramp_x.T, "sobel_y", mode="valid") == 8).all()


def test_boundaries():
    out = kernels.apply(IMG, "box_blur", boundary="reflect")
    assert out[0, 0] == pytest.approx((5 + 4 + 5 + 2 + 1 + 2 + 5 + 4 + 5) / 9)
    out = kernels.apply(IMG, "box_blur", boundary="edge")
    assert out[0, 0] == pytest.approx((1 + 1 + 2 + 1 + 1 + 2 + 4 + 4 + 5) / 9)
    const = np.full((6, 6), 0.3)
    for name in ("gaussian_blur_5x5", "box_blur", "sharpen"):
        np.testing.assert_allclose(kernels.apply(const, name, boundary="reflect"), 0.3)


def test_modes_and_channels():
    assert kernels.apply(np.ones((6, 7)), "sobel_x", mode="valid").shape == (4, 5)
    assert kernels.apply(np.ones((6, 7)), "gaussian_blur_5x5", mode="full").shape == (10, 11)
    rgb = np.stack([IMG, 2 * IMG, -IMG], axis=-1).astype(np.float32)
    out = kernels.apply(rgb, "sobel_x")
    assert out.shape == (3, 3, 3) and out.dtype == np.float32
    for c, scale in enumerate([1, 2, -1]):
        np.testing.assert_allclose(out[:, :, c], scale * np.asarray(HAND["sobel_x"]), atol=1e-5)
    out = kernels.apply((IMG * 10).astype(np.uint8), "identity")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, IMG * 10)
    custom = kernels.apply(IMG, [[0, 1], [0, 0]], mode="valid")
    np.testing.assert_array_equal(custom, [[2, 3], [5, 6]])


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown kernel 'blurry'"):
        kernels.apply(IMG, "blurry")
    with pytest.raises(ValueError, match="2-D"):
        kernels.apply(IMG, np.ones(3))
    with pytest.raises(ValueError, match=r"\(2, 2, 2, 2\)"):
        kernels.apply(np.ones((2, 2, 2, 2)), "identity")
    with pytest.raises(ValueError, match="boundary"):
        kernels.apply(IMG, "identity", boundary="wrap")
    with pytest.raises(ValueError, match="mode='valid'"):
        kernels.apply(IMG, "identity", mode="valid", boundary="reflect")
    with pytest.raises(TypeError, match="complex"):
        kernels.apply(IMG.astype(complex), "identity")


@pytest.mark.parametrize("backend", ["matplotlib", "pillow"])
def test_plot_kernels(tmp_path, backend):
    Image = pytest.importorskip("PIL.Image")
    if backend == "matplotlib":
        pytest.importorskip("matplotlib")
    from cconv import viz
    viz.set_backend(backend)
    try:
        yy, xx = np.mgrid[0:32, 0:32] / 31.0
        image = np.stack([xx, yy, (xx + yy) / 2], axis=-1)
        image[8:24, 8:24] = 1.0 - image[8:24, 8:24]
        path = kernels.plot_kernels(image, tmp_path / "k.png")
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB")).astype(int)
        # 11 tiles (original + 10 kernels) of 32x32 enlarged to 128 px, 4 per row
        assert arr.shape[1] >= 4 * 128 and arr.shape[0] >= 3 * 128
        assert arr.std() > 10 and len(np.unique(arr.reshape(-1, 3), axis=0)) > 100
        path = kernels.plot_kernels(image[:, :, 0], tmp_path / "g.png", kernels=["sobel_x", "sobel_y"])
        with Image.open(path) as im:
            assert im.size[0] >= 3 * 128
        with pytest.raises(ValueError, match="unknown kernel"):
            kernels.plot_kernels(image, tmp_path / "x.png", kernels=["nope"])
    finally:
        viz.set_backend(None)
