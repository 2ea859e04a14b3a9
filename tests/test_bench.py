"""The benchmark scripts' own logic: interleaved timing."""

import sys
import time

from conftest import ROOT

sys.path.insert(0, str(ROOT / 'bench'))
from _common import interleaved  # noqa: E402


def test_interleaved_timing_alternates_the_sides_and_flags_a_wide_spread(capsys):
    calls, delays = [], iter([0.0, 0.01, 0.03, 0.01])

    def side(name):
        def call():
            calls.append(name)
            time.sleep(next(delays) if name == 'ours' else 0.002)

        return call

    timings = interleaved(side('ours'), side('reference'), repeats=3)
    assert calls == ['ours', 'reference'] * 4  # one untimed call of each, then in turns
    assert timings['repeats'] == 3 and timings['ofa_jax_s'] >= 0.01
    assert timings['speedup'] == round(timings['reference_s'] / timings['ofa_jax_s'], 2)
    assert timings['spread']['ofa_jax'] > 0.2
    assert 'warning: ofa_jax repeats spread' in capsys.readouterr().err
