"""Collect ``bench_*.py`` here (pytest's default ``python_files`` only matches ``test_*.py``), so that
``pytest benchmarks/ --benchmark-enable`` runs them. Benchmarks stay out of the default test run
(``testpaths = ["tests"]``) and never set TRITON_INTERPRET: their Triton cases need CUDA."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models are built from configs; never wait on the hub


def pytest_collect_file(parent, file_path):
    # a file named on the command line is collected by pytest itself: adding it here would run it twice
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
