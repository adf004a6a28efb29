"""Watching cconv.functional's numpy depthwise route, which the compiled core's record of
kernel paths (cconv._testing.kernels_run) does not see."""
from cconv import functional as F


class depthwise_spy:
    """``with depthwise_spy() as spy:`` ... ``spy.called`` is [forward ran, backward ran]."""

    def __enter__(self):
        self.called = [False, False]
        self.saved = F._depthwise_forward, F._depthwise_backward

        def watch(i, fn):
            def run(*args):
                self.called[i] = True
                return fn(*args)
            return run

        F._depthwise_forward, F._depthwise_backward = (watch(i, fn)
                                                       for i, fn in enumerate(self.saved))
        return self

    def __exit__(self, *exc):
        F._depthwise_forward, F._depthwise_backward = self.saved
