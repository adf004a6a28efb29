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

Every error ends the command with one line on stderr (``cconv <command>: error: ...``) and
a non-zero exit status: 2 for bad arguments, 1 for anything that fails while running, 130
for Ctrl-C. ``--debug`` shows the traceback instead.
"""
import argparse
import importlib
import importlib.util
import os
import sys
import time

from ._cli_args import Parser, non_negative_int, output_folder, positive_float, positive_int
from ._printable import printable

__all__ = ["main", "build_parser", "run_demo"]


def add_demo_parser(subparsers):
    """Register ``cconv demo``."""
    p = subparsers.add_parser(
        "demo", help="train a small CNN on the bundled 8x8 digits and write its outputs",
        description="Train a small CNN on scikit-learn's bundled 8x8 handwritten digits "
                    "(1,797 images, no download), print the test accuracy and write the model, "
                    "the training curves and feature maps to --out.")
    p.add_argument("--epochs", type=positive_int, default=15, help="training epochs (default 15)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="batch size (default 32)")
    p.add_argument("--lr", type=positive_float, default=3e-3,
                   help="initial Adam learning rate, annealed to 0 on a cosine (default 0.003)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the split, the weights and the shuffling (default 0)")
    p.add_argument("--out", type=output_folder, default="cconv-demo",
                   help="output folder (default ./cconv-demo/)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="number of threads (default: all available cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_demo)
    return p


def build_parser():
    """The ``argparse`` parser of ``cconv`` with every available subcommand."""
    from ._version import __version__
    parser = Parser(prog="cconv", description="Convolutional neural networks on the CPU.")
    parser.add_argument("--version", action="version", version=f"cconv {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_demo_parser(subparsers)
    _add_optional_commands(subparsers)
    for sub in subparsers.choices.values():   # --debug before or after the command
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show the traceback of an error")
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
        print(flush=True)                       # end a progress bar's line on stdout
        print(f"cconv {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"cconv {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    return 0 if status is None else int(status)


#: Errors whose message says it all; any other type is named (it is likely a bug).
_EXPECTED_ERRORS = (ValueError, TypeError, OSError, ImportError, RuntimeError)


def _one_line(exc):
    text = "; ".join(printable(line.strip()) for line in str(exc).splitlines() if line.strip())
    if not isinstance(exc, _EXPECTED_ERRORS) or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        text += " (run with --debug for the traceback)"
    return text


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
