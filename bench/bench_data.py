"""Benchmark: feeding the paper network from a folder of JPEGs against feeding it arrays,
and the memory of a folder dataset as the folder grows.

``--measure speed`` (the default): training epochs of the paper network (64x64x3 input,
batch 128, 34 classes, Adam) on the LFW images of the 34 people with at least 30 images
(``--data-dir``, 2,370 JPEGs of 250x250), fed

- ``arrays``: the images decoded beforehand (``load_lfw``, no crop, 64x64), ``fit(x, y)``;
- ``folder``: ``Dataset.from_folder(data_dir, image_size=(64, 64)).shuffle(0).batch(128)
  .prefetch(2)``: every batch decoded and resized from the JPEGs in a background thread
  while the model trains;
- ``cached``: the folder dataset with ``.cache()`` (in memory): the warm-up epoch decodes,
  the timed epochs read the decoded images;
- ``folder64`` (with ``--small-jpegs``): the same from a copy of the folder whose JPEGs were
  saved at 64x64 (quality 95), so that decoding is cheap.

Each variant runs in its own process (one warm-up epoch, then ``--epochs`` timed epochs;
a run's time is their total), the variants in a rotating order in each of ``--rounds``
rounds. The report gives each variant's median and range, and the median and range of the
per-round ratios variant / arrays; the raw numbers go to ``bench/results/data-<time>.json``.

``--measure memory``: the peak resident memory of a process that runs one epoch of a folder
dataset (decode and batch, with prefetch) over synthetic 250x250 JPEGs, for two folder
sizes (``--sizes``), next to the memory that the same images take as a float32 array
(what ``load_lfw`` would hold). Each size runs in its own process, ``--rounds`` times.

The machine this runs on is shared: read the ratios. To re-run on a quiet machine::

    python bench/bench_data.py --data-dir ../shared/data/lfw-deepfunneled --rounds 7 --small-jpegs
    python bench/bench_data.py --measure memory --sizes 1000,8000 --rounds 3
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

SPEED_WORKER = """
import json, sys, time
import numpy as np
import cconv
from cconv import data, datasets, models, optim
variant, data_dir, epochs, threads, classes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5].split(",")
cconv.set_num_threads(threads)
model = models.paper_lfw(num_classes=len(classes), input_shape=(64, 64, 3), seed=0)
model.compile(optim.Adam(lr=1e-3), "categorical_crossentropy")
if variant == "arrays":
    x, y, names = datasets.load_lfw(data_dir, min_faces_per_person=30, crop=None, size=(64, 64))
    x *= 255                                  # the folder dataset's range, [0, 255]
    fit = lambda e: model.fit(x, y, epochs=e, batch_size=128, verbose=0)
else:
    ds = data.Dataset.from_folder(data_dir, image_size=(64, 64), class_names=classes)
    if variant == "cached":
        ds = ds.cache()
    ds = ds.shuffle(0).batch(128).prefetch(2)
    fit = lambda e: model.fit(ds, epochs=e, verbose=0)
fit(1)                                        # warm-up: caches, thread pools, the page cache
t, c = time.perf_counter(), time.process_time()
h = fit(epochs)
print(json.dumps({"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c,
                  "loss": h.history["loss"][-1], "threads": cconv.get_num_threads()}))
"""

MEMORY_WORKER = """
import json, resource, sys
import numpy as np
from cconv import data
folder = sys.argv[1]
ds = data.Dataset.from_folder(folder, image_size=(64, 64)).shuffle(0).batch(128).prefetch(2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
n = 0
for xb, yb in ds.batches(0):
    n += len(xb)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"images": n, "peak_rss_mb": peak / 1024, "before_mb": before / 1024}))
"""


def _people(data_dir, min_faces=30):
    out = []
    for name in sorted(os.listdir(data_dir)):
        path = os.path.join(data_dir, name)
        if os.path.isdir(path) and len([f for f in os.listdir(path) if f.lower().endswith(".jpg")]) >= min_faces:
            out.append(name)
    return out


def _small_copy(data_dir, people, target):
    from PIL import Image
    for person in people:
        os.makedirs(os.path.join(target, person), exist_ok=True)
        for f in sorted(os.listdir(os.path.join(data_dir, person))):
            with Image.open(os.path.join(data_dir, person, f)) as im:
                im.convert("RGB").resize((64, 64), Image.Resampling.LANCZOS).save(
                    os.path.join(target, person, f), quality=95)
    return target


def _worker(code, argv):
    proc = subprocess.run([sys.executable, "-c", code] + [str(a) for a in argv], capture_output=True,
                          text=True, cwd=HERE)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _spread(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def measure_speed(args):
    people = _people(args.data_dir)
    variants = {"arrays": args.data_dir, "folder": args.data_dir, "cached": args.data_dir}
    tmp = None
    if args.small_jpegs:
        tmp = tempfile.mkdtemp(prefix="cconv-bench-jpeg64-")
        variants["folder64"] = _small_copy(args.data_dir, people, tmp)
    names = list(variants)
    rounds, order_log = [], []
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        order_log.append(order)
        res = {}
        for v in order:
            res[v] = _worker(SPEED_WORKER, ["folder" if v == "folder64" else v, variants[v], args.epochs,
                                            args.threads, ",".join(people)])
            print(f"round {r + 1}/{args.rounds} {v:9s} {res[v]['wall_s']:.2f} s wall, "
                  f"{res[v]['cpu_s']:.2f} s CPU  (load {os.getloadavg()[0]:.1f})", flush=True)
        rounds.append(res)
    report = {v: {"wall_s": _spread([r[v]["wall_s"] for r in rounds]),
                  "cpu_s": _spread([r[v]["cpu_s"] for r in rounds])} for v in names}
    for v in names[1:]:
        report[v]["ratio_to_arrays"] = _spread([r[v]["wall_s"] / r["arrays"]["wall_s"] for r in rounds])
        report[v]["cpu_ratio_to_arrays"] = _spread([r[v]["cpu_s"] / r["arrays"]["cpu_s"] for r in rounds])
    print()
    for v in names:
        w = report[v]["wall_s"]
        line = f"{v:9s} wall median {w['median']:.2f} s ({w['min']:.2f}-{w['max']:.2f})"
        if v != "arrays":
            q = report[v]["ratio_to_arrays"]
            line += f"   ratio to arrays median {q['median']:.3f} ({q['min']:.3f}-{q['max']:.3f})"
        print(line)
    return {"measure": "speed", "images": 2370, "people": len(people), "epochs_timed": args.epochs,
            "threads": args.threads, "order": order_log, "rounds": rounds, "report": report}


def _synthetic_folder(root, n, classes=10):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (classes, 250, 250, 3), dtype=np.uint8)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c:02d}"), exist_ok=True)
    for i in range(n):
        c = i % classes
        img = np.clip(base[c].astype(int) + rng.integers(-20, 21, (250, 250, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(root, f"class{c:02d}", f"img{i:06d}.jpg"), quality=90)
    return root


def measure_memory(args):
    sizes = [int(s) for s in args.sizes.split(",")]
    base = tempfile.mkdtemp(prefix="cconv-bench-mem-")
    folders = {n: _synthetic_folder(os.path.join(base, f"n{n}"), n) for n in sizes}
    rounds = []
    for r in range(args.rounds):
        res = {}
        for n in (sizes if r % 2 == 0 else sizes[::-1]):
            res[n] = _worker(MEMORY_WORKER, [folders[n]])
            print(f"round {r + 1}/{args.rounds} {n:6d} images: peak RSS {res[n]['peak_rss_mb']:.0f} MB", flush=True)
        rounds.append(res)
    report = {str(n): {"peak_rss_mb": _spread([r[n]["peak_rss_mb"] for r in rounds]),
                       "as_float32_array_mb": n * 64 * 64 * 3 * 4 / 2**20} for n in sizes}
    print()
    for n in sizes:
        p = report[str(n)]["peak_rss_mb"]
        print(f"{n:6d} images: folder dataset peak RSS median {p['median']:.0f} MB ({p['min']:.0f}-{p['max']:.0f}); "
              f"as a float32 array the images alone would take {report[str(n)]['as_float32_array_mb']:.0f} MB")
    return {"measure": "memory", "sizes": sizes, "rounds": [{str(k): v for k, v in r.items()} for r in rounds],
            "report": report}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure", choices=("speed", "memory"), default="speed")
    p.add_argument("--data-dir", default=os.path.join(HERE, "..", "..", "shared", "data", "lfw-deepfunneled"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per run (default 2)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--small-jpegs", action="store_true", help="also time a folder of 64x64 JPEGs")
    p.add_argument("--sizes", default="1000,8000", help="folder sizes for --measure memory")
    args = p.parse_args()
    t0 = time.time()
    result = measure_speed(args) if args.measure == "speed" else measure_memory(args)
    import numpy
    import cconv
    result.update({
        "argv": sys.argv[1:], "date": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_s": time.time() - t0,
        "machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "cconv": cconv.__version__, "numpy": numpy.__version__,
        "load_avg_end": os.getloadavg(),
        "note": "shared 2-core machine; other engineers' jobs were running",
    })
    try:
        result["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                          cwd=HERE).stdout.strip()
    except OSError:
        pass
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", f"data-{args.measure}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"log: {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
