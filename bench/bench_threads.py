"""Two Python threads calling cconv at once vs one after the other (issue 6).

With the GIL released inside the compiled kernels, two threads that each run a
single-threaded convolution overlap on two cores; one after the other they cannot.
Prints both wall times and the ratio (> 1 means the concurrent run was faster).

    python bench/bench_threads.py [--repeats 5]
"""
import argparse
import threading
import time

import numpy as np

import cconv
from cconv import functional as F


def work(x, w, reps):
    for _ in range(reps):
        y = F.conv2d(x, w)
        F.conv2d_backward(y, x, w)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=4, help="conv fwd+bwd per thread per repeat")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 31, 31, 32)).astype(np.float32)
    w = rng.standard_normal((3, 3, 32, 64)).astype(np.float32)
    cconv.set_num_threads(1)  # each call on one thread: any overlap comes from the two Python threads
    work(x, w, 1)
    seq, par = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        work(x, w, args.calls)
        work(x, w, args.calls)
        seq.append(time.perf_counter() - t)
        threads = [threading.Thread(target=work, args=(x, w, args.calls)) for _ in range(2)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        par.append(time.perf_counter() - t)
    s, p = min(seq), min(par)
    print(f"one after the other: {s * 1e3:.1f} ms; two threads at once: {p * 1e3:.1f} ms; "
          f"speed-up {s / p:.2f}x (1.0x would mean the GIL serialised them)")


if __name__ == "__main__":
    main()
