#!/usr/bin/env python
"""The README's LFW tables, made from the results files that ``cconv paper`` writes.

Reads one ``results.json`` per recipe (default: the committed ``docs/lfw/results_nocrop.json``
and ``docs/lfw/results_crop.json``) and writes the accuracy table, the FGSM table and a line
saying what produced them (cconv version, git commit, threads) between the README's markers
``<!-- lfw-results:begin -->`` / ``<!-- lfw-results:end -->`` and ``<!-- lfw-fgsm:begin -->`` /
``<!-- lfw-fgsm:end -->``.

    python tools/lfw_tables.py                  # print the tables
    python tools/lfw_tables.py --update         # rewrite them in README.md
    python tools/lfw_tables.py --check          # exit 1 if README.md differs from the files

After a new run (both recipes, 5 seeds; the commands are in the README)::

    cp paper-full/results.json docs/lfw/results_nocrop.json
    cp paper-crop/results.json docs/lfw/results_crop.json
    python tools/lfw_tables.py --update
"""
import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import sys

from readme_sections import update_or_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = ["docs/lfw/results_nocrop.json", "docs/lfw/results_crop.json",
           "docs/lfw/results_augment.json"]
#: load_lfw's default crop box (cconv.datasets.LFW_DEFAULT_CROP), written out so that this
#: script needs no cconv.
DEFAULT_CROP = [61, 66, 189, 194]


def recipe(doc):
    """The row label of a results file's recipe."""
    crop, size = doc["protocol"]["crop"], doc["protocol"]["image_size"][0]
    if crop is None and doc["protocol"].get("augmentation"):
        return ("the paper's recipe (whole image) plus augmentation in training: flips, 10% "
                "shifts and zooms (`--crop none --augment`)")
    if crop is None:
        return f"the paper's recipe: the whole 250x250 image scaled to {size}x{size} (`--crop none`)"
    label = (f"the same network and training on a {crop[2] - crop[0]}x{crop[3] - crop[1]} face "
             f"crop scaled to {size}x{size}")
    return label + (" (the default crop of `load_lfw`)" if list(crop) == DEFAULT_CROP else "")


def short_recipe(doc):
    if doc["protocol"].get("augmentation"):
        return "paper's recipe + augmentation"
    return "paper's recipe" if doc["protocol"]["crop"] is None else "face crop"


def pct(v):
    return f"{100 * v:.2f}%"


def added_in(path):
    """The commit that added `path` to this repository (None outside a checkout)."""
    try:
        out = subprocess.run(["git", "-C", ROOT, "log", "--diff-filter=A", "--format=%h (%ad)",
                              "--date=short", "--", path], capture_output=True, text=True,
                             check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[-1] if lines else None


def provenance(docs, paths):
    """What produced the files: cconv version, git commit, threads, machine (one clause for
    the files that share all of these)."""
    clauses = {}
    for doc, path in zip(docs, paths):
        commit = doc.get("git_commit")
        if commit:
            made = f"commit {commit[:10]}" + (" with uncommitted changes" if doc.get("git_dirty")
                                              else "")
        else:
            made = "commit not recorded"
        what = (f"cconv {doc['cconv_version']}, {made}, {doc['threads']} thread(s), "
                f"{doc['machine']}, Python {doc['python']}")
        clauses.setdefault(what, []).append(path)
    parts = []
    for what, files in clauses.items():
        added = {added_in(f) for f in files} - {None}
        when = f"; added to the repository in {', '.join(sorted(added))}" if (
            "not recorded" in what and added) else ""
        parts.append(", ".join(f"`{f}`" for f in files) + f": {what}{when}")
    return "Produced by `cconv paper` (" + "; ".join(parts) + ")."


def results_table(docs, paths):
    seeds = docs[0]["protocol"]["seeds"]
    lines = [f"| recipe ({len(seeds)} seeds: {seeds[0]}-{seeds[-1]}) | median | mean | std | min "
             f"| max | per seed |", "|---|---|---|---|---|---|---|"]
    for doc in docs:
        s = doc["summary"]
        per_seed = ", ".join(f"{100 * r['test_accuracy']:.2f}" for r in doc["runs"])
        lines.append(f"| {recipe(doc)} | **{pct(s['median'])}** | {pct(s['mean'])} | "
                     f"{100 * s['std']:.2f} | {pct(s['min'])} | {pct(s['max'])} | {per_seed} |")
    return "\n".join(lines + ["", provenance(docs, paths)])


def fgsm_table(docs):
    rows = [d for d in sorted(docs, key=lambda d: d["protocol"]["crop"] is None) if d.get("fgsm")]
    eps = [r["eps_255"] for r in rows[0]["fgsm"]]
    lines = ["| eps (grey levels of 255) | " + " | ".join(f"{e:g}" for e in eps) + " |",
             "|---|" + "---|" * len(eps)]
    for doc in rows:
        lines.append(f"| {short_recipe(doc)} | "
                     + " | ".join(pct(r["accuracy"]) for r in doc["fgsm"]) + " |")
    return "\n".join(lines)


def merged(docs):
    """One results document from the runs of one recipe written one seed per file (in the
    order of their seeds): runs and seeds joined, the summary recomputed."""
    docs = sorted(docs, key=lambda d: d["protocol"]["seeds"][0])
    out = dict(docs[0], protocol=dict(docs[0]["protocol"]))
    out["runs"] = [r for d in docs for r in d["runs"]]
    out["protocol"]["seeds"] = [s for d in docs for s in d["protocol"]["seeds"]]
    acc = [r["test_accuracy"] for r in out["runs"]]
    out["summary"] = {"median": statistics.median(acc), "mean": statistics.mean(acc),
                      "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                      "min": min(acc), "max": max(acc)}
    return out


def blocks(paths):
    docs = []
    for p in paths:
        files = sorted(glob.glob(os.path.join(ROOT, p)))
        if not files:
            raise FileNotFoundError(f"no results file matches {p!r}")
        parts = []
        for name in files:
            with open(name, encoding="utf-8") as f:
                parts.append(json.load(f))
        docs.append(parts[0] if len(parts) == 1 else merged(parts))
    return {"lfw-results": results_table(docs, paths), "lfw-fgsm": fgsm_table(docs)}


def stale_figures(text, new):
    """Accuracies (NN.NN%) that the README's LFW section quotes outside the tables but the
    tables do not hold (the paper's own 83.47% aside): prose left behind by a new run."""
    start = text.find("## Results: the LFW paper")
    section = text[start:text.find("\n## ", start + 1)]
    for name in new:
        i, j = section.find(f"<!-- {name}:begin -->"), section.find(f"<!-- {name}:end -->")
        section = section[:i] + section[j:]
    known = set(re.findall(r"\d+\.\d\d%", "\n".join(new.values()))) | {"83.47%"}
    return sorted(set(re.findall(r"\d+\.\d\d%", section)) - known)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="*", default=RESULTS,
                   help="results.json files, one per recipe (relative to the repository)")
    p.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--update", action="store_true", help="rewrite the README's tables")
    g.add_argument("--check", action="store_true", help="exit 1 if the README's tables differ")
    a = p.parse_args(argv)
    new = blocks(a.results)
    if not (a.update or a.check):
        print("\n\n".join(new.values()))
        return 0
    status = update_or_check(a.readme, new, a.check, "python tools/lfw_tables.py --update")
    if a.check and not status:
        with open(a.readme, encoding="utf-8") as f:
            stale = stale_figures(f.read(), new)
        if stale:
            print(f"README.md's LFW section quotes {', '.join(stale)}, which the results files "
                  "do not hold: update the prose", file=sys.stderr)
            return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
