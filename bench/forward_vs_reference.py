"""Forward pass of OFA-Tiny in ofa-jax (jitted) against modelscope's PyTorch OFA, same weights, same CPU, one run.

    .venv/bin/python bench/forward_vs_reference.py [--repeats 10] [--threads 2]

Batch 8, 256 px images, 64 source and 32 target tokens, float32, eval mode. Times the two in turns
(bench/_common.interleaved) and prints the medians and their ratio (reference / ofa-jax: above 1 means ofa-jax is
faster). Needs the test requirements (torch, modelscope).
"""

import argparse
import json
import os
import time

import jax
import numpy as np
from _common import interleaved  # also puts tests/ on the path for `reference`
from reference import tiny_reference, torch

from ofa_jax.convert import from_torch_state_dict
from ofa_jax.model import OFA


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--threads', type=int, default=os.cpu_count())
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--image_size', type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    reference = tiny_reference()
    config, variables = from_torch_state_dict(reference.state_dict())
    model = OFA(config)

    rng = np.random.default_rng(0)
    src = rng.integers(4, 50000, (args.batch, 64)).astype(np.int64)
    tgt = rng.integers(4, 50000, (args.batch, 32)).astype(np.int64)
    images = rng.uniform(-1, 1, (args.batch, args.image_size, args.image_size, 3)).astype(np.float32)
    masks = np.ones((args.batch,), bool)

    forward = jax.jit(model.apply)
    jax_inputs = [jax.device_put(x) for x in (src.astype(np.int32), images, masks, tgt.astype(np.int32))]
    start = time.perf_counter()
    forward(variables, *jax_inputs).block_until_ready()
    compile_s = time.perf_counter() - start
    torch_inputs = dict(
        input_ids=torch.from_numpy(src),
        patch_images=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
        patch_masks=torch.from_numpy(masks),
        decoder_input_ids=torch.from_numpy(tgt),
    )
    with torch.no_grad():
        timings = interleaved(
            lambda: forward(variables, *jax_inputs).block_until_ready(), lambda: reference(**torch_inputs), args.repeats
        )

    print(
        json.dumps(
            {
                'benchmark': 'tiny forward',
                'batch': args.batch,
                'image_size': args.image_size,
                'threads': args.threads,
                'device': jax.devices()[0].device_kind,
                **timings,
                'ofa_jax_compile_s': round(compile_s, 1),
            }
        )
    )


if __name__ == '__main__':
    main()
