"""What the bench scripts share: the median timing, and tests/ on the import path (the PyTorch references
`reference` and `vqgan_reference`, and `conftest.load_config` for the shipped configs).

Run the scripts as `python bench/NAME.py`, which puts bench/ on the path for this module.
"""

import os
import statistics
import sys
import time
from collections.abc import Callable

TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests')
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The median wall time of `repeats` calls of fn (block on any asynchronous result inside fn)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
