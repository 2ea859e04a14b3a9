"""The benchmark scripts' own logic: interleaved timing, and the GPU benchmark's dry run (what keeps it ready for a
machine with a GPU)."""

import json
import subprocess
import sys
import time

import pytest
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
    assert timings['speedup'] == pytest.approx(timings['reference_s'] / timings['ofa_jax_s'], rel=0.1)
    assert timings['speedup'] < 1  # ours sleeps longer
    assert timings['spread']['ofa_jax'] > 0.2
    assert 'warning: ofa_jax repeats spread' in capsys.readouterr().err


@pytest.mark.slow  # compiles the nano train step with OFA's 59,457-wide output layer (about 90 s)
def test_the_gpu_benchmark_runs_dry_on_a_cpu(tmp_path):
    out = tmp_path / 'gpu.json'
    done = subprocess.run(
        ['bash', 'bench/gpu.sh', '--dry-run', '--out', str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report['dry_run'] and report['tests']['returncode'] == 0
    (step,) = report['train_step']
    assert 'error' not in step, step
    assert step['attention'] == 'xla' and 'cudnn' in step['attention_errors']  # no cuDNN on a CPU: the fallback
    assert step['step_s'] > 0 and 0 < step['mfu'] < 1 and step['flops_per_step'] > 0
    assert report['captions']['captions_per_s'] > 0


def test_the_gpu_benchmark_refuses_a_machine_without_a_gpu():
    done = subprocess.run(['bash', 'bench/gpu.sh'], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and 'sees no GPU' in done.stderr
