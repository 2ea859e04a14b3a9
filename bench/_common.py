"""What the bench scripts share: interleaved timing against the reference, a synthetic train batch, and tests/ on
the import path (the PyTorch references `reference` and `vqgan_reference`, and `conftest.load_config` for the shipped
configs).

Run the scripts as `python bench/NAME.py`, which puts bench/ on the path for this module.
"""

import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests')
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)


SPREAD_WARNING = 0.2  # a side whose repeats spread wider than this was disturbed while it ran


def interleaved(ours: Callable[[], object], reference: Callable[[], object], repeats: int) -> dict[str, Any]:
    """Times `ours` and `reference` in turns (ours, reference, ours, ...), after one untimed call of each, so that a
    load that comes and goes falls on both alike; each call must block on its result.

    Returns the median seconds of each side, their ratio (`speedup`: reference / ours, above 1 when ofa-jax is faster)
    and each side's spread over its repeats ((slowest - fastest) / median); warns on stderr when a spread exceeds
    SPREAD_WARNING, since such a ratio may be the load's rather than the code's."""
    ours(), reference()
    times: dict[str, list[float]] = {'ofa_jax': [], 'reference': []}
    for _ in range(repeats):
        for name, fn in (('ofa_jax', ours), ('reference', reference)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    spread = {name: (max(t) - min(t)) / medians[name] for name, t in times.items()}
    for name, value in spread.items():
        if value > SPREAD_WARNING:
            print(f'warning: {name} repeats spread {value:.0%} of their median: was the machine busy?', file=sys.stderr)
    return {
        'ofa_jax_s': round(medians['ofa_jax'], 4),
        'reference_s': round(medians['reference'], 4),
        'speedup': round(medians['reference'] / medians['ofa_jax'], 2),
        'spread': {name: round(value, 3) for name, value in spread.items()},
        'repeats': repeats,
    }


def synthetic_batch(batch: int, image_size: int, src_len: int, tgt_len: int, seed: int = 0) -> dict[str, Any]:
    """A train batch of random tokens (ids below OFA's 50,000 text ids) and images, every row an image-text row.

    Keys as the pipeline's, numpy arrays: src_tokens [batch, src_len], patch_images [batch, image_size, image_size,
    3] in [-1, 1], prev_output_tokens and target_tokens [batch, tgt_len] (the targets one position ahead), and the
    per-row keys the train step reads."""
    from ofa_jax.data import pipeline  # noqa: PLC0415 - after the scripts set their jax flags

    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, 50000, (batch, tgt_len + 1)).astype(np.int32)
    return {
        'src_tokens': rng.integers(4, 50000, (batch, src_len)).astype(np.int32),
        'patch_images': rng.uniform(-1, 1, (batch, image_size, image_size, 3)).astype(np.float32),
        'patch_masks': np.ones((batch,), bool),
        'prev_output_tokens': tokens[:, :-1],
        'target_tokens': tokens[:, 1:],
        'loss_weights': np.ones((batch,), np.float32),
        'code_masks': np.zeros((batch,), bool),
        'constraint_ranges': np.tile(np.array(pipeline.UNCONSTRAINED, np.int32), (batch, 1)),
        'task_ids': np.zeros((batch,), np.int32),
        'example_mask': np.ones((batch,), bool),
    }
