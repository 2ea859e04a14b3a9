"""Compile time of the pretraining train step per model size, on a simulated mesh of 8 CPU devices.

    .venv/bin/python bench/compile_time.py [--sizes tiny medium base] [--batch 16] [--fsdp 4]

Uses configs/pretrain.py's settings for each size (384 px, 196 sampled patches, 80/30 tokens, bf16 compute) on a
(data, fsdp) mesh of 8 host devices; parameters stay abstract (nothing is allocated), so only tracing, lowering and
XLA compilation are timed. Prints one JSON line per size.
"""

import argparse
import functools
import json
import os
import time

os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import _common  # noqa: E402, F401  (puts tests/ on the path for `conftest`)
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
from conftest import load_config  # noqa: E402

from ofa_jax import sharding, train  # noqa: E402
from ofa_jax.checkpoint import model_from_config  # noqa: E402
from ofa_jax.data import pipeline  # noqa: E402
from ofa_jax.model import count_params  # noqa: E402


def abstract_batch(config, batch: int, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The train step's batch as the input pipeline builds it (an all-padding one), shapes and dtypes only."""
    data = config.data
    spec = pipeline.BatchSpec(batch, data.image_size, data.max_source_length, data.max_target_length)
    shard = sharding.batch_sharding(mesh)
    padding = pipeline.to_batch([], spec, [])
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shard) for k, v in padding.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--sizes', nargs='+', default=['tiny', 'medium', 'base'])
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--fsdp', type=int, default=4)
    args = parser.parse_args()
    for size in args.sizes:
        config = load_config('pretrain', size)
        config.batch_size = args.batch
        config.mesh = dict(replica=1, data=-1, fsdp=args.fsdp, tensor=1)
        mesh = sharding.make_mesh(**config.mesh)
        model = model_from_config(config)
        optimizer = train.make_optimizer(config)
        shardings = train.state_shardings(model, optimizer, config, mesh)
        state = jax.eval_shape(functools.partial(train.initial_state, model, optimizer, config, config.data.image_size))
        state = jax.tree_util.tree_map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings
        )
        step = jax.jit(
            functools.partial(train.train_step, model, optimizer, config, 5),
            in_shardings=(shardings, sharding.batch_sharding(mesh)),
            out_shardings=(shardings, None),
            donate_argnums=0,
        )
        with jax.set_mesh(mesh), nn.logical_axis_rules(config.logical_axis_rules):
            start = time.perf_counter()
            lowered = step.lower(state, abstract_batch(config, args.batch, mesh))
            lowered_s = time.perf_counter() - start
            start = time.perf_counter()
            lowered.compile()
            compile_s = time.perf_counter() - start
        print(
            json.dumps(
                {
                    'size': size,
                    'params_m': round(count_params(model.config) / 1e6, 1),
                    'mesh': dict(mesh.shape),
                    'batch': args.batch,
                    'trace_lower_s': round(lowered_s, 1),
                    'compile_s': round(compile_s, 1),
                }
            ),
            flush=True,
        )


if __name__ == '__main__':
    main()
