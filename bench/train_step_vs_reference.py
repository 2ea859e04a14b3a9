"""Train step of OFA-Tiny in ofa-jax against modelscope's PyTorch OFA on the same CPU, in one run.

    .venv/bin/python bench/train_step_vs_reference.py [--repeats 5] [--threads 2]

Batch 8, 256 px, 64 source and 32 target tokens, AdamW, float32, dropout 0.1 in both. Times the two in turns
(bench/_common.interleaved) and prints the median seconds per step, the throughput ratio (reference time / ofa-jax
time: above 1 means ofa-jax is faster) and ofa-jax's model-FLOPs utilization of the measured matmul peak. Needs the
test requirements (torch, modelscope).
"""

import argparse
import functools
import json
import os
import time

import jax
import numpy as np
from _common import interleaved, synthetic_batch  # also puts tests/ on the path for `reference` and `conftest`
from conftest import load_config
from reference import tiny_reference, torch

from ofa_jax import train
from ofa_jax.model import OFA, model_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch, image_size, src_len, tgt_len = 8, 256, 64, 32
    rows = synthetic_batch(batch, image_size, src_len, tgt_len)

    config = load_config('demo')
    config.model, config.model_overrides = 'tiny', dict(dropout=0.1)
    model = OFA(model_config('tiny', dropout=0.1))
    optimizer = train.make_optimizer(config)
    state = jax.jit(functools.partial(train.initial_state, model, optimizer, config, image_size))()
    step = jax.jit(functools.partial(train.train_step, model, optimizer, config, 1), donate_argnums=0)
    jax_batch = jax.device_put(rows)
    start = time.perf_counter()
    lowered = step.lower(state, jax_batch)
    state, metrics = lowered.compile()(state, jax_batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start

    def jax_step():
        nonlocal state
        state, metrics = step(state, jax_batch)
        jax.block_until_ready(metrics)

    reference = tiny_reference(dropout=0.1).train()
    torch_optimizer = torch.optim.AdamW(
        reference.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01
    )
    inputs = dict(
        input_ids=torch.from_numpy(rows['src_tokens'].astype(np.int64)),
        patch_images=torch.from_numpy(rows['patch_images'].transpose(0, 3, 1, 2).copy()),
        patch_masks=torch.ones(batch, dtype=torch.bool),
        decoder_input_ids=torch.from_numpy(rows['prev_output_tokens'].astype(np.int64)),
    )
    targets = torch.from_numpy(rows['target_tokens'].astype(np.int64))

    def torch_step():
        torch_optimizer.zero_grad()
        logits = reference(**inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        torch_optimizer.step()

    timings = interleaved(jax_step, torch_step, args.repeats)
    flops = train.flops_of(lowered)
    print(
        json.dumps(
            {
                'benchmark': 'tiny train step',
                'batch': batch,
                'image_size': image_size,
                'tokens': f'{src_len}+{tgt_len}',
                'threads': args.threads,
                'device': jax.devices()[0].device_kind,
                **timings,
                'ofa_jax_compile_s': round(compile_s, 1),
                'flops_per_step': flops,
                # Of the peak a large float32 matmul reaches on this machine (train.peak_flops_per_device).
                'mfu': round(flops / timings['ofa_jax_s'] / train.peak_flops_per_device(), 3),
            }
        )
    )


if __name__ == '__main__':
    main()
