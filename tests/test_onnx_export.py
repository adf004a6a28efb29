"""ONNX export: every layer, the paper network, a residual and a two-input network give ONNX
Runtime's predictions within 1e-5 (relative to the output's scale, float32) of cconv's, and
import back with the same predictions."""
import numpy as np
import pytest

import cconv
from cconv import layers as L
from cconv import preprocessing

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx_util import assert_close, ort_run, ort_session, predict, randomise, sample  # noqa: E402

# (layers, input shape): every exportable layer class, in the geometries that reach its
# special cases (asymmetric pads, strides, groups, dilation, output padding, "same").
LAYER_CASES = [
    ([L.Conv2D(4, 3, padding="same", activation="relu")], (7, 6, 3)),
    ([L.Conv2D(4, 3, stride=2, padding="same")], (7, 6, 3)),
    ([L.Conv2D(4, (3, 2), stride=(2, 1), padding=((1, 2), (0, 1)), dilation=(1, 2), groups=2,
               use_bias=False)], (9, 8, 4)),
    ([L.Conv2DTranspose(4, 3, stride=2, padding="same", activation="sigmoid")], (5, 4, 3)),
    ([L.Conv2DTranspose(6, 3, stride=2, padding=1, output_padding=1, groups=3)], (5, 4, 3)),
    ([L.Conv2DTranspose(4, 3, stride=3, padding=((0, 1), (1, 0)), output_padding=2)], (5, 4, 3)),
    ([L.Conv2DTranspose(4, 4, stride=2, padding="valid", use_bias=False)], (5, 4, 3)),
    ([L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="tanh")], (6, 6, 3)),
    ([L.DepthwiseConv2D((2, 3), stride=2, dilation=1, padding=((0, 1), (1, 1)))], (7, 6, 2)),
    ([L.MaxPool2D(3, stride=2, padding=1)], (7, 6, 3)),
    ([L.MaxPool2D(2, padding="same")], (7, 5, 3)),
    ([L.AvgPool2D(3, stride=2, padding=((1, 0), (0, 1)))], (7, 6, 3)),
    ([L.GlobalAvgPool2D()], (5, 6, 3)),
    ([L.GlobalMaxPool2D()], (5, 6, 3)),
    ([L.Flatten(), L.Dense(5, activation="softmax")], (4, 3, 2)),
    ([L.Dense(3, use_bias=False, activation="elu")], (6,)),
    ([L.Reshape((6, 4)), L.Softmax()], (4, 3, 2)),
    ([L.Flatten(), L.Reshape((2, 3, 4)), L.Conv2D(2, 1)], (4, 3, 2)),
    ([L.UpSampling2D((2, 3))], (4, 3, 2)),
    ([L.UpSampling2D((2, 3), interpolation="bilinear")], (4, 3, 2)),
    ([L.UpSampling2D(4, interpolation="bilinear")], (3, 5, 2)),
    ([L.ZeroPadding2D(((1, 2), (0, 3)))], (4, 3, 2)),
    ([L.Cropping2D(((1, 0), (0, 1)))], (4, 3, 2)),
    ([L.Dropout(0.5), L.BatchNorm2D()], (4, 3, 2)),
    ([L.Flatten(), L.BatchNorm2D(eps=1e-3)], (4, 3, 2)),
    ([L.ReLU()], (4, 3, 2)), ([L.LeakyReLU(0.2)], (4, 3, 2)), ([L.ELU(0.7)], (4, 3, 2)),
    ([L.Sigmoid()], (4, 3, 2)), ([L.Tanh()], (4, 3, 2)), ([L.Softmax()], (4, 3, 2)),
    ([L.Softmax(axis=1)], (4, 3, 2)), ([L.Softmax(axis=2)], (4, 3, 2)),
    ([L.GELU()], (4, 3, 2)), ([L.GELU("tanh")], (4, 3, 2)), ([L.SiLU()], (4, 3, 2)),
    ([L.Conv2D(3, 3, activation="silu"), L.Flatten(), L.Dense(5, activation="gelu")], (4, 3, 2)),
    ([L.Conv2D(3, 1, activation=L.LeakyReLU(0.3))], (4, 3, 2)),
]


def _case_id(case):
    layers, shape = case
    return "-".join(type(l).__name__ for l in layers) + f"-{'x'.join(map(str, shape))}"


def _merge_models():
    a = cconv.Input((4, 4, 2), name="a")
    b = cconv.Input((4, 4, 2), name="b")
    c = cconv.Input((4, 4, 3), name="c")
    add = L.Add()([a, b])
    out = [L.Subtract()([add, b]), L.Multiply()([a, b, add]), L.Concatenate()([a, c]),
           L.Concatenate(axis=1)([a, b]), L.Concatenate(axis=2)([a, b, a])]
    return cconv.Model([a, b, c], out, seed=0)


def _sequential(case, seed=0, dtype="float32"):
    layers, shape = case
    layers = [type(l).from_config(l.get_config()) for l in layers]     # fresh, unbuilt
    return randomise(cconv.Sequential(layers, input_shape=shape, seed=seed, dtype=dtype), seed)


def test_every_layer_class_has_a_case():
    covered = {type(l).__name__ for layers, _ in LAYER_CASES for l in layers}
    covered |= {"Add", "Subtract", "Multiply", "Concatenate"}           # _merge_models
    covered |= set(preprocessing.LAYERS)                                # test_onnx_preprocessing
    assert set(cconv.onnx.exportable_layers()) == covered
    # every class cconv.layers has (its aliases aside) is exportable
    public = {n for n in L.__all__ if isinstance(getattr(L, n), type)
              and issubclass(getattr(L, n), L.Layer) and getattr(L, n).__name__ == n}
    assert public - {"Layer", "Activation"} == covered


@pytest.mark.parametrize("case", LAYER_CASES, ids=_case_id)
@pytest.mark.parametrize("opset", [17, 20])
def test_layer_export_matches_onnx_runtime_and_imports_back(tmp_path, case, opset):
    model = _sequential(case)
    x = sample(case[1])
    path = tmp_path / "m.onnx"
    model.export(path, opset_version=opset)
    ours = model.predict(x)
    (theirs,) = ort_run(path, x)
    assert_close(theirs, ours)
    back = cconv.load_model(path)
    np.testing.assert_allclose(back.predict(x), ours, rtol=1e-6, atol=1e-6 * np.abs(ours).max())
    assert back.count_params() >= sum(l.count_params() for l in model.layers
                                      if not isinstance(l, L.Dropout))


def test_merge_layers_and_three_inputs(tmp_path):
    model = _merge_models()
    xs = [sample((4, 4, 2), seed=1), sample((4, 4, 2), seed=2), sample((4, 4, 3), seed=3)]
    model.export(tmp_path / "m.onnx")
    outs = ort_run(tmp_path / "m.onnx", dict(zip(model.input_names, xs)))
    for theirs, ours in zip(outs, predict(model, xs)):
        assert_close(theirs, ours)
    back = cconv.load_model(tmp_path / "m.onnx")
    assert back.input_names == model.input_names and back.output_names == model.output_names
    for a, b in zip(predict(back, xs), predict(model, xs)):
        np.testing.assert_array_equal(a, b)


def _residual():
    inp = cconv.Input((8, 8, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", name="stem")(inp)
    x = L.BatchNorm2D(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    for i in range(2):
        y = L.Conv2D(8, 3, padding="same", activation="relu", name=f"c{i}a")(x)
        y = L.Conv2D(8, 3, padding="same", name=f"c{i}b")(y)
        x = L.ReLU(name=f"r{i}")(L.Add(name=f"add{i}")([x, y]))
    x = L.MaxPool2D(2)(x)
    x = L.Dropout(0.3)(x)
    out = L.Dense(5, activation="softmax", name="probs")(L.GlobalAvgPool2D()(x))
    return randomise(cconv.Model(inp, out, seed=0))


def _two_inputs():
    img = cconv.Input((6, 6, 2), name="image")
    meta = cconv.Input((3,), name="meta")
    x = L.Conv2D(4, 3, activation="gelu")(img)
    x = L.Flatten()(L.MaxPool2D(2)(x))
    m = L.Dense(16, activation="tanh")(meta)
    h = L.Concatenate()([x, m])
    out = L.Dense(4, activation="softmax", name="class")(h)
    aux = L.Dense(1, activation="sigmoid", name="flag")(h)
    return randomise(cconv.Model([img, meta], [out, aux], seed=0))


@pytest.mark.parametrize("build", ["paper", "residual", "two_inputs"])
def test_networks_export_and_round_trip(tmp_path, build):
    if build == "paper":
        model = randomise(cconv.models.paper_lfw(input_shape=(64, 64, 3), seed=0), 0)
        xs = [sample((64, 64, 3), n=4)]
    elif build == "residual":
        model, xs = _residual(), [sample((8, 8, 3), n=5)]
    else:
        model, xs = _two_inputs(), [sample((6, 6, 2), n=5), sample((3,), n=5, seed=2)]
    path = tmp_path / "net.onnx"
    model.export(path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ours = predict(model, xs)
    feeds = dict(zip(model.input_names, xs))
    errors = [assert_close(t, o) for t, o in zip(ort_run(path, feeds), ours)]
    assert max(errors) < 1e-5
    back = cconv.load_model(path)
    assert back.output_names == model.output_names
    for a, b in zip(predict(back, xs), ours):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # the imported model trains: its weights are parameters an optimizer updates
    assert sum(p.size for _, p, _ in back.parameters()) == sum(p.size for _, p, _ in model.parameters())


def test_graph_interface_names_shapes_dynamic_batch(tmp_path):
    model = _two_inputs()
    model.export(tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    g = proto.graph

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    assert [i.name for i in g.input] == ["image", "meta"]
    assert [dims(i) for i in g.input] == [["N", 6, 6, 2], ["N", 3]]
    assert [o.name for o in g.output] == ["class", "flag"]
    assert [dims(o) for o in g.output] == [["N", 4], ["N", 1]]
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17
    assert proto.producer_name == "cconv"
    assert not [i for i in g.initializer if i.name in ("image", "meta")]
    s = ort_session(tmp_path / "m.onnx")
    for n in (1, 7):                                      # the batch size is free
        xs = [sample((6, 6, 2), n=n), sample((3,), n=n, seed=4)]
        for t, o in zip(s.run(None, dict(zip(model.input_names, xs))), predict(model, xs)):
            assert_close(t, o)


def test_inference_mode_graph(tmp_path):
    model = randomise(cconv.Sequential([L.Conv2D(4, 3), L.BatchNorm2D(), L.Dropout(0.5),
                                        L.Flatten(), L.Dense(3)], input_shape=(5, 5, 2), seed=0))
    model.export(tmp_path / "m.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert "Dropout" not in ops and "BatchNormalization" in ops
    bn = next(n for n in onnx.load(str(tmp_path / "m.onnx")).graph.node
              if n.op_type == "BatchNormalization")
    assert len(bn.output) == 1                     # inference form: no running-stat outputs
    # the layout: one Transpose in (NHWC -> NCHW) and one before the flatten (back to NHWC)
    assert ops.count("Transpose") == 2 and ops[0] == "Transpose"
    x = sample((5, 5, 2))
    (a,) = ort_run(tmp_path / "m.onnx", x)
    (b,) = ort_run(tmp_path / "m.onnx", x)
    np.testing.assert_array_equal(a, b)
    assert_close(a, model.predict(x))


def test_float64_models(tmp_path):
    ref = pytest.importorskip("onnx.reference")
    # (not GELU: the reference evaluator computes Erf to about 1e-8)
    model = randomise(cconv.Sequential([L.Conv2D(3, 3, padding="same", activation="elu"),
                                        L.AvgPool2D(2), L.Flatten(), L.Dense(4)],
                                       input_shape=(6, 6, 2), seed=0, dtype="float64"))
    x = sample((6, 6, 2), dtype=np.float64)
    model.export(tmp_path / "f64.onnx")
    proto = onnx.load(str(tmp_path / "f64.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    (y,) = ref.ReferenceEvaluator(proto).run(None, {"input": x})
    np.testing.assert_allclose(y, model.predict(x), rtol=1e-10, atol=1e-12)
    back = cconv.load_model(tmp_path / "f64.onnx")
    assert back.dtype == np.float64
    np.testing.assert_allclose(back.predict(x), model.predict(x), rtol=1e-12, atol=1e-14)
    # ONNX Runtime's CPU convolutions are float32 only: export a float64 model as float32
    model.export(tmp_path / "f32.onnx", dtype="float32")
    (y,) = ort_run(tmp_path / "f32.onnx", x.astype(np.float32))
    assert_close(y, model.predict(x))


def test_export_refuses_clearly(tmp_path):
    class Mine(L.Layer):
        def call(self, x, training=False):
            return x * 2, None

        def backward(self, dy, saved):
            return dy * 2

    model = cconv.Sequential([L.Flatten(), Mine(name="mine")], input_shape=(2, 2, 1))
    with pytest.raises(ValueError, match=r"layer 'mine' \(Mine\)"):
        model.export(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="not built"):
        cconv.Sequential([L.Flatten()]).export(tmp_path / "m.onnx")
    ok = cconv.Sequential([L.Flatten()], input_shape=(2, 2, 1))
    with pytest.raises(ValueError, match="opset_version"):
        ok.export(tmp_path / "m.onnx", opset_version=13)
    with pytest.raises(ValueError, match="format must be 'onnx'"):
        ok.export(tmp_path / "m.onnx", format="tf_saved_model")
    with pytest.raises(FileNotFoundError):
        ok.export(tmp_path / "missing" / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_export_replaces_a_file_atomically(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    path.chmod(0o640)
    cconv.Sequential([L.Flatten()], input_shape=(2, 2, 1)).export(path)
    assert (path.stat().st_mode & 0o777) == 0o640 and onnx.load(str(path)).graph.node
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
