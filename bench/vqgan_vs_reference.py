"""OFA's VQGAN (full config: f=8, 8192 codes, ch 128) in ofa-jax (jitted) against taming's PyTorch modules, same
random weights, same CPU, one run.

    .venv/bin/python bench/vqgan_vs_reference.py [--batch 2] [--repeats 3] [--threads N]

Encoding 256 px images to argmax codes (codes/s) and decoding 32x32 code grids to pixels (images/s), float32. Prints
medians and the ratios ofa-jax / reference (above 1 means ofa-jax is faster). Needs the test requirements (torch,
taming-transformers).
"""

import argparse
import json
import os
import time

import jax
import numpy as np
from _common import median_seconds  # also puts tests/ on the path for `vqgan_reference`
from vqgan_reference import random_reference, torch

from ofa_jax import vqgan


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=os.cpu_count())
    parser.add_argument('--image_size', type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = vqgan.PRESETS['ofa']
    reference = random_reference(config)
    variables = vqgan.from_state_dict({k: v.numpy() for k, v in reference.state_dict().items()}, config)
    model = vqgan.VQGAN(config)
    encode = jax.jit(lambda v, x: model.apply(v, x, method=model.encode))
    decode = jax.jit(lambda v, c: vqgan.to_pixels(model.apply(v, c, method=model.decode)))

    images = (
        np.random.default_rng(0).uniform(-1, 1, (args.batch, args.image_size, args.image_size, 3)).astype(np.float32)
    )
    start = time.perf_counter()
    codes = np.asarray(encode(variables, images))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    decode(variables, codes).block_until_ready()
    compile_s += time.perf_counter() - start
    ours_encode = median_seconds(lambda: encode(variables, images).block_until_ready(), args.repeats)
    ours_decode = median_seconds(lambda: decode(variables, codes).block_until_ready(), args.repeats)

    reference.logits(images)  # warm-up
    theirs_encode = median_seconds(lambda: reference.logits(images).argmax(-1), args.repeats)
    theirs_decode = median_seconds(lambda: reference.decode(codes), args.repeats)

    codes_per_batch = codes.size
    print(
        json.dumps(
            {
                'benchmark': 'vqgan ofa f8-8192',
                'batch': args.batch,
                'image_size': args.image_size,
                'threads': args.threads,
                'device': jax.devices()[0].device_kind,
                'encode_codes_per_s': {
                    'ofa_jax': round(codes_per_batch / ours_encode, 1),
                    'reference': round(codes_per_batch / theirs_encode, 1),
                },
                'decode_images_per_s': {
                    'ofa_jax': round(args.batch / ours_decode, 3),
                    'reference': round(args.batch / theirs_decode, 3),
                },
                'encode_ratio': round(theirs_encode / ours_encode, 2),
                'decode_ratio': round(theirs_decode / ours_decode, 2),
                'ofa_jax_compile_s': round(compile_s, 1),
            }
        )
    )


if __name__ == '__main__':
    main()
