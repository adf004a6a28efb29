"""The per-epoch progress bar of ``Model.fit``.

On a terminal the line is redrawn in place with ``\\r`` (at most ~10 times a second);
otherwise (a log file, a pipe, a notebook capturing output) one line is printed per
epoch, when it ends. Example::

    Epoch 3/10  42/42 [==============================] 1.2s  loss 0.0931  accuracy 0.9733  val_loss 0.1012  val_accuracy 0.9689  1120 samples/s
"""
import sys
import time

from ._printable import printable

__all__ = ["ProgressBar", "format_duration"]


def format_duration(seconds):
    """``75.3 -> '1:15'``, ``4.21 -> '4.2s'``, ``3725 -> '1:02:05'``."""
    if seconds != seconds or seconds < 0:  # NaN or negative
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _fmt_value(v):
    v = float(v)
    return f"{v:.4f}" if 1e-3 <= abs(v) < 1e4 or v == 0 else f"{v:.3e}"


class ProgressBar:
    """Progress of one epoch.

    Parameters
    ----------
    steps : int or None
        Number of batches in the epoch (None: unknown, no bar).
    epoch, epochs : int
        1-based epoch number and total, shown as ``Epoch 3/10``.
    file : file object, default sys.stdout
    width : int, default 30
        Width of the bar in characters.
    interactive : bool or None
        Redraw in place. None: when ``file`` is a TTY.
    min_interval : float, default 0.1
        Minimum seconds between two redraws.
    """

    def __init__(self, steps, epoch, epochs, file=None, width=30, interactive=None, min_interval=0.1):
        self.steps = None if steps is None else max(int(steps), 0)
        self.epoch = epoch
        self.epochs = epochs
        self.file = sys.stdout if file is None else file
        self.width = width
        if interactive is None:
            isatty = getattr(self.file, "isatty", None)
            try:
                interactive = bool(isatty()) if isatty else False
            except (ValueError, OSError):
                interactive = False
        self.interactive = interactive
        self.min_interval = min_interval
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._last_len = 0
        self.done = 0
        self.samples = 0
        self.values = {}

    def update(self, done, samples, values):
        """Record that ``done`` batches (``samples`` samples) are finished; ``values`` are running means."""
        self.done, self.samples, self.values = done, samples, dict(values)
        if not self.interactive:
            return
        now = time.perf_counter()
        if (self.steps is None or done < self.steps) and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        self._draw(self._line(final=False), end="")

    def finish(self, values=None):
        """Print the final line of the epoch (with validation values if given)."""
        if values is not None:
            self.values = dict(values)
        self._draw(self._line(final=True), end="\n")

    def _line(self, final):
        elapsed = time.perf_counter() - self.start
        if self.steps is None:
            parts = [f"Epoch {self.epoch}/{self.epochs}  {self.done} batches "
                     f"{format_duration(elapsed)}"]
            return self._with_values(parts, elapsed)
        n = len(str(self.steps))
        head = f"Epoch {self.epoch}/{self.epochs}  {self.done:>{n}}/{self.steps}"
        frac = self.done / self.steps if self.steps else 1.0
        filled = int(self.width * frac)
        if 0 < self.done < self.steps:
            k = min(max(filled, 1), self.width)
            bar = "=" * (k - 1) + ">" + "." * (self.width - k)
        else:
            bar = "=" * filled + "." * (self.width - filled)
        if final or self.done >= self.steps:
            timing = format_duration(elapsed)
        elif self.done > 0:
            timing = "ETA " + format_duration(elapsed / self.done * (self.steps - self.done))
        else:
            timing = "ETA ?"
        return self._with_values([f"{head} [{bar}] {timing}"], elapsed)

    def _with_values(self, parts, elapsed):
        parts += [f"{printable(k)} {_fmt_value(v)}" for k, v in self.values.items()]   # keys hold output names
        if elapsed > 0 and self.samples:
            parts.append(f"{self.samples / elapsed:.0f} samples/s")
        return "  ".join(parts)

    def _draw(self, line, end):
        if self.interactive:
            pad = " " * max(self._last_len - len(line), 0)
            self.file.write("\r" + line + pad + end)
            self._last_len = len(line)
        else:
            self.file.write(line + end)
        self.file.flush()
