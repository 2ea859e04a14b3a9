"""Model-size ablations (ofa_jax.ablate): budgets, the results table and plots, and a sweep that survives a kill."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, load_config

from ofa_jax import ablate, train

# The CPU sweep shrunk: 32-pixel scenes, batch 8, a few steps and examples.
SMALL = {
    'data.image_size': 32,
    'model_overrides.code_image_size': 16,
    'data.world_size': 200,
    'data.max_source_length': 24,
    'data.max_target_length': 16,
    'batch_size': 8,
    'log_every': 1,
    'checkpoint_every': 2,
    'warmup_steps': 1,
    'warmup_ratio': 0.0,
    'ablation.steps': 4,
    'ablation.eval_examples': 8,
    'ablation.validation_batches': 1,
}


def small_ablation():
    config = load_config('ablate', 'cpu')
    config.update_from_flattened_dict(SMALL)
    return config


def test_sizes_differ_in_the_model_alone():
    config = small_ablation()
    nano, micro = ablate.size_config(config, 'nano', 7), ablate.size_config(config, 'micro', 7)
    assert nano.total_steps == 7 and nano.model == 'nano' and micro.model == 'micro'
    micro.model = 'nano'
    assert micro.to_dict() == nano.to_dict()


def test_budgets_give_steps():
    config = small_ablation()
    assert ablate.steps_of_budget(config, 'nano') == 4
    config.ablation.budget, config.ablation.tokens = 'tokens', 10_000
    per_step = ablate.tokens_per_step(ablate.size_config(config, 'nano', 1))
    assert ablate.steps_of_budget(config, 'nano') == int(np.ceil(10_000 / per_step))
    # A FLOPs budget buys a smaller model more steps.
    config.ablation.budget, config.ablation.flops = 'flops', 1e12
    nano, micro = ablate.steps_of_budget(config, 'nano'), ablate.steps_of_budget(config, 'micro')
    assert nano > micro > 1
    assert nano == int(np.ceil(1e12 / train.train_step_flops(ablate.size_config(config, 'nano', 1))))
    config.ablation.budget = 'hours'
    with pytest.raises(ValueError, match='ablation.budget'):
        ablate.steps_of_budget(config, 'nano')


def test_power_law_fit():
    params = [1e6, 2e6, 4e6, 8e6]
    a, b = ablate.fit_power_law(params, [3.0 * p**-0.25 for p in params])
    assert a == pytest.approx(3.0) and b == pytest.approx(-0.25)
    assert ablate.fit_power_law([1e6, 2e6], [0.0, 0.0]) is None


def test_results_table_and_plots(tmp_path):
    rows, logs = [], {}
    for size, params in (('nano', 1_500_000), ('micro', 2_500_000), ('mini', 4_500_000)):
        loss = 10 * params**-0.1
        rows.append(
            {
                'size': size,
                'parameters': params,
                'flops_per_step': params * 1e3,
                'steps': 10,
                'tokens_seen': 5000,
                'train_seconds': 3.0,
                'train_loss': loss,
                'validation_loss': loss * 1.1,
                'vqa_accuracy': params / 1e7,
            }
        )
        logs[size] = [{'step': s, 'loss': 5.0 / s, 'flops_per_step': params * 1e3} for s in range(1, 11)]
    exponents = ablate.write_results(str(tmp_path), rows, logs)
    assert exponents['train_loss'] == pytest.approx(-0.1) and exponents['vqa_accuracy'] == pytest.approx(1.0)
    with open(tmp_path / 'results.csv') as f:
        table = list(csv.DictReader(f))
    assert [r['size'] for r in table] == ['nano', 'micro', 'mini']
    assert json.loads((tmp_path / 'results.json').read_text())['results'] == rows
    assert (tmp_path / 'results.md').read_text().count('\n') == 5  # header, rule, three sizes
    for plot in ('curves.png', 'scaling.png'):
        assert (tmp_path / plot).read_bytes()[:4] == b'\x89PNG' and (tmp_path / plot).stat().st_size > 10_000


def test_collect_gathers_every_size_directory(tmp_path):
    for size, params in (('mini', 4_500_000), ('nano', 1_500_000)):
        (tmp_path / size).mkdir()
        row = {'size': size, 'parameters': params, 'steps': 3, 'train_loss': 2.0, 'vqa_accuracy': 0.5}
        (tmp_path / size / ablate.RESULT_FILE).write_text(json.dumps(row))
        (tmp_path / size / 'metrics.jsonl').write_text(json.dumps({'step': 3, 'loss': 2.0}) + '\n')
    (tmp_path / 'unrelated').mkdir()
    assert [r['size'] for r in ablate.collect(str(tmp_path))] == ['nano', 'mini']  # by parameters
    assert [r['size'] for r in json.loads((tmp_path / 'results.json').read_text())['results']] == ['nano', 'mini']
    with pytest.raises(ValueError, match='nothing to collect'):
        ablate.collect(str(tmp_path / 'unrelated'))


def test_emit_prints_one_job_per_size():
    config = small_ablation()
    commands = ablate.emit(config, 'configs/ablate.py', ['--config.batch_size=8'], 'gs://bucket/ablate', 'slurm')
    assert len(commands) == 3
    assert commands[1] == (
        'sbatch --nodes=1 --ntasks-per-node=8 --gpus-per-node=8 launch/slurm.sh configs/ablate.py '
        'gs://bucket/ablate/micro --config.model=micro '
        '--config.total_steps=4 --config.epochs=0 --config.batch_size=8'
    )
    with pytest.raises(ValueError, match='--emit'):
        ablate.emit(config, 'configs/ablate.py', [], 'dir', 'kubernetes')


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_retraining_finished_sizes(tmp_path):
    command = [
        sys.executable,
        '-m',
        'ofa_jax.ablate',
        '--config',
        'configs/ablate.py',
        f'--workdir={tmp_path}',
        '--sizes=nano,micro',
        *(f'--config.{k}={v}' for k, v in SMALL.items()),
    ]
    log = tmp_path / 'first.log'
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open('w'))
    finished = tmp_path / 'nano' / ablate.RESULT_FILE
    deadline = time.monotonic() + 900
    while not finished.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert finished.exists(), log.read_text()[-3000:]
    first.send_signal(signal.SIGKILL)  # while micro trains
    first.wait()
    kept = {path: os.stat(tmp_path / 'nano' / path).st_mtime_ns for path in (ablate.RESULT_FILE, 'metrics.jsonl')}

    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert 'ablation: nano' not in second.stdout  # finished: not trained again
    assert {path: os.stat(tmp_path / 'nano' / path).st_mtime_ns for path in kept} == kept
    results = json.loads((tmp_path / 'results.json').read_text())['results']
    assert [r['size'] for r in results] == ['nano', 'micro']
    assert all(r['steps'] == 4 and r['validation_loss'] > 0 and 'vqa_accuracy' in r for r in results)
    for plot in ('curves.png', 'scaling.png'):
        assert (tmp_path / plot).stat().st_size > 10_000

    # collect DIR scores a size from what its run saved, as the sweep scored it.
    (tmp_path / 'micro' / ablate.RESULT_FILE).unlink()
    (tmp_path / 'results.json').unlink()
    assert ablate.collect(str(tmp_path)) == results
    assert json.loads((tmp_path / 'results.json').read_text())['results'] == results
