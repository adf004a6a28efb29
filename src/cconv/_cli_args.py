"""Argument types and the parser class shared by the ``cconv`` subcommands (cli, paper)."""
import argparse
import math
import os


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def checked(convert, ok, what):
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


positive_int = checked(int, lambda v: v >= 1, "a positive integer")
non_negative_int = checked(int, lambda v: v >= 0, "a non-negative integer")
positive_float = checked(float, lambda v: v > 0 and math.isfinite(v), "a positive finite number")


def output_folder(text):
    """``--out``: a folder that exists or can be created (not an existing file)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a folder, got ''")
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
    return text
