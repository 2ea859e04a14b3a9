"""Before renting a slice: does a training config fit, and how fast could it go? The config's train step is compiled
ahead of time for the target's devices, sharded over its mesh, and the compiled program says what each chip holds.

    python -m ofa_jax.plan --config configs/pretrain.py:large --topology v5e:8x8 [--topology v4:4x4x4] [--out FILE]
    python -m ofa_jax.plan --config configs/demo.py --topology cpu:8     # simulated host devices, no extra needed
    python -m ofa_jax.plan --config configs/pretrain.py:base --topology v5e:4x4 --sweep tiny --sweep base \
        --device_batch_sizes 8,16,32 --table fit.md                      # each config x device batch, as a table

TPU topologies (`v4:2x2x2`, `v5e:4x4`, `v5p:2x2x4`, `v6e:4x4`; `--num_slices` for several) compile on any machine
once jax's TPU extra is installed (`pip install "jax[tpu]==<this jax's version>"`; no TPU is used). Any config key
can be changed as in training (`--config.batch_size=512`, `--config.model_overrides.remat=True`). For each topology
one line: the per-chip memory (parameters and optimizer state, batch, temporaries), whether it fits the chip's
memory, the step's FLOPs and the step time at a given model-FLOPs utilization. Nothing is allocated or run. `--sweep`
plans the config file with each given argument in place of --config's (a size, or TASK,SIZE), the same overrides, at
each device batch size, and writes a Markdown table; a combination that cannot be laid out is a row naming why.
"""

import copy
import dataclasses
import functools
import importlib.util
import json
import os
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from ofa_jax import console, sharding, train
from ofa_jax.checkpoint import model_from_config
from ofa_jax.data import mixtures, pipeline
from ofa_jax.data.tasks import TASKS
from ofa_jax.model import count_params

# Memory per chip (GiB), by jax device_kind prefix, longest first where prefixes overlap.
CHIP_MEMORY_GIB = {
    'TPU v5 lite': 16,
    'TPU v5e': 16,
    'TPU v5p': 95,
    'TPU v5': 95,
    'TPU v6 lite': 32,
    'TPU v4': 32,
    'NVIDIA H200': 141,
    'NVIDIA H100': 80,
    'NVIDIA A100': 80,
}


def topology_devices(topology: str, num_slices: int = 1) -> list[jax.Device]:
    """The devices of `topology`: 'cpu:N' (the first N host devices; start the process with
    XLA_FLAGS=--xla_force_host_platform_device_count=N or more, as main() does) or a TPU topology name like 'v5e:4x4',
    abstract devices from jax's TPU compiler (jax[tpu] installed, no TPU needed)."""
    if topology.startswith('cpu:'):
        count = int(topology.split(':', 1)[1])
        devices = jax.devices('cpu')
        if len(devices) < count:
            raise ValueError(f'topology {topology}: only {len(devices)} host devices (XLA_FLAGS sets how many)')
        return devices[:count]
    from jax.experimental import topologies  # noqa: PLC0415 - only TPU targets need it

    try:
        return list(
            topologies.get_topology_desc(
                platform='tpu',
                topology_name=topology,
                chip_config_name='default',
                chips_per_host_bounds=(2, 2, 1),
                num_slices=num_slices,
            ).devices
        )
    except Exception as error:  # jax names the cause: no libtpu, an unknown topology
        raise ValueError(
            f"topology {topology!r}: {error}. TPU topologies need jax's TPU extra: "
            f'pip install "jax[tpu]=={jax.__version__}"'
        ) from error


def abstract_batch(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """The train step's global batch as shapes: config.batch_size rows of the config's lengths, split as the input
    pipeline splits it (OFA's pretraining: a fifth of the rows in an extra sub-batch of longer targets). SCST trains on
    one row per image and caption of its beam (ofa_jax.scst); the program that decodes those captions is not planned."""
    rows = config.batch_size * (TASKS['caption'].decode['beam_size'] if config.scst else 1)
    spec = train.batch_spec(config, rows)
    specs = [spec]
    if config.data.source == 'ofa_pretrain':
        rates = mixtures.OFA_PRETRAIN_RATES
        share = 1 - (rates['vl_first'] + rates['vl_second']) / sum(rates.values())
        specs = pipeline.sub_batch_specs(spec, share, config.grad_accum_steps * sharding.batch_shards(mesh))
    shard = sharding.batch_sharding(mesh)
    parts = []
    for part in specs:  # one padding row gives each array's row shape and dtype, without building the batch
        row = pipeline.to_batch([], dataclasses.replace(part, batch_size=1, with_references=False), [])
        parts.append(
            {k: jax.ShapeDtypeStruct((part.batch_size, *v.shape[1:]), v.dtype, sharding=shard) for k, v in row.items()}
        )
    return parts[0] | ({'extra': parts[1]} if len(parts) > 1 else {})


def compile_train_step(config: ml_collections.ConfigDict, devices: list[jax.Device]) -> dict[str, Any]:
    """Compiles the config's train step for `devices` from shapes alone; returns the lowered and compiled step and
    the seconds tracing/lowering and compiling took."""
    mesh = sharding.make_mesh(**config.mesh, devices=devices)
    train.validate_layout(config, mesh)
    model, optimizer = model_from_config(config), train.make_optimizer(config)
    shardings = train.state_shardings(model, optimizer, config, mesh)
    state = jax.eval_shape(functools.partial(train.initial_state, model, optimizer, config, config.data.image_size))
    state = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)
    batch = abstract_batch(config, mesh)
    step = jax.jit(  # one task: per-task metrics are a few scalars, and the batch's task ids are all 0
        functools.partial(train.train_step, model, optimizer, config, 1),
        in_shardings=(shardings, sharding.batch_sharding(mesh)),
        out_shardings=(shardings, None),
        donate_argnums=0,
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(config.logical_axis_rules):
        start = time.perf_counter()
        lowered = step.lower(state, batch)
        lowered_s = time.perf_counter() - start
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as error:  # a TPU compiler refuses a program larger than its chip
            if 'RESOURCE_EXHAUSTED' not in str(error):
                raise
            raise ValueError(f'does not fit: {str(error).splitlines()[0]}') from error
    return {
        'model': model,
        'mesh': mesh,
        'batch': batch,
        'lowered': lowered,
        'compiled': compiled,
        'trace_lower_s': lowered_s,
        'compile_s': time.perf_counter() - start - lowered_s,
    }


def plan(config: ml_collections.ConfigDict, topology: str, num_slices: int = 1, mfu: float = 0.4) -> dict[str, Any]:
    """One topology's plan: the compiled step's bytes per device and whether they fit the chip's memory, FLOPs, and
    the step time and examples per second at model-FLOPs utilization `mfu` of the chips' dense bf16 peak."""
    devices = topology_devices(topology, num_slices)
    result = compile_train_step(config, devices)
    memory = result['compiled'].memory_analysis()
    gib = 2**30
    held = memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
    total = held + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes
    kind = devices[0].device_kind
    capacity = next((v for k, v in CHIP_MEMORY_GIB.items() if kind.startswith(k)), None)
    flops = train.model_flops(config, 1, result['batch'])
    peak = next((v for k, v in train.PEAK_FLOPS.items() if kind.startswith(k)), None)
    step_s = flops / (len(devices) * peak * mfu) if peak and flops else None
    return {
        'size': config.model,
        'topology': topology if num_slices == 1 else f'{num_slices}x {topology}',
        'device_kind': kind,
        'devices': len(devices),
        'mesh': dict(result['mesh'].shape),
        'params_m': round(count_params(result['model'].config) / 1e6, 1),
        'global_batch': config.batch_size,
        'grad_accum_steps': config.grad_accum_steps,
        'argument_bytes': memory.argument_size_in_bytes,
        'output_bytes': memory.output_size_in_bytes,
        'alias_bytes': memory.alias_size_in_bytes,  # the donated state: counted once, in the arguments
        'temp_bytes': memory.temp_size_in_bytes,
        'per_device_bytes': total,
        'hbm_bytes': None if capacity is None else capacity * gib,
        'fits': None if capacity is None else total <= capacity * gib,
        'flops_per_step': flops,
        f'step_s_at_{mfu:.0%}_mfu': None if step_s is None else float(f'{step_s:.3g}'),
        f'examples_per_s_at_{mfu:.0%}_mfu': None if step_s is None else float(f'{config.batch_size / step_s:.3g}'),
        'trace_lower_s': round(result['trace_lower_s'], 1),
        'compile_seconds': round(result['compile_s'], 1),
    }


def sweep(
    configs: dict[str, ml_collections.ConfigDict],
    topologies: list[str],
    device_batch_sizes: list[int],
    num_slices: int = 1,
    mfu: float = 0.4,
) -> list[dict[str, Any]]:
    """Plans each named config at each device batch size (none given: the config's own) on each topology, a row
    each (printed as it comes); a layout that does not divide is a row with its error."""
    rows = []
    for name, config in configs.items():
        for device_batch_size in device_batch_sizes or [config.device_batch_size]:
            changed = copy.deepcopy(config)
            changed.device_batch_size = device_batch_size
            for topology in topologies:
                row = {'config': name, 'device_batch_size': device_batch_size}
                try:
                    row.update(plan(changed, topology, num_slices, mfu))
                except ValueError as error:
                    row.update(topology=topology, error=str(error))
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The sweep's rows as a Markdown table: per-device GiB of the chip's, and whether it fits."""
    lines = [
        '| config | topology | mesh | global batch | device batch | accumulation | GiB per device (of) | fits '
        '| FLOPs per step | compile s |',
        '|---|---|---|---|---|---|---|---|---|---|',
    ]
    for row in rows:
        if 'error' in row:
            error = ' '.join(row['error'].split()).replace('|', '\\|')  # one cell: no line breaks, no column bars
            lines.append(f'| {row["config"]} | {row["topology"]} | | | {row["device_batch_size"]} | {error} |')
            continue
        mesh = ' '.join(f'{axis} {n}' for axis, n in row['mesh'].items() if n > 1) or 'one device'
        held = f'{row["per_device_bytes"] / 2**30:.2f}'
        if row['hbm_bytes']:
            held += f' ({row["hbm_bytes"] / 2**30:.0f})'
        fits = {True: 'yes', False: '**no**', None: ''}[row['fits']]
        lines.append(
            f'| {row["config"]} | {row["topology"]} | {mesh} | {row["global_batch"]} | {row["device_batch_size"]} '
            f'| {row["grad_accum_steps"]} | {held} | {fits} | {row["flops_per_step"]:.3g} | {row["compile_seconds"]} |'
        )
    return '\n'.join(lines) + '\n'


def configs_to_sweep(arguments: list[str]) -> dict[str, ml_collections.ConfigDict]:
    """--config's file with each of `arguments` in place of its own, and --config's overrides applied to each."""
    flag = flags.FLAGS['config']
    path = config_flags.get_config_filename(flag).split(':', 1)[0]
    spec = importlib.util.spec_from_file_location('config_to_sweep', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    configs = {}
    for argument in arguments:
        config = module.get_config(argument)
        config.update_from_flattened_dict(config_flags.get_override_values(flag))
        configs[f'{path}:{argument}'] = config
    return configs


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    if not FLAGS.sweep and (FLAGS.device_batch_sizes or FLAGS.table):
        raise ValueError('--device_batch_sizes and --table go with --sweep')
    if FLAGS.sweep:
        device_batch_sizes = [int(n) for n in FLAGS.device_batch_sizes]
        results = sweep(configs_to_sweep(FLAGS.sweep), FLAGS.topology, device_batch_sizes, FLAGS.num_slices, FLAGS.mfu)
        table = markdown_table(results)
        if FLAGS.table:
            with open(FLAGS.table, 'w') as f:
                f.write(table)
        print(table)
    else:
        results = []
        for topology in FLAGS.topology:
            result = plan(FLAGS.config, topology, FLAGS.num_slices, FLAGS.mfu)
            results.append(result)
            print(json.dumps(result), flush=True)
    if FLAGS.out:
        with open(FLAGS.out, 'w') as f:
            json.dump(results, f, indent=2)


if __name__ == '__main__':
    config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
    flags.DEFINE_multi_string('topology', None, "Targets: 'cpu:N' or a TPU topology such as 'v5e:4x4'.")
    flags.DEFINE_integer('num_slices', 1, 'Slices of each TPU topology (multi-slice training).')
    flags.DEFINE_float('mfu', 0.4, 'Model-FLOPs utilization assumed for the step-time estimate.')
    flags.DEFINE_string('out', '', 'Also write the plans to this JSON file.')
    flags.DEFINE_multi_string('sweep', [], "Plan --config's file with each of these arguments (e.g. tiny, base).")
    flags.DEFINE_list('device_batch_sizes', [], 'With --sweep: the device batch sizes to plan each config at.')
    flags.DEFINE_string('table', '', 'With --sweep: also write the Markdown table to this file.')
    flags.mark_flags_as_required(['config', 'topology'])
    # Simulated host devices for 'cpu:N' targets must exist before jax starts its CPU backend.
    counts = [int(a.split('cpu:')[1]) for a in sys.argv if a.split('=')[-1].startswith('cpu:')]
    if counts and 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
        os.environ['XLA_FLAGS'] = (
            os.environ.get('XLA_FLAGS', '') + f' --xla_force_host_platform_device_count={max(counts)}'
        )
    console.run(main)
