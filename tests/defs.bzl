"""`pytest_test`: a native py_test that runs one pytest file through tests/run_pytest.py."""

def pytest_test(name, size = "medium", deps = [], data = [], **kwargs):
    native.py_test(
        name = name,
        srcs = ["run_pytest.py", name + ".py"],
        main = "run_pytest.py",
        args = ["$(location %s.py)" % name],
        python_version = "PY3",
        size = size,
        deps = ["//:hyperkeras"] + deps,
        data = data + ["conftest.py"],
        **kwargs
    )
