"""Compile time of the pretraining train step per model size, on a simulated mesh of 8 CPU devices.

    .venv/bin/python bench/compile_time.py [--sizes tiny medium base] [--batch 16] [--fsdp 4] [--layouts all]

Uses configs/pretrain.py's settings for each size (384 px, 196 sampled patches, 80/30 tokens and the extra
sub-batch's 288/257, bf16 compute) on a (data, fsdp) mesh of 8 host devices, compiled as `python -m ofa_jax.plan`
compiles it: parameters stay abstract (nothing is allocated), so only tracing, lowering and XLA compilation are
timed. Prints one JSON line per size and layout: `unrolled`, `layers` (model_overrides.scan_layers: one encoder and one
decoder layer compiled, looped) or `all` (scan_resnet too: one ResNet block per stage after the first).
"""

import argparse
import json
import os

os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import _common  # noqa: E402, F401  (puts tests/ on the path for `conftest`)
import jax  # noqa: E402
from conftest import load_config  # noqa: E402

from ofa_jax import plan  # noqa: E402
from ofa_jax.model import count_params  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--sizes', nargs='+', default=['tiny', 'medium', 'base'])
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--fsdp', type=int, default=4)
    parser.add_argument(
        '--layouts', nargs='+', choices=('unrolled', 'layers', 'all'), default=['unrolled', 'layers', 'all']
    )
    args = parser.parse_args()
    for size, layout in [(size, layout) for size in args.sizes for layout in args.layouts]:
        config = load_config('pretrain', size)
        config.batch_size, config.device_batch_size = args.batch, 0  # one pass, not its slice's accumulation
        config.model_overrides.update(scan_layers=layout != 'unrolled', scan_resnet=layout == 'all')
        config.mesh = dict(replica=1, data=-1, fsdp=args.fsdp, tensor=1)
        compiled = plan.compile_train_step(config, jax.devices())
        print(
            json.dumps(
                {
                    'size': size,
                    'layers': layout,
                    'params_m': round(count_params(compiled['model'].config) / 1e6, 1),
                    'mesh': dict(compiled['mesh'].shape),
                    'batch': args.batch,
                    'trace_lower_s': round(compiled['trace_lower_s'], 1),
                    'compile_s': round(compiled['compile_s'], 1),
                }
            ),
            flush=True,
        )


if __name__ == '__main__':
    main()
