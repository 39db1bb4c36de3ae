"""Collect ``bench_*.py`` here (pytest's default ``python_files`` only matches ``test_*.py``), so that
``pytest benchmarks/ --benchmark-enable`` runs them. Benchmarks stay out of the default test run
(``testpaths = ["tests"]``) and never set TRITON_INTERPRET: their Triton cases need CUDA."""

import pytest


def pytest_collect_file(parent, file_path):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
