"""The script that tests/test_distributed.py starts under ``mpiexec``: every rank runs it.

    python distributed_worker.py SCENARIO OUT_DIR

Each rank writes what it ended with to OUT_DIR (``<case>_rank<r>.npz``: the weights in
order; rank 0 also ``<case>_history.json``); the test compares those files with a run in
one process. The data, models and cases are defined here once and imported by the test
for its one-process reference runs.
"""
import json
import os
import sys

import numpy as np

import cconv
from cconv.layers import Add, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1)), rng.integers(0, 3, n)


def graph_model(seed, dtype="float64", dropout=False, batchnorm=False):
    """A small functional network with a layer called twice (its gradients are final only
    after the backward pass of its first call) and a residual addition."""
    inp = cconv.Input((8, 8, 1))
    h = Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    shared = Conv2D(4, 3, padding="same", activation="relu", name="shared")
    h = Add()([h, shared(shared(h))])
    if batchnorm:
        h = BatchNorm2D(name="bn")(h)
    h = Flatten()(MaxPool2D(2)(h))
    h = Dense(8, activation="relu", name="d1")(h)
    if dropout:
        h = Dropout(0.3, name="drop")(h)
    out = Dense(3, activation="softmax", name="out")(h)
    return cconv.Model(inp, out, seed=seed, dtype=dtype)


#: name -> (samples, batch, epochs, dtype, optimizer, DataParallel kwargs or None for True)
CASES = {
    "sgd64": (37, 10, 2, "float64", ("SGD", dict(lr=0.1, momentum=0.9)), None),
    "sgd64_overlap": (37, 10, 2, "float64", ("SGD", dict(lr=0.1, momentum=0.9)),
                      dict(bucket_bytes=1, overlap=True)),
    "sgd64_buckets": (37, 10, 2, "float64", ("SGD", dict(lr=0.1, momentum=0.9)),
                      dict(bucket_bytes=700, overlap=False)),
    "small_batches": (22, 10, 2, "float64", ("SGD", dict(lr=0.1)), dict(bucket_bytes=1, overlap=True)),
    "adam32": (37, 8, 2, "float32", ("Adam", dict(lr=0.01)), None),
    # a NaN in the 2nd batch of epoch 1 (on rank 1 of 2, rank 2 of 3): every rank skips it
    "nan_skipped": (37, 10, 2, "float64", ("SGD", dict(lr=0.1)), None),
}


def case_data(case):
    n = CASES[case][0]
    x, y = data(n)
    if case == "nan_skipped":
        x = x.copy()
        x[_first_order(n, seed=100)[18]] = np.nan
    return x, y


def _first_order(n, seed):
    """The order of epoch 1 of a model built with ``seed`` (its shuffling generator)."""
    return graph_model(seed).shuffle_rng.permutation(n)


def compiled(case, seed):
    n, batch, epochs, dtype, (opt, kw), _ = CASES[case]
    model = graph_model(seed, dtype)
    model.compile(cconv.optim.get({"class_name": opt, "config": kw}), "categorical_crossentropy")
    return model


def fit_case(model, case, distributed, verbose=0):
    n, batch, epochs, dtype, _, dp = CASES[case]
    x, y = case_data(case)
    xv, yv = data(11, seed=1)
    if distributed and dp is not None:
        from cconv.distributed import DataParallel
        distributed = DataParallel(**dp)
    callbacks = [cconv.callbacks.SkipNonFinite(verbose=0)] if case == "nan_skipped" else None
    return model.fit(x, y, epochs=epochs, batch_size=batch, validation_data=(xv, yv), verbose=verbose,
                     distributed=distributed, callbacks=callbacks)


def save(out, name, rank, model, history=None):
    np.savez(os.path.join(out, f"{name}_rank{rank}.npz"), *model.get_weights())
    if history is not None and rank == 0:
        with open(os.path.join(out, f"{name}_history.json"), "w") as f:
            json.dump(history.history, f)


#: The dataset scenario: 41 samples in batches of 10 (the last batch of 1 leaves rank 0 of 2
#: and ranks 0, 1 of 3 without samples), validation batches of 4 from 11 samples.
DATASET_SAMPLES, DATASET_BATCH = 41, 10
DATASET_KINDS = ("arrays", "folder", "list")


def dataset_fit(model, kind, distributed, out=None, rank=0):
    """Fit ``model`` on a shuffled cconv.data dataset (``kind`` "arrays", "folder": PNGs
    written under ``out``, or "list": a list of the batches of epoch 0) with validation, three metrics, and TensorBoard and CSV
    callbacks writing under ``out`` (rank 0 only)."""
    from cconv import data as cdata
    x, y = data(DATASET_SAMPLES, seed=4)
    if kind == "folder":
        folder = os.path.join(out, "images")
        if rank == 0:
            write_pngs(folder, x, y)
        if distributed:
            from cconv import distributed as D
            D.init().comm.Barrier()
        ds = cdata.Dataset.from_folder(folder, image_size=(8, 8), color_mode="grayscale")
    else:
        ds = cdata.Dataset.from_arrays(x, y)
    ds = ds.shuffle(seed=7).batch(DATASET_BATCH)
    if kind == "list":          # a plain sequence of batches: loaded whole, then cut
        ds = list(ds.batches(0))
    loaded = []
    if kind == "arrays":        # count the samples this rank loads
        ds = ds.map(lambda bx, by: (loaded.append(len(bx)), (bx, by))[1])
    xv, yv = data(11, seed=1)
    val = cdata.Dataset.from_arrays(xv, yv).batch(4)
    logs = os.path.join(out, f"logs_{kind}_rank{rank}") if out is not None else None
    cbs = [] if logs is None else [cconv.callbacks.TensorBoard(os.path.join(logs, "tb")),
                                   cconv.callbacks.CSVLogger(os.path.join(logs, "log.csv"))]
    if logs is not None:
        os.makedirs(logs, exist_ok=True)
    history = model.fit(ds, validation_data=val, epochs=3, verbose=0, distributed=distributed, callbacks=cbs)
    if loaded and out is not None:
        with open(os.path.join(out, f"loaded_rank{rank}.json"), "w") as f:
            json.dump(loaded, f)
    return history


def write_pngs(folder, x, y):
    """The samples as 8-bit grayscale PNGs in one sub-folder per class (the pixel values
    x * 255 rounded: the folder dataset reads exactly those)."""
    from PIL import Image
    for i, (img, label) in enumerate(zip(x, y)):
        os.makedirs(os.path.join(folder, f"class{label}"), exist_ok=True)
        Image.fromarray(np.rint(img[:, :, 0] * 255).astype(np.uint8)).save(
            os.path.join(folder, f"class{label}", f"{i:03d}.png"))


def dataset_model(seed):
    model = graph_model(seed, "float64")
    model.compile(cconv.optim.SGD(0.1, momentum=0.9), "categorical_crossentropy",
                  metrics=["accuracy", "f1", "top_k_accuracy"])
    return model


def main(scenario, out):
    from cconv import distributed as D
    world = D.init()
    r = world.rank
    if scenario == "equivalence":
        with open(os.path.join(out, f"threads_rank{r}.json"), "w") as f:
            json.dump({"threads": cconv.get_num_threads(), "cores": world.cores, "size": world.size}, f)
        for case in CASES:
            # different seeds on every rank: rank 0's initial weights must be broadcast
            model = compiled(case, seed=100 + r)
            history = fit_case(model, case, True, verbose=2)
            save(out, case, r, model, history)
    elif scenario == "threads":
        print(f"rank {r}: {cconv.get_num_threads()} threads", flush=True)
    elif scenario == "nonfinite":
        model = compiled("nan_skipped", seed=100)
        x, y = case_data("nan_skipped")
        try:
            model.fit(x, y, epochs=1, batch_size=10, verbose=0, distributed=True)
        except cconv.training.NonFiniteLossError as exc:
            print(f"rank {r} caught: {exc}", flush=True)
    elif scenario == "raise_in_fit":
        class Boom(cconv.callbacks.Callback):
            def on_batch_end(self, batch, logs=None):
                if r == world.size - 1 and batch == 1:
                    raise ValueError(f"boom from rank {r}")
        model = compiled("sgd64", seed=0)
        x, y = data(37)
        model.fit(x, y, epochs=50, batch_size=4, verbose=0, distributed=True, callbacks=[Boom()])
    elif scenario == "raise_outside_fit":
        if r == world.size - 1:
            raise KeyError(f"boom outside fit on rank {r}")
        world.comm.barrier()              # the other ranks would wait here forever
    elif scenario.removesuffix("_ds") in ("resume_full", "resume_part", "resume_rest"):
        # "_ds": the same samples from a shuffled cconv.data dataset instead of arrays
        base, ds = scenario.removesuffix("_ds"), scenario.endswith("_ds")
        epochs = {"resume_full": 3, "resume_part": 1, "resume_rest": 3}[base]
        suffix = "_ds" if ds else ""
        ckpt = os.path.join(out, ("full" if base == "resume_full" else "part") + suffix + ".npz")
        model = graph_model(seed=7 + r, dtype="float64", dropout=True)
        model.compile(cconv.optim.Adam(0.01), "categorical_crossentropy")
        x, y = data(41)
        csv = cconv.callbacks.CSVLogger(ckpt[:-4] + ".csv")
        if ds:
            from cconv import data as cdata
            fit_data = dict(x=cdata.Dataset.from_arrays(x[:33], y[:33]).shuffle(seed=5).batch(8),
                            validation_data=(x[33:], y[33:]))
        else:
            fit_data = dict(x=x, y=y, batch_size=8, validation_split=0.2)
        history = model.fit(**fit_data, epochs=epochs, verbose=0, distributed=True, checkpoint=ckpt,
                            resume=True if base == "resume_rest" else None, callbacks=[csv])
        save(out, scenario, r, model, history)
    elif scenario == "dataset":
        for kind in DATASET_KINDS:
            model = dataset_model(seed=100 + r)
            history = dataset_fit(model, kind, True, out, r)
            save(out, f"dataset_{kind}", r, model, history)
    elif scenario == "dataset_unseeded":       # each rank draws its own shuffle seed
        from cconv import data as cdata
        x, y = data(DATASET_SAMPLES)
        dataset_model(seed=100).fit(cdata.Dataset.from_arrays(x, y).shuffle().batch(DATASET_BATCH),
                                    epochs=1, verbose=0, distributed=True)
    elif scenario == "batchnorm":
        model = graph_model(seed=3 + r, dtype="float64", batchnorm=True)
        model.compile(cconv.optim.SGD(0.05), "categorical_crossentropy")
        x, y = data(40)
        history = model.fit(x, y, epochs=2, batch_size=20, verbose=0, distributed=True)
        save(out, "batchnorm", r, model, history)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
