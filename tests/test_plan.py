"""The planner: the train step compiled ahead of time for a target's devices, and what its program says about
memory and FLOPs (python -m ofa_jax.plan)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, load_config, small_config

from ofa_jax import plan, sharding
from ofa_jax.checkpoint import model_from_config
from ofa_jax.data import tasks
from ofa_jax.model import count_params


def test_a_pretraining_plan_splits_the_batch_as_the_pipeline_does():
    config = load_config('pretrain', 'tiny')
    config.batch_size = 20
    mesh = sharding.make_mesh(devices=plan.topology_devices('cpu:1'))
    batch = plan.abstract_batch(config, mesh)
    assert batch['src_tokens'].shape == (16, config.data.max_source_length)  # OFA's 16 of 20 vision-language rows
    assert batch['extra']['target_tokens'].shape == (4, 257)  # ... and 4 extra ones, long enough for 256 codes
    assert batch['extra']['patch_images'].shape == (4, 256, 256, 3)  # at OFA's 256 pixels
    assert batch['patch_images'].shape == (16, 384, 384, 3)
    assert 'extra' not in plan.abstract_batch(small_config(batch_size=20), mesh)


def test_an_scst_plan_trains_a_row_per_caption_of_the_beam():
    config = load_config('finetune', 'caption_scst')
    config.batch_size = 4
    mesh = sharding.make_mesh(devices=plan.topology_devices('cpu:1'))
    beam = tasks.TASKS['caption'].decode['beam_size']
    assert plan.abstract_batch(config, mesh)['target_tokens'].shape == (4 * beam, config.data.max_target_length)


def test_a_plan_counts_the_parameters_and_both_adam_moments_on_one_chip():
    config = small_config(model_overrides=dict(d_model=256, ffn_dim=1024))
    result = plan.plan(config, 'cpu:1')
    params = count_params(model_from_config(config).config)
    state_gib = 3 * 4 * params / 2**30  # float32 parameters, mu and nu; the donated state aliases the new one
    held = (result['argument_bytes'] + result['output_bytes'] - result['alias_bytes']) / 2**30
    assert 0.99 * state_gib <= held <= 1.1 * state_gib
    assert result['temp_bytes'] > 0 and result['flops_per_step'] > 0
    assert result['per_device_bytes'] >= held * 2**30 + result['temp_bytes']
    assert result['fits'] is None and result['hbm_bytes'] is None  # a CPU's memory is the host's: no verdict


@pytest.mark.slow  # compiles the nano train step for two meshes of 4 simulated devices
def test_the_plan_command_shows_fsdp_dividing_the_state_over_the_chips(tmp_path):
    def plan_for(mesh):
        out = tmp_path / f'{mesh}.json'
        command = [sys.executable, '-m', 'ofa_jax.plan', '--config', 'configs/demo.py', '--topology', 'cpu:4']
        command += [f'--config.mesh.{axis}={4 if axis == mesh else 1}' for axis in ('data', 'fsdp')]
        command += ['--config.batch_size=8', f'--out={out}']
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        (result,) = json.loads(out.read_text())
        assert result['devices'] == 4 and result['mesh'][mesh] == 4
        return result['argument_bytes']

    assert plan_for('fsdp') < 0.4 * plan_for('data')  # each chip holds a quarter of the state, not all of it


def test_a_tpu_topology_gives_its_chips_or_names_the_missing_compiler():
    # CI has no TPU extra (an optional one): there the error must say how to get it; with it, the chips come.
    if importlib.util.find_spec('libtpu') is None:
        with pytest.raises(ValueError, match=r"topology 'v5e:2x2'.*jax\[tpu\]"):
            plan.topology_devices('v5e:2x2')
    else:
        devices = plan.topology_devices('v5e:2x2')
        assert len(devices) == 4 and devices[0].device_kind.startswith('TPU v5')


@pytest.mark.slow  # two TPU compiles of the nano train step: about 2 minutes on two cores
def test_the_plan_command_compiles_for_a_tpu_slice(tmp_path):
    # launch/setup_env.sh --test keeps jax's TPU compiler beside the environment; only this process loads it.
    compiler = ROOT / '.venv' / 'tpu-compiler'
    assert (compiler / 'libtpu').is_dir(), f'{compiler} is missing: run bash launch/setup_env.sh --test'
    out = tmp_path / 'plan.json'
    command = [sys.executable, '-m', 'ofa_jax.plan', '--config', 'configs/demo.py', '--topology', 'v5e:2x2']
    command += ['--sweep', 'pretrain', '--device_batch_sizes', '8,16384', '--config.batch_size=65536']
    command += ['--config.mesh.fsdp=4', f'--out={out}']
    env = {**os.environ, 'PYTHONPATH': str(compiler), 'JAX_PLATFORMS': 'cpu', 'ALLOW_MULTIPLE_LIBTPU_LOAD': '1'}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    result, too_large = json.loads(out.read_text())
    assert result['devices'] == 4 and result['device_kind'].startswith('TPU v5') and result['mesh']['fsdp'] == 4
    assert result['hbm_bytes'] == 16 * 2**30 and result['fits'] is True and result['grad_accum_steps'] == 2048
    # fsdp divides the float32 parameters and both Adam moments over the chips: each holds more than a quarter of
    # them (the nano model's smallest arrays stay whole on each) and its quarter of the batch.
    state = 3 * 4 * count_params(model_from_config(load_config('demo')).config)
    held = result['argument_bytes'] + result['output_bytes'] - result['alias_bytes']
    assert held > state / 4 and 0 < result['temp_bytes']
    assert held + result['temp_bytes'] <= result['per_device_bytes'] < 16 * 2**30
    assert result['flops_per_step'] > 0 and result['compile_seconds'] > 0
    # 16,384 rows a chip in one pass: the compiler refuses the program, and the plan says so.
    assert too_large['device_batch_size'] == 16384 and too_large['error'].startswith('does not fit: RESOURCE_EXHAUSTED')


@pytest.mark.slow  # compiles the nano train step three times
def test_a_sweep_plans_each_config_at_each_device_batch_and_tabulates_them(tmp_path):
    table = tmp_path / 'fit.md'
    command = [sys.executable, '-m', 'ofa_jax.plan', '--config', 'configs/demo.py', '--topology', 'cpu:2']
    command += ['--sweep', 'pretrain', '--sweep', 'text_to_image', '--device_batch_sizes', '8,3', f'--table={table}']
    command += ['--config.batch_size=16', '--config.mesh.data=2', f'--out={tmp_path / "fit.json"}']
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / 'fit.json').read_text())
    assert [(r['config'], r['device_batch_size']) for r in rows] == [
        ('configs/demo.py:pretrain', 8),
        ('configs/demo.py:pretrain', 3),
        ('configs/demo.py:text_to_image', 8),
        ('configs/demo.py:text_to_image', 3),
    ]
    planned = [r for r in rows if r['device_batch_size'] == 8]
    assert all(r['global_batch'] == 16 and r['grad_accum_steps'] == 1 and r['devices'] == 2 for r in planned)
    assert planned[0]['flops_per_step'] != planned[1]['flops_per_step']  # two different models
    assert all('multiple of device_batch_size 3' in r['error'] for r in rows if r['device_batch_size'] == 3)
    lines = table.read_text().splitlines()
    assert len(lines) == 2 + 4 and lines[2].startswith('| configs/demo.py:pretrain | cpu:2 | data 2 | 16 | 8 | 1 |')
