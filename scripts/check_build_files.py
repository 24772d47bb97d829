"""Checks that the Bazel BUILD files name every source file: each Python module of hyperkeras/ in the root
BUILD, each module of experiments/ in experiments/BUILD, and each tests/test_*.py as a ``pytest_test``.

    python scripts/check_build_files.py

Prints what is missing and exits 1, or prints one line and exits 0. Runs in CI before `bazel build //...`
(which proves the BUILD files are well formed): together they catch a module left out of a BUILD file
without running every test a second time under Bazel.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def quoted(path):
    return set(re.findall(r'"([^"]+)"', path.read_text()))


def main():
    missing = []
    root_build = quoted(ROOT / "BUILD")
    packages_globbed = "hyperkeras/**/__init__.py" in root_build  # the :hyperkeras library's glob
    for path in sorted((ROOT / "hyperkeras").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel not in root_build and not (packages_globbed and path.name == "__init__.py"):
            missing.append(f"BUILD: {rel} is in no py_library's srcs")
    experiments_build = quoted(ROOT / "experiments" / "BUILD")
    for path in sorted((ROOT / "experiments").rglob("*.py")):
        rel = path.relative_to(ROOT / "experiments").as_posix()
        if rel not in experiments_build:
            missing.append(f"experiments/BUILD: {rel} is in no target's srcs")
    tests_build = set(re.findall(r'pytest_test\(\s*name\s*=\s*"([^"]+)"', (ROOT / "tests" / "BUILD").read_text()))
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        if path.stem not in tests_build:
            missing.append(f"tests/BUILD: no pytest_test(name = {path.stem!r})")
    if missing:
        print("\n".join(missing))
        return 1
    print("check_build_files: every module and test file is named in a BUILD file")
    return 0


if __name__ == "__main__":
    sys.exit(main())
