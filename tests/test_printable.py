"""Names from users and files printed or drawn safely: no terminal control sequences reach a
terminal, no name breaks a figure."""
import io

import numpy as np
import pytest

import cconv
from cconv import cli, viz
from cconv._printable import printable
from cconv.layers import Conv2D, Dense, Flatten

#: Clears the screen, sets the terminal's title, rings the bell, reverses the text after it.
HOSTILE = "x\x1b[2J\x1b]0;owned\x07\u202e\r\n"


def _clean(text):
    """Every line of ``text`` is printable (no control or format character)."""
    for line in text.split("\n"):
        assert line.isprintable(), repr(line)


def test_printable_escapes_only_what_a_terminal_would_act_on():
    assert printable("conv2d_1 é 名 $\\foo$") == "conv2d_1 é 名 $\\foo$"
    assert printable(HOSTILE) == "x\\x1b[2J\\x1b]0;owned\\x07\\u202e\\r\\n"


def _functional(name):
    inp = cconv.Input((4,), name="in" + HOSTILE)
    hidden = Dense(3, name="h" + HOSTILE)(inp)
    outs = [Dense(2, activation="softmax", name=f"o{i}" + HOSTILE)(hidden) for i in range(2)]
    return cconv.Model(inp, outs, name=name, seed=0)


@pytest.mark.parametrize("kind", ["Sequential", "Model"])
def test_summary_escapes_names(kind):
    """Before: the escape sequences went to the terminal as they were (the screen cleared,
    the title changed)."""
    if kind == "Sequential":
        model = cconv.Sequential([Dense(3, name="d" + HOSTILE)], input_shape=(4,), name="m" + HOSTILE)
    else:
        model = _functional("m" + HOSTILE)
    lines = []
    text = model.summary(print_fn=lines.append)
    _clean(text)
    assert "mx\\x1b[2J" in text


def test_progress_bar_escapes_output_names():
    model = _functional("m")
    model.compile("sgd", "categorical_crossentropy")
    x = np.zeros((8, 4), np.float32)
    y = [np.zeros(8, int), np.zeros(8, int)]
    import contextlib
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model.fit(x, y, epochs=1, verbose=2)
    _clean(out.getvalue())
    assert "o0x\\x1b[2J" in out.getvalue()


def test_cli_error_line_escapes_file_names(tmp_path, capsys):
    """A data set whose file name holds escapes: the one error line shows them escaped."""
    Image = pytest.importorskip("PIL.Image")
    for person in ("Ann_Lee", "Bo_Chan"):
        (tmp_path / person).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 40)).save(tmp_path / person / f"{person}_{i + 1:04d}.jpg")
    (tmp_path / "Bo_Chan" / "Bo_Chan_0009\x1b[2J.jpg").write_bytes(b"not a jpeg")
    status = cli.main(["paper", "--data-dir", str(tmp_path), "--min-faces-per-person", "3", "--epochs", "1",
                       "--am-steps", "0", "--quiet", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 1
    _clean(err.rstrip("\n"))
    assert "Bo_Chan_0009" in err


@pytest.mark.parametrize("backend", ["matplotlib", "pillow"])
def test_figures_draw_names_as_text(tmp_path, backend):
    """A layer named like matplotlib math ($\\foo$): before, plot_feature_maps raised
    ParseFatalException (Unknown symbol: \\foo) with matplotlib."""
    if backend == "matplotlib":
        pytest.importorskip("matplotlib")
    viz.set_backend(backend)
    try:
        model = cconv.Sequential([Conv2D(2, 3, name="c$\\foo$" + HOSTILE.strip()), Flatten(), Dense(2)],
                                 input_shape=(6, 6, 1), seed=0)
        paths = viz.plot_feature_maps(model, np.zeros((6, 6, 1), np.float32), tmp_path / "maps")
        assert len(paths) == 2 and all(p.exists() for p in paths)
        assert viz.plot_history({"loss": [1.0, 0.5]}, tmp_path / "h.png", title="$\\foo$" + HOSTILE).exists()
    finally:
        viz.set_backend(None)


def test_layer_error_messages_escape_names():
    layer = Dense(2, name="d" + HOSTILE)
    layer.build((3,))
    with pytest.raises(ValueError) as info:
        layer.forward(np.zeros((2, 5), np.float32))
    _clean(str(info.value))
    assert "d" + "x\\x1b[2J" in str(info.value)
