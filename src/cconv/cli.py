"""The ``cconv`` command line (also ``python -m cconv``).

Subcommands
-----------
``cconv demo``
    Train a small CNN on scikit-learn's bundled 8x8 handwritten digits (no network),
    print the model summary, a progress bar and the test accuracy, and write the saved
    model, the training curves and the feature maps of every conv/pool layer for one
    test digit to an output folder (default ``./cconv-demo/``).

Other modules add subcommands: if ``cconv.paper`` exists, its ``add_parser(subparsers)``
is called with the ``argparse`` subparsers object. A subcommand sets
``parser.set_defaults(func=handler)``; ``handler(args)`` returns the exit status
(None means 0).
"""
import argparse
import importlib
import importlib.util
import os
import sys
import time

__all__ = ["main", "build_parser", "run_demo"]


def _checked(convert, ok, what):
    """An argparse ``type=`` that converts with ``convert`` and requires ``ok(value)``."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _checked(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _checked(float, lambda v: v > 0, "a positive number")


def add_demo_parser(subparsers):
    """Register ``cconv demo``."""
    p = subparsers.add_parser(
        "demo", help="train a small CNN on the bundled 8x8 digits and write its outputs",
        description="Train a small CNN on scikit-learn's bundled 8x8 handwritten digits "
                    "(1,797 images, no download), print the test accuracy and write the model, "
                    "the training curves and feature maps to --out.")
    p.add_argument("--epochs", type=_positive_int, default=15, help="training epochs (default 15)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="batch size (default 32)")
    p.add_argument("--lr", type=_positive_float, default=3e-3,
                   help="initial Adam learning rate, annealed to 0 on a cosine (default 0.003)")
    p.add_argument("--seed", type=_non_negative_int, default=0,
                   help="seed of the split, the weights and the shuffling (default 0)")
    p.add_argument("--out", default="cconv-demo", help="output folder (default ./cconv-demo/)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="number of threads (default: all available cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_demo)
    return p


def build_parser():
    """The ``argparse`` parser of ``cconv`` with every available subcommand."""
    from ._version import __version__
    parser = argparse.ArgumentParser(prog="cconv", description="Convolutional neural networks on the CPU.")
    parser.add_argument("--version", action="version", version=f"cconv {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_demo_parser(subparsers)
    _add_optional_commands(subparsers)
    return parser


def _add_optional_commands(subparsers):
    """Let optional modules (``cconv.paper``) register their subcommands."""
    for modname in ("paper",):
        fullname = f"{__package__}.{modname}"
        if importlib.util.find_spec(fullname) is None:
            continue
        try:
            module = importlib.import_module(fullname)
        except ImportError as exc:   # a missing optional dependency must not break `cconv demo`
            print(f"cconv: the '{modname}' command is unavailable: {exc}", file=sys.stderr)
            continue
        register = getattr(module, "add_parser", None) or getattr(module, "add_paper_command", None)
        if register is not None:
            register(subparsers)


def main(argv=None):
    """Entry point of the ``cconv`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        status = args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except ImportError as exc:
        print(f"cconv {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0 if status is None else int(status)


# --------------------------------------------------------------------------------------
# cconv demo
# --------------------------------------------------------------------------------------
def run_demo(args):
    """Run ``cconv demo`` with parsed arguments (see :func:`add_demo_parser`)."""
    import numpy as np

    from . import callbacks, datasets, models, optim, set_num_threads, get_num_threads

    if args.threads is not None:
        set_num_threads(args.threads)
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)

    x, y = datasets.load_digits()
    x_train, x_test, y_train, y_test = datasets.train_test_split(x, y, test_size=0.25, seed=args.seed,
                                                                 stratify=True)
    print(f"cconv demo: scikit-learn digits, {len(x)} images of 8x8 pixels, 10 classes; "
          f"stratified split {len(x_train)} train / {len(x_test)} test (seed {args.seed}); "
          f"{get_num_threads()} thread(s)")
    model = models.digits_cnn(seed=args.seed)
    model.compile(optim.Adam(lr=args.lr), "categorical_crossentropy")
    model.summary()
    print("(val_* below is the held-out test set, monitored only: it is never used for training)")

    t0 = time.perf_counter()
    schedule = callbacks.LearningRateScheduler(optim.CosineAnnealingLR(args.epochs))
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        validation_data=(x_test, y_test), callbacks=[schedule],
                        verbose=0 if args.quiet else 1)
    train_time = time.perf_counter() - t0
    result = model.evaluate(x_test, y_test)
    print(f"test accuracy: {result['accuracy']:.4f} ({int(round(result['accuracy'] * len(x_test)))}"
          f"/{len(x_test)})  test loss: {result['loss']:.4f}  training time: {train_time:.1f}s")

    model_path = os.path.join(out_dir, "digits_cnn.npz")
    model.save(model_path)
    written = [model_path]

    # pick the first test digit the model classifies correctly, for the feature maps
    pred = model.predict(x_test).argmax(axis=1)
    correct = np.flatnonzero(pred == y_test)
    idx = int(correct[0]) if correct.size else 0
    image = x_test[idx]

    try:
        from . import viz
        curves = os.path.join(out_dir, "training_curves.png")
        viz.plot_history(history, curves)
        written.append(curves)
        maps_dir = os.path.join(out_dir, "feature_maps")
        os.makedirs(maps_dir, exist_ok=True)
        maps = viz.plot_feature_maps(model, image, maps_dir)
        written += [os.fspath(p) for p in (maps or [])] or [maps_dir]
    except ImportError as exc:  # matplotlib / Pillow missing: the model is saved all the same
        print(f"skipping the PNG figures ({exc}); install them with: pip install \"cconv[demo]\"",
              file=sys.stderr)
    print(f"feature maps are for test image #{idx} (digit {int(y_test[idx])}, predicted {int(pred[idx])})")
    print("wrote:")
    for p in written:
        print(f"  {os.path.relpath(p)}")
    print(f"reload with: cconv.load_model({os.path.relpath(model_path)!r})")
    return 0
