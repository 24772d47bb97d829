"""What importing hyperkeras does: no environment change; the old module paths still import, and warn once."""

import json
import os
import subprocess
import sys
import textwrap
import types

import pytest


def _run(code, repo_root):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # conftest.py sets it
    env["PYTHONPATH"] = os.pathsep.join([str(repo_root), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_hyperkeras_changes_no_environment_variable(repo_root):
    # TensorFlow sets a few variables of its own when it is imported (TF2_BEHAVIOR, KMP_*, ...): those are
    # set first, so that the comparison is of what hyperkeras itself does.
    changed = _run(
        """
        import json, os
        import keras, numpy, tensorflow
        before = dict(os.environ)
        import hyperkeras
        after = dict(os.environ)
        print(json.dumps(sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))))
        """,
        repo_root,
    )
    assert changed == []


@pytest.mark.parametrize(
    "old, new, names",
    [
        ("hyperkeras.wrn", "hyperkeras.targets.wrn", ["wide_resnet", "parameter_breakdown"]),
        ("hyperkeras.wrn", "hyperkeras.data.augmentation", ["augment"]),
        ("hyperkeras.text", "hyperkeras.data.text", ["load_corpus", "Vocabulary", "as_text", "UNK", "CORPORA"]),
        (
            "hyperkeras.strokes",
            "hyperkeras.data.strokes",
            ["load_strokes", "read_iam_xml", "synthetic_strokes", "mdn_split", "mdn_nll"],
        ),
    ],
)
def test_old_paths_are_shims_that_warn_once(repo_root, old, new, names):
    out = _run(
        f"""
        import importlib, json, warnings
        import hyperkeras
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            old = importlib.import_module("{old}")
            importlib.import_module("{old}")  # a second import: no second warning
        new = importlib.import_module("{new}")
        print(json.dumps({{
            "warnings": [(w.category.__name__, str(w.message)) for w in caught],
            "same": [getattr(old, n) is getattr(new, n) for n in {names!r}],
        }}))
        """,
        repo_root,
    )
    assert len(out["warnings"]) == 1
    category, message = out["warnings"][0]
    assert category == "DeprecationWarning" and old in message and new in message
    assert all(out["same"])


def test_data_package_keeps_its_public_names():
    from hyperkeras import data
    from hyperkeras.data import datasets

    public = [  # the names datasets.py (formerly hyperkeras/data.py) defines, not those it imports
        n
        for n, v in vars(datasets).items()
        if not n.startswith("_")
        and not isinstance(v, types.ModuleType)
        and getattr(v, "__module__", datasets.__name__) == datasets.__name__
    ]
    assert public and all(getattr(data, n) is getattr(datasets, n) for n in public)
    assert data.text.load_corpus and data.strokes.mdn_nll and data.augmentation.augment


def test_latent_discriminator_moved_to_its_objective_with_a_warning():
    import hyperkeras.generators as generators
    from hyperkeras.objectives.latent_gan import LatentDiscriminator

    with pytest.warns(DeprecationWarning, match="hyperkeras.objectives.latent_gan.LatentDiscriminator"):
        old = generators.LatentDiscriminator
    assert old is LatentDiscriminator
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        generators.Nope  # noqa: B018


def test_every_module_imports():
    """Every module of the package imports on its own (under Bazel: from the runfiles, so a module missing from
    the BUILD files, or imported by one that is, fails here)."""
    import importlib
    import pkgutil
    import warnings

    import hyperkeras

    names = [m.name for m in pkgutil.walk_packages(hyperkeras.__path__, "hyperkeras.")]
    assert len(names) > 40
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the deprecated shims warn on import
        for name in names:
            importlib.import_module(name)
