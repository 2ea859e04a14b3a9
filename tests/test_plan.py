"""The planner: the train step compiled ahead of time for a target's devices, and what its program says about
memory and FLOPs (python -m ofa_jax.plan)."""

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import ROOT, load_config, small_config

from ofa_jax import plan, sharding
from ofa_jax.checkpoint import model_from_config
from ofa_jax.model import count_params


def test_a_pretraining_plan_splits_the_batch_as_the_pipeline_does():
    config = load_config('pretrain', 'tiny')
    config.batch_size = 20
    mesh = sharding.make_mesh(devices=plan.topology_devices('cpu:1'))
    batch = plan.abstract_batch(config, mesh)
    assert batch['src_tokens'].shape == (16, config.data.max_source_length)  # OFA's 16 of 20 vision-language rows
    assert batch['extra']['target_tokens'].shape == (4, 257)  # ... and 4 extra ones, long enough for 256 codes
    assert 'extra' not in plan.abstract_batch(small_config(batch_size=20), mesh)


def test_a_plan_counts_the_parameters_and_both_adam_moments_on_one_chip():
    config = small_config(model_overrides=dict(d_model=256, ffn_dim=1024))
    result = plan.plan(config, 'cpu:1')
    params = count_params(model_from_config(config).config)
    state_gib = 3 * 4 * params / 2**30  # float32 parameters, mu and nu; the donated state aliases the new one
    assert 0.99 * state_gib <= result['per_chip_gib']['arguments_and_outputs'] <= 1.1 * state_gib  # GiB rounded
    assert result['per_chip_gib']['temporaries'] > 0 and result['flops_per_step'] > 0
    assert result['fits'] is None  # a CPU's memory is the host's: no verdict


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
        assert result['chips'] == 4 and result['mesh'][mesh] == 4
        return result['per_chip_gib']['arguments_and_outputs']

    assert plan_for('fsdp') < 0.4 * plan_for('data')  # each chip holds a quarter of the state, not all of it


def test_a_tpu_topology_gives_its_chips_or_names_the_missing_compiler():
    # CI has no TPU extra (an optional one): there the error must say how to get it; with it, the chips come.
    if importlib.util.find_spec('libtpu') is None:
        with pytest.raises(ValueError, match=r"topology 'v5e:2x2'.*jax\[tpu\]"):
            plan.topology_devices('v5e:2x2')
    else:
        devices = plan.topology_devices('v5e:2x2')
        assert len(devices) == 4 and devices[0].device_kind.startswith('TPU v5')
