"""Component benchmarks (pytest-benchmark): not part of the default test run.

``python -m pytest tests`` skips this directory (pyproject's addopts has ``--benchmark-skip``); run them with
``python -m pytest tests/benchmarks --benchmark-only --benchmark-json=benchmarks.json``.
"""


def pytest_ignore_collect(collection_path, config):
    # collected only when benchmarks were asked for: `--benchmark-only`, or `--benchmark-skip` not in effect
    try:
        skip = config.getoption("benchmark_skip")
        only = config.getoption("benchmark_only")
    except ValueError:  # pytest-benchmark not installed
        return True
    if collection_path.name == "conftest.py":
        return None
    return True if (skip and not only) else None
