"""Where one training step of the paper network goes: a per-layer, per-phase profile.

Each thread count runs in its own process: the paper network (bench/paper_net.py, Adam 1e-3,
batch ``--batch`` of random 64x64x3 images), 3 warm-up steps, then ``--steps`` timed
``train_on_batch`` calls. Every layer's forward (``call``, or the fused convolution + ReLU +
pool of ``Conv2D.training_fusion``) and backward (or that pair's joint backward), and the
optimizer's update, are timed around the call (wall time, ``time.perf_counter``); "engine"
is the rest of the step (loss, gradient bookkeeping, Python). The table gives each phase's
median over the steps in ms and its share of the median step. The JSON goes to
``bench/results/profile-step-<time>.json``.

The wrappers add about a microsecond per call, nothing next to a 100 ms step. Only the
shares are meant to be read across machines.

Usage::

    python bench/profile_step.py --threads 1 2 --steps 15
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402
import paper_net  # noqa: E402

WORKER = r"""
import collections, json, sys, time
import numpy as np
sys.path.insert(0, {here!r})
import cconv, paper_net
cconv.set_num_threads({threads})
model = paper_net.cconv_model()
x, y = paper_net.data({batch})
acc = collections.defaultdict(float)


def timed(label, fn):
    def call(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[label] += time.perf_counter() - t0
    return call


model.train_on_batch(x, y)                      # builds the model and the optimizer state
for layer in model.layers:
    fusion = layer.training_fusion

    def fused(following, layer=layer, fusion=fusion):
        f = fusion(following)
        if f is None:
            return None
        pair = layer.name + "+" + following.name
        g = timed(pair + " fwd", f)
        if getattr(f, "backward", None) is not None:     # the pair's joint backward
            g.backward = timed(pair + " bwd", f.backward)
        return g
    layer.training_fusion = fused
    layer.call = timed(layer.name + " fwd", layer.call)
    layer.backward = timed(layer.name + " bwd", layer.backward)
opt = model.optimizer
opt.step = timed("optimizer", opt.step)
for _ in range(3):
    model.train_on_batch(x, y)
steps, phases = [], collections.defaultdict(list)
for _ in range({steps}):
    acc.clear()
    t0 = time.perf_counter()
    model.train_on_batch(x, y)
    steps.append(time.perf_counter() - t0)
    inner = set()
    for k in acc:                       # a fused pair's own layers' calls are inside it
        if "+" in k:
            inner.update(part + k[-4:] for part in k[:-4].split("+"))
    for k, v in acc.items():
        if k not in inner:
            phases[k].append(v)
    phases["engine"].append(steps[-1] - sum(v for k, v in acc.items() if k not in inner))
print(json.dumps({{"step": steps, "phases": phases}}))
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--out", default=harness.RESULTS)
    args = p.parse_args()
    results = {}
    for nt in args.threads:
        code = WORKER.format(here=HERE, threads=nt, batch=args.batch, steps=args.steps)
        env = dict(os.environ, OMP_NUM_THREADS=str(nt))
        out = subprocess.run([args.python, "-c", code], env=env, capture_output=True, text=True,
                             check=True).stdout
        raw = json.loads(out.strip().splitlines()[-1])
        step = statistics.median(raw["step"])
        rows = sorted(((k, statistics.median(v)) for k, v in raw["phases"].items()),
                      key=lambda kv: -kv[1])
        results[str(nt)] = {"step_s": step, "step_range_s": [min(raw["step"]), max(raw["step"])],
                            "phases_s": dict(rows), "raw": raw}
        print(f"{nt} thread(s): step median {step * 1e3:.1f} ms "
              f"[{min(raw['step']) * 1e3:.1f}-{max(raw['step']) * 1e3:.1f}] over {args.steps} steps")
        for k, v in rows:
            print(f"  {k:24s} {v * 1e3:8.2f} ms  {v / step * 100:5.1f}%")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"profile-step-{stamp}.json")
    with open(path, "w") as f:
        json.dump({"args": vars(args), "machine": harness.machine_info(),
                   "load": os.getloadavg(), "results": results}, f, indent=1)
    print("log:", os.path.relpath(path, harness.ROOT))


if __name__ == "__main__":
    main()
