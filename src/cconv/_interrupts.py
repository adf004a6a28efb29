"""Updates that a Ctrl-C cannot tear: signals held back for the length of a block.

Python runs a signal handler (``KeyboardInterrupt`` for SIGINT) between any two bytecodes of
the main thread, so an update of many arrays interrupted half-way leaves some updated and
some not. :func:`deferred_signals` records SIGINT and SIGTERM while its block runs and
hands them to their handlers right after it, so the block is all or nothing.
"""
import signal
import threading
from contextlib import contextmanager

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))


@contextmanager
def deferred_signals():
    """Hold SIGINT and SIGTERM back during the block; deliver them when it ends.

    Only signals with a Python-level handler are deferred (the default SIGINT handler
    raises KeyboardInterrupt); ignored or default-action signals keep their behaviour.
    Outside the main thread this does nothing: Python runs handlers in the main thread
    only, so no other thread is interrupted by them.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    saved = {}
    try:
        for signum in _SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler):
                saved[signum] = handler
                signal.signal(signum, lambda s, frame: pending.append((s, frame)))
    except ValueError:   # not the main interpreter: signals are not ours to handle
        pass
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        for signum, frame in pending:
            saved[signum](signum, frame)
