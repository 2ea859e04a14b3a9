"""The GPU benchmark: what one NVIDIA GPU does with ofa-jax, in about 10 minutes, written to one JSON file.

    bash bench/gpu.sh [--dry-run] [--out bench/gpu.json] [--sizes tiny base large]

In order, each step recorded in the JSON (an error is recorded and the next step runs):
1. the devices: jax must see a GPU (else it stops, naming the jax it found);
2. the GPU-relevant tests (model, decoding, accumulated train steps), float32 matmuls at full precision so the
   tolerances hold;
3. per size, the train step in bfloat16 at 480 px (batch 16, 64+32 tokens, AdamW): compile seconds, median step
   seconds, examples and tokens per second, MFU (the FLOPs XLA counts in the step over the chip's dense bf16 peak),
   peak device memory; attention through cuDNN's fused kernel, else XLA's (the reason recorded);
4. decoding: captions per second of the base model as OFA's caption evaluation decodes (beam 5, at most 17
   tokens, no repeated trigram), batch 16, 480 px.
Each step is skipped (and says so) once the time budget is spent. --dry-run runs every step on whatever jax has
(the CPU here) at toy sizes and collects the tests without running them: what CI checks.
"""

import argparse
import datetime
import functools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
import traceback

import jax
from _common import synthetic_batch  # also puts tests/ on the path for `conftest`
from conftest import load_config

from ofa_jax import train
from ofa_jax.data import tasks
from ofa_jax.decode import DecodeSettings, generate
from ofa_jax.model import OFA, init_variables, model_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
TESTS = ('tests/test_model.py', 'tests/test_decode.py', 'tests/test_train.py::test_accumulation_equals_the_large_batch')
BUDGET_S = 540  # of the 10 minutes, the rest for starting and the tests' own overhead


def memory_gib(device: jax.Device) -> float | None:
    stats = device.memory_stats() or {}
    return round(stats['peak_bytes_in_use'] / 2**30, 2) if 'peak_bytes_in_use' in stats else None


def run_tests(dry_run: bool) -> dict:
    command = [sys.executable, '-m', 'pytest', '-q', '-x', '-p', 'no:cacheprovider', *TESTS]
    if dry_run:
        command.append('--collect-only')
    env = {**os.environ, 'JAX_DEFAULT_MATMUL_PRECISION': 'highest'}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    summary = (done.stdout.strip().splitlines() or [''])[-1]
    return {'command': ' '.join(command[2:]), 'returncode': done.returncode, 'summary': summary}


def time_train_step(size: str, batch: int, image_size: int, steps: int) -> dict:
    """One size's train step in bf16, attention by cuDNN where it compiles, else by XLA."""
    src_len, tgt_len = 64, 32
    config = train_config()
    rows = jax.device_put(synthetic_batch(batch, image_size, src_len, tgt_len))
    record, errors = {'size': size, 'batch': batch, 'image_size': image_size, 'tokens': f'{src_len}+{tgt_len}'}, {}
    for attention in ('cudnn', 'xla'):
        model = OFA(model_config(size, dtype='bfloat16', attention=attention, attention_dropout=0.0))
        optimizer = train.make_optimizer(config)
        try:
            state = jax.jit(functools.partial(train.initial_state, model, optimizer, config, image_size))()
            step = jax.jit(functools.partial(train.train_step, model, optimizer, config, 1), donate_argnums=0)
            start = time.perf_counter()
            lowered = step.lower(state, rows)
            compiled = lowered.compile()
        except Exception as error:  # noqa: BLE001 - cuDNN refuses some shapes and backends: fall back, say why
            errors[attention] = f'{type(error).__name__}: {str(error)[:300]}'
            continue
        compile_s = time.perf_counter() - start
        times = []
        for _ in range(steps + 1):  # the first call also moves the state into place
            begin = time.perf_counter()
            state, metrics = compiled(state, rows)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - begin)
        seconds, flops = statistics.median(times[1:]), train.flops_of(lowered)
        memory = compiled.memory_analysis()
        return record | {
            'attention': attention,
            'attention_errors': errors,
            'compile_s': round(compile_s, 1),
            'step_s': round(seconds, 4),
            'examples_per_s': round(batch / seconds, 1),
            'tokens_per_s': round(batch * (src_len + (image_size // 16) ** 2 + tgt_len) / seconds),
            'flops_per_step': flops,
            'mfu': round(flops / seconds / train.peak_flops_per_device(), 3),
            'peak_memory_gib': memory_gib(jax.devices()[0]),
            'temp_memory_gib': round(memory.temp_size_in_bytes / 2**30, 2) if memory else None,
        }
    return record | {'attention_errors': errors, 'error': 'no attention implementation compiled'}


def train_config():
    """The trainer's defaults (AdamW with OFA's betas, clipping, label smoothing) from the demo config."""
    config = load_config('demo')
    config.model_overrides = {}
    return config


def time_captions(size: str, batch: int, image_size: int, repeats: int) -> dict:
    config = model_config(size, dtype='bfloat16', dropout=0.0)
    model, variables = OFA(config), init_variables(config, jax.random.key(0), image_size)
    rows = synthetic_batch(batch, image_size, 12, 1)
    src = rows['src_tokens'].copy()
    src[:, 0], src[:, -1] = 0, 2
    inputs = jax.device_put((src, rows['patch_images']))
    settings = DecodeSettings(**tasks.TASKS['caption'].decode)  # OFA's caption evaluation: beam 5, no-repeat 3

    def captions():
        jax.block_until_ready(generate(model, variables, *inputs, None, settings))

    start = time.perf_counter()
    captions()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        captions()
        times.append(time.perf_counter() - begin)
    seconds = statistics.median(times)
    return {
        'size': size,
        'batch': batch,
        'image_size': image_size,
        'beam': settings.beam_size,
        'compile_s': round(compile_s, 1),
        'captions_per_s': round(batch / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dry-run', action='store_true', help='every step at toy sizes on whatever jax has')
    parser.add_argument('--out', default=str(ROOT / 'bench' / 'gpu.json'))
    parser.add_argument('--sizes', nargs='+', default=['tiny', 'base', 'large'])
    args = parser.parse_args()
    started = time.perf_counter()
    device = jax.devices()[0]
    if device.platform != 'gpu' and not args.dry_run:
        raise SystemExit(
            f'jax {jax.__version__} sees no GPU (its devices: {jax.devices()}): install its CUDA build, '
            f'pip install "jax[cuda12]=={jax.__version__}", or run with --dry-run'
        )
    sizes, batch, image_size, steps = (['nano'], 2, 64, 2) if args.dry_run else (args.sizes, 16, 480, 10)
    report = {
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'dry_run': args.dry_run,
        'jax': jax.__version__,
        'device': device.device_kind,
        'devices': jax.device_count(),
        'peak_flops_per_device': train.peak_flops_per_device(),
    }

    def step(name: str, fn, *fn_args):
        if time.perf_counter() - started > BUDGET_S:
            result = {'skipped': f'past the {BUDGET_S} s budget'}
        else:
            try:
                result = fn(*fn_args)
            except Exception:  # noqa: BLE001 - record it and go on: one failure must not cost the other figures
                result = {'error': traceback.format_exc(limit=3)[-2000:]}
        print(json.dumps({name: result}), flush=True)
        return result

    report['tests'] = step('tests', run_tests, args.dry_run)
    report['train_step'] = [step('train_step', time_train_step, size, batch, image_size, steps) for size in sizes]
    report['captions'] = step('captions', time_captions, 'nano' if args.dry_run else 'base', batch, image_size, 3)
    report['seconds'] = round(time.perf_counter() - started, 1)
    pathlib.Path(args.out).write_text(json.dumps(report, indent=2) + '\n')
    print(f'wrote {args.out} in {report["seconds"]} s')


if __name__ == '__main__':
    main()
