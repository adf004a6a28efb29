"""Check an installed cconv wheel: run it from outside the source tree.

Used by tools/build_wheel.sh and by cibuildwheel's test-command. Checks that

* cconv is imported from an installed distribution, not from a source tree;
* ``cconv.__version__`` is the installed distribution's version;
* the extension was built with OpenMP (``cconv.show_config()``), and the OpenMP runtime
  that threadpoolctl finds loaded is a file of the cconv distribution itself: the copy
  that auditwheel / delocate / delvewheel vendored, not the build machine's;
* the distribution's LICENSE carries that runtime's license.

Exits with status 1 and a message per failed check.
"""
import importlib.metadata
import os
import sys


def main() -> int:
    import cconv

    failures = []
    dist = importlib.metadata.distribution("cconv")
    site = os.path.realpath(str(dist.locate_file("")))
    pkg = os.path.realpath(os.path.dirname(cconv.__file__))
    print(f"cconv {cconv.__version__} imported from {pkg}")
    if os.path.commonpath([site, pkg]) != site or any(
            os.path.exists(os.path.join(pkg, "..", "..", f)) for f in ("setup.py", "pyproject.toml")):
        failures.append(f"cconv comes from {pkg}, not from the installed distribution in {site}")
    if cconv.__version__ != dist.version:
        failures.append(f"cconv.__version__ {cconv.__version__} != installed metadata {dist.version}")

    info = cconv.show_config()
    if not info["openmp"]:
        failures.append("the extension was built without OpenMP (show_config: OpenMP off)")
    runtime = info["openmp_runtime"]
    if runtime is None:
        failures.append("threadpoolctl finds no OpenMP runtime loaded")
    else:
        path = os.path.realpath(runtime["filepath"])
        owned = {os.path.normcase(os.path.realpath(str(dist.locate_file(f))))
                 for f in dist.files or ()}
        if os.path.normcase(path) not in owned:
            failures.append(f"the OpenMP runtime in use, {path}, is not a file of the cconv "
                            "wheel (the repair step did not vendor it)")
        else:
            print(f"OpenMP runtime vendored in the wheel: {os.path.relpath(path, site)}")

    licenses = [f for f in dist.files or () if f.name.upper().startswith("LICENSE")
                and ".dist-info" in str(f)]
    text = "".join(f.read_text(encoding="utf-8") for f in licenses)
    if "cconv developers" not in text:
        failures.append(f"no cconv license in the dist-info ({[str(f) for f in licenses]})")
    if "This binary distribution of cconv also bundles" not in text or "OpenMP" not in text:
        failures.append("the dist-info LICENSE does not carry the bundled OpenMP runtime's license")

    for msg in failures:
        print(f"FAILED: {msg}", file=sys.stderr)
    if not failures:
        print("check_wheel: all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
