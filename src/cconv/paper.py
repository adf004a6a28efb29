"""``cconv paper``: reproduce the LFW face-identification experiment end to end.

The protocol of the paper: Labeled Faces in the Wild, the people with at least 30
images (34 people, 2,370 images), RGB at 64x64, a random 75% / 25% train/test split,
the network of :func:`cconv.models.paper_lfw`, Adam with learning rate 0.001,
categorical cross-entropy, batch 128, 100 epochs. The paper reports 83.47% test
accuracy.

``--augment`` adds the standard augmentation in front of the network
(:func:`cconv.models.standard_augmentation`: horizontal flips, shifts of up to
``--augment-shift`` and zooms of up to ``--augment-zoom``, 10% by default), active in
training only; everything else stays the paper's recipe.

For each seed in ``--seeds`` the split, the initial weights, the dropout masks, the
augmentations and the shuffling all follow that seed. The test split is never used to
choose anything: it is passed to ``fit`` only so that the validation curves of the
figure can be drawn (no early stopping, no checkpoint selection); the reported accuracy
is the one after the last epoch.

Outputs in ``--out`` (default ``./cconv-paper/``):

- ``results.json``: the protocol (with the augmentation layers' settings), the accuracy
  of every seed, mean, standard deviation (ddof=1), min, max, median, the per-epoch histories and the wall times, and what produced
  them: the cconv version and, when cconv runs from a git checkout, its commit (and whether
  the checkout had uncommitted changes); ``tools/lfw_tables.py`` makes the README's tables
  from these files;
- ``model_seed<S>.npz``: each trained model (:func:`cconv.load_model`);
- ``history_seed<S>.png``: accuracy and loss per epoch, train and test;
- for the first seed: ``feature_maps/`` (one test face and every channel of the six
  conv and pool layers), ``filters_conv1.png``, ``saliency.png``,
  ``activation_maximization_<layer>.png`` for each conv layer, ``fgsm.png`` (test
  accuracy against the FGSM step size, also printed as a table) and ``kernels.png``
  (classic fixed kernels applied to the same face).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from ._cli_args import checked, non_negative_int, output_folder, positive_float, positive_int

__all__ = ["add_parser", "run", "PAPER_ACCURACY"]

#: Test accuracy reported by the paper.
PAPER_ACCURACY = 0.8347


def _seed_list(text):
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct non-negative integers, got {text!r}")
    return seeds


def _crop(text):
    """``default``, ``none`` or ``left,upper,right,lower`` (pixels of the 250x250 frame)."""
    from .datasets import LFW_DEFAULT_CROP
    t = text.strip().lower()
    if t == "default":
        return LFW_DEFAULT_CROP
    if t in ("none", "full"):
        return None
    try:
        box = tuple(int(v) for v in t.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or not (0 <= box[0] < box[2] and 0 <= box[1] < box[3]):
        raise argparse.ArgumentTypeError(
            f"expected 'default', 'none' or left,upper,right,lower with left < right and "
            f"upper < lower, got {text!r}")
    return box


_fraction = checked(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def add_parser(subparsers):
    """Register ``cconv paper`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "paper", help="reproduce the LFW paper (training, test accuracy, figures)",
        description="Reproduce the LFW face-identification experiment: people with at least 30 "
                    "images, 64x64 RGB, random 75/25 split, the paper's CNN, Adam 0.001, batch 128. "
                    "Writes results.json and the figures to --out.")
    p.add_argument("--data-dir", required=True,
                   help="LFW in the standard layout: the image folder (e.g. lfw-deepfunneled/), "
                        "a folder containing it, or a .tgz archive")
    p.add_argument("--epochs", type=non_negative_int, default=100, help="training epochs (default 100)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default 0.001)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the split, the weights, dropout and shuffling (default 0)")
    p.add_argument("--seeds", type=_seed_list, default=None,
                   help="comma-separated seeds, one full run each (e.g. 0,1,2,3,4); overrides --seed")
    p.add_argument("--out", type=output_folder, default="cconv-paper",
                   help="output folder (default ./cconv-paper/)")
    p.add_argument("--crop", type=_crop, default="default",
                   help="face crop box on the 250x250 images: 'default' (61,66,189,194), 'none' "
                        "(the full image) or left,upper,right,lower")
    p.add_argument("--size", type=positive_int, default=64, help="image side after resizing (default 64)")
    p.add_argument("--min-faces-per-person", type=positive_int, default=30,
                   help="keep people with at least this many images (default 30)")
    p.add_argument("--limit-per-class", type=positive_int, default=None,
                   help="use at most K images per person (quick runs; default: all)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="number of threads (default: all available cores)")
    p.add_argument("--am-steps", type=non_negative_int, default=128,
                   help="gradient-ascent steps per activation-maximization image (default 128; "
                        "0 skips those figures)")
    p.add_argument("--am-channels", type=positive_int, default=16,
                   help="channels per conv layer in the activation-maximization grids (default 16)")
    p.add_argument("--augment", action="store_true",
                   help="random horizontal flips, shifts and zooms in training (identity at test time)")
    p.add_argument("--augment-shift", type=_fraction, default=0.1,
                   help="with --augment: largest shift, as a fraction of the image size (default 0.1)")
    p.add_argument("--augment-zoom", type=_fraction, default=0.1,
                   help="with --augment: largest zoom in or out, as a fraction (default 0.1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="train data-parallel over the processes of an MPI job: mpirun -n 4 cconv paper "
                        "--distributed ... (needs cconv[mpi]; --batch-size is the global batch; rank 0 "
                        "prints and writes the outputs; --threads is per process, default the cores per "
                        "process)")
    p.set_defaults(func=run)
    return p


def _summary(values):
    values = [float(v) for v in values]
    return {
        "n_seeds": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "median": statistics.median(values),
    }


def _source_commit():
    """(commit, dirty) of the git checkout this cconv is imported from, or (None, None) when
    it is not (an installed wheel): the checkout must hold this very file at src/cconv/."""
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        return subprocess.run(["git", "-C", here, *args], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
    try:
        top = git("rev-parse", "--show-toplevel")
        if os.path.realpath(os.path.join(top, "src", "cconv")) != os.path.realpath(here):
            return None, None
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None


def _write_json(path, document):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _figures(model, x_test, y_test, names, out_dir, args, log):
    """The first seed's figures; returns (dict name -> relative paths, FGSM rows)."""
    import numpy as np

    from . import adversarial, kernels, viz

    figures = {}

    def rel(p):
        return os.path.relpath(os.fspath(p), out_dir)

    # the test face: the first test image the model classifies correctly (else the first)
    pred = model.predict(x_test, batch_size=args.batch_size).argmax(axis=1)
    correct = np.flatnonzero(pred == y_test)
    idx = int(correct[0]) if correct.size else 0
    face = x_test[idx]
    figures["test_face"] = {"test_index": idx, "person": names[int(y_test[idx])],
                            "predicted": names[int(pred[idx])]}

    maps = viz.plot_feature_maps(model, face, os.path.join(out_dir, "feature_maps"))
    figures["feature_maps"] = [rel(p) for p in maps]
    conv_layers = [l for l in model.layers if type(l).__name__ == "Conv2D"]
    figures["filters"] = rel(viz.plot_filters(conv_layers[0], os.path.join(out_dir, "filters_conv1.png"),
                                              title=f"{conv_layers[0].name}: the learned 3x3 RGB kernels"))
    figures["saliency"] = rel(viz.plot_saliency(model, face, os.path.join(out_dir, "saliency.png"),
                                                class_names=names))
    if args.am_steps:
        figures["activation_maximization"] = []
        for layer in conv_layers:
            t0 = time.perf_counter()
            n = min(args.am_channels, layer.params["kernel"].shape[-1])
            path = viz.activation_maximization_grid(
                model, layer.name, n, os.path.join(out_dir, f"activation_maximization_{layer.name}.png"),
                steps=args.am_steps)
            figures["activation_maximization"].append(rel(path))
            log(f"activation maximization: {layer.name}, {n} channels, {args.am_steps} steps "
                f"({time.perf_counter() - t0:.1f}s)")
    log("FGSM on the test split:")
    fgsm_rows = adversarial.robustness_report(model, x_test, y_test, path=os.path.join(out_dir, "fgsm.png"),
                                              batch_size=args.batch_size, verbose=True)
    figures["fgsm"] = "fgsm.png"
    figures["kernels"] = rel(kernels.plot_kernels(face, os.path.join(out_dir, "kernels.png")))
    return figures, fgsm_rows


def run(args):
    """Run ``cconv paper`` with parsed arguments (see :func:`add_parser`); returns 0.

    With ``--distributed`` every rank of the MPI job runs this: all train, rank 0 alone
    evaluates, prints and writes. An error on any rank ends the whole job (``MPI_Abort``)
    with that rank's message, so that no rank waits forever for the failed one.
    """
    if not getattr(args, "distributed", False):
        return _run(args, None)
    from . import distributed
    world = distributed.init()
    try:
        return _run(args, world)
    except BaseException:
        if world.size == 1:
            raise
        world.abort(sys.exc_info(), brief=not getattr(args, "debug", False))


def _run(args, world):
    import numpy as np

    from . import datasets, get_num_threads, models, optim, set_num_threads
    from .layers import serialize
    from ._version import __version__

    t_start = time.perf_counter()
    if args.threads is not None:
        set_num_threads(args.threads)
    root = world is None or world.is_root
    seeds = args.seeds if args.seeds else [args.seed]
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)

    def log(msg):
        if root:
            print(msg, flush=True)

    t0 = time.perf_counter()
    x, y, names = datasets.load_lfw(args.data_dir, min_faces_per_person=args.min_faces_per_person,
                                    size=(args.size, args.size), crop=args.crop,
                                    max_faces_per_person=args.limit_per_class)
    load_time = time.perf_counter() - t0
    if len(names) < 2:
        raise ValueError(
            f"identification needs at least 2 people, and {args.data_dir} has {len(names)} with "
            f">= {args.min_faces_per_person} images ({', '.join(names)}); lower "
            "--min-faces-per-person or point --data-dir at more people")
    crop_text = "none (full image)" if args.crop is None else f"{tuple(args.crop)}"
    log(f"cconv paper: LFW from {args.data_dir}: {len(names)} people with >= {args.min_faces_per_person} "
        f"images, {len(x)} images, {args.size}x{args.size} RGB, crop {crop_text} "
        f"(loaded in {load_time:.1f}s); {get_num_threads()} thread(s)"
        + ("" if world is None else f" in each of {world.size} processes (data-parallel, MPI)"))
    if args.limit_per_class:
        log(f"(at most {args.limit_per_class} images per person: not the paper's data set)")
    log("the test split is only monitored (val_* columns), never used for training or model selection")

    def augmentation():
        if not args.augment:
            return None
        return models.standard_augmentation(shift=args.augment_shift, zoom=args.augment_zoom)

    if args.augment:
        log("augmentation in training: " + ", ".join(repr(layer) for layer in augmentation()))

    runs = []
    commit, dirty = _source_commit()
    document = {
        "argv": sys.argv[1:],
        "cconv_version": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": get_num_threads(),
        "processes": 1 if world is None else world.size,
        "protocol": {
            "data_dir": os.fspath(args.data_dir),
            "min_faces_per_person": args.min_faces_per_person,
            "limit_per_class": args.limit_per_class,
            "n_images": int(len(x)), "n_classes": len(names), "image_size": [args.size, args.size, 3],
            "crop": None if args.crop is None else list(args.crop),
            "split": "random 75/25, not stratified, seeded", "test_size": 0.25,
            "model": "paper_lfw", "optimizer": "Adam", "lr": args.lr, "loss": "categorical_crossentropy",
            "augmentation": None if not args.augment else [serialize(layer) for layer in augmentation()],
            "epochs": args.epochs, "batch_size": args.batch_size, "seeds": seeds,
            "selection": "none: accuracy after the last epoch; test split monitored only",
        },
        "class_names": names,
        "paper_accuracy": PAPER_ACCURACY,
        "load_time_s": load_time,
        "runs": runs,
    }
    results_path = os.path.join(out_dir, "results.json")
    for k, seed in enumerate(seeds):
        x_tr, x_te, y_tr, y_te = datasets.train_test_split(x, y, test_size=0.25, seed=seed)
        model = models.paper_lfw(num_classes=len(names), input_shape=x.shape[1:], seed=seed,
                                 augmentation=augmentation())
        model.compile(optim.Adam(lr=args.lr), "categorical_crossentropy")
        if k == 0:
            model.summary(print_fn=log)
        log(f"seed {seed} ({k + 1}/{len(seeds)}): {len(x_tr)} train / {len(x_te)} test images")
        t_fit = time.perf_counter()
        history = model.fit(x_tr, y_tr, epochs=args.epochs, batch_size=args.batch_size,
                            validation_data=(x_te, y_te), shuffle=True, verbose=0 if args.quiet else 1,
                            distributed=world is not None)
        fit_time = time.perf_counter() - t_fit
        if not root:
            continue
        test = model.evaluate(x_te, y_te, batch_size=args.batch_size)
        hist = {key: [float(v) for v in values] for key, values in history.history.items()}
        run_info = {
            "seed": seed, "n_train": int(len(x_tr)), "n_test": int(len(x_te)),
            "test_accuracy": float(test["accuracy"]), "test_loss": float(test["loss"]),
            "final_train_accuracy": hist["accuracy"][-1] if hist.get("accuracy") else None,
            "final_train_loss": hist["loss"][-1] if hist.get("loss") else None,
            "fit_time_s": fit_time, "history": hist,
        }
        log(f"seed {seed}: test accuracy {test['accuracy']:.4f} "
            f"({int(round(test['accuracy'] * len(x_te)))}/{len(x_te)}), test loss {test['loss']:.4f}, "
            f"training {fit_time:.1f}s")
        model_path = os.path.join(out_dir, f"model_seed{seed}.npz")
        model.save(model_path)
        run_info["model"] = os.path.basename(model_path)
        try:
            from . import viz
            if hist:
                run_info["history_png"] = os.path.basename(
                    viz.plot_history(history, os.path.join(out_dir, f"history_seed{seed}.png"),
                                     title=f"LFW, paper network, seed {seed} (validation = test split, "
                                           f"monitored only)"))
            if k == 0:
                figures, fgsm_rows = _figures(model, x_te, y_te, names, out_dir, args, log)
                document["figures"] = figures
                document["fgsm"] = [{"eps": e, "eps_255": e * 255, "accuracy": a} for e, a in fgsm_rows]
                document["figures_seed"] = seed
        except ImportError as exc:
            log(f"skipping the PNG figures ({exc})")
        runs.append(run_info)
        document["summary"] = _summary([r["test_accuracy"] for r in runs])
        document["wall_time_s"] = time.perf_counter() - t_start
        _write_json(results_path, document)              # after every seed: partial results survive

    if not root:
        return 0
    s = document["summary"]
    log("")
    log(f"test accuracy over {s['n_seeds']} seed(s) {seeds}: mean {s['mean']:.4f}, std {s['std']:.4f} "
        f"(ddof=1), min {s['min']:.4f}, median {s['median']:.4f}, max {s['max']:.4f}; "
        f"the paper: {PAPER_ACCURACY:.4f}")
    log(f"wall time {document['wall_time_s']:.1f}s; results in {os.path.relpath(results_path)}")
    return 0
