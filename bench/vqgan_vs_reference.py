"""OFA's VQGAN (full config: f=8, 8192 codes, ch 128) in ofa-jax (jitted) against taming's PyTorch modules, same
random weights, same CPU, one run.

    .venv/bin/python bench/vqgan_vs_reference.py [--batch 2] [--repeats 3] [--threads N]

Encoding 256 px images to argmax codes (codes/s) and decoding 32x32 code grids to pixels (images/s), float32. Times
each side in turns with the reference's (bench/_common.interleaved) and prints medians and the ratios (reference /
ofa-jax: above 1 means ofa-jax is faster). Needs the test requirements (torch, taming-transformers).
"""

import argparse
import json
import os
import time

import jax
import numpy as np
from _common import interleaved  # also puts tests/ on the path for `vqgan_reference`
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
    encoding = interleaved(
        lambda: encode(variables, images).block_until_ready(), lambda: reference.logits(images).argmax(-1), args.repeats
    )
    decoding = interleaved(
        lambda: decode(variables, codes).block_until_ready(), lambda: reference.decode(codes), args.repeats
    )

    print(
        json.dumps(
            {
                'benchmark': 'vqgan ofa f8-8192',
                'batch': args.batch,
                'image_size': args.image_size,
                'threads': args.threads,
                'device': jax.devices()[0].device_kind,
                'encode': {**encoding, 'codes_per_s': round(codes.size / encoding['ofa_jax_s'], 1)},
                'decode': {**decoding, 'images_per_s': round(args.batch / decoding['ofa_jax_s'], 3)},
                'speedup': min(encoding['speedup'], decoding['speedup']),
                'ofa_jax_compile_s': round(compile_s, 1),
            }
        )
    )


if __name__ == '__main__':
    main()
