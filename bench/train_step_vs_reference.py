"""Train step of OFA-Tiny in ofa-jax against modelscope's PyTorch OFA on the same CPU, in one run.

    .venv/bin/python bench/train_step_vs_reference.py [--repeats 5] [--threads 2]

Batch 8, 256 px, 64 source and 32 target tokens, AdamW, float32, dropout 0.1 in both. Prints median seconds per step
and the throughput ratio (reference time / ofa-jax time: above 1 means ofa-jax is faster). Needs the test
requirements (torch, modelscope).
"""

import argparse
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import median_seconds  # also puts tests/ on the path for `reference` and `conftest`
from conftest import load_config
from reference import tiny_reference, torch

from ofa_jax import train
from ofa_jax.data import pipeline
from ofa_jax.model import OFA, model_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch, image_size, src_len, tgt_len = 8, 256, 64, 32
    rng = np.random.default_rng(0)
    src = rng.integers(4, 50000, (batch, src_len))
    tgt = rng.integers(4, 50000, (batch, tgt_len + 1))
    images = rng.uniform(-1, 1, (batch, image_size, image_size, 3)).astype(np.float32)

    config = load_config('demo')
    config.model, config.model_overrides = 'tiny', dict(dropout=0.1)
    model = OFA(model_config('tiny', dropout=0.1))
    optimizer = train.make_optimizer(config)
    state = jax.jit(functools.partial(train.initial_state, model, optimizer, config, image_size))()
    step = jax.jit(functools.partial(train.train_step, model, optimizer, config, 1), donate_argnums=0)
    jax_batch = {
        'src_tokens': jnp.asarray(src, jnp.int32),
        'patch_images': jnp.asarray(images),
        'patch_masks': jnp.ones((batch,), bool),
        'prev_output_tokens': jnp.asarray(tgt[:, :-1], jnp.int32),
        'target_tokens': jnp.asarray(tgt[:, 1:], jnp.int32),
        'loss_weights': jnp.ones((batch,)),
        'code_masks': jnp.zeros((batch,), bool),
        'constraint_ranges': jnp.tile(jnp.array(pipeline.UNCONSTRAINED, jnp.int32), (batch, 1)),
        'task_ids': jnp.zeros((batch,), jnp.int32),
        'example_mask': jnp.ones((batch,), bool),
    }
    start = time.perf_counter()
    state, metrics = step(state, jax_batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start

    def jax_step():
        nonlocal state
        state, metrics = step(state, jax_batch)
        jax.block_until_ready(metrics)

    ours = median_seconds(jax_step, args.repeats)

    reference = tiny_reference(dropout=0.1).train()
    torch_optimizer = torch.optim.AdamW(
        reference.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01
    )
    inputs = dict(
        input_ids=torch.from_numpy(src),
        patch_images=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
        patch_masks=torch.ones(batch, dtype=torch.bool),
        decoder_input_ids=torch.from_numpy(tgt[:, :-1]),
    )
    targets = torch.from_numpy(tgt[:, 1:])

    def torch_step():
        torch_optimizer.zero_grad()
        logits = reference(**inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        torch_optimizer.step()

    torch_step()  # warm-up
    theirs = median_seconds(torch_step, args.repeats)
    print(
        json.dumps(
            {
                'benchmark': 'tiny train step',
                'batch': batch,
                'image_size': image_size,
                'threads': args.threads,
                'ofa_jax_s': round(ours, 3),
                'reference_s': round(theirs, 3),
                'speedup': round(theirs / ours, 2),
                'ofa_jax_compile_s': round(compile_s, 1),
            }
        )
    )


if __name__ == '__main__':
    main()
