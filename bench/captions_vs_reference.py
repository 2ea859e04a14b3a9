"""Caption generation of OFA-Tiny: ofa-jax's `generate` against modelscope's SequenceGenerator, same converted
weights, same CPU, one run.

    .venv/bin/python bench/captions_vs_reference.py [--repeats 3] [--threads N]

Batch 16, 256 px images, beam 5, at most 16 tokens, no-repeat 3-grams, float32. The two are timed in turns
(bench/_common.interleaved); prints captions per second of each (medians) and their ratio (above 1: ofa-jax is
faster). Needs the test requirements (torch, modelscope).
"""

import argparse
import json
import os
import time

import jax
import numpy as np
from _common import interleaved  # also puts tests/ on the path for `reference`
from reference import reference_generate, tiny_reference, torch

from ofa_jax.convert import from_torch_state_dict
from ofa_jax.decode import DecodeSettings, generate
from ofa_jax.model import OFA


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag, default in (('--repeats', 3), ('--threads', os.cpu_count()), ('--batch', 16), ('--image_size', 256)):
        parser.add_argument(flag, type=int, default=default)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    reference = tiny_reference()
    config, variables = from_torch_state_dict(reference.state_dict())
    model = OFA(config)
    settings = DecodeSettings(beam_size=5, max_length=16, min_length=1, no_repeat_ngram_size=3)

    rng = np.random.default_rng(0)
    src = np.concatenate(
        [np.zeros((args.batch, 1)), rng.integers(4, 50000, (args.batch, 10)), np.full((args.batch, 1), 2)], axis=1
    ).astype(np.int64)  # "what does the image describe?"
    images = rng.uniform(-1, 1, (args.batch, args.image_size, args.image_size, 3)).astype(np.float32)

    jax_inputs = [jax.device_put(x) for x in (src.astype(np.int32), images)]

    def ours():
        jax.block_until_ready(generate(model, variables, *jax_inputs, None, settings))

    start = time.perf_counter()
    ours()
    compile_s = time.perf_counter() - start
    timings = interleaved(ours, lambda: reference_generate(reference, src, images, settings), args.repeats)

    print(
        json.dumps(
            {
                'benchmark': 'tiny captions, beam 5',
                'batch': args.batch,
                'image_size': args.image_size,
                'threads': args.threads,
                'device': jax.devices()[0].device_kind,
                'ofa_jax_captions_per_s': round(args.batch / timings['ofa_jax_s'], 2),
                'reference_captions_per_s': round(args.batch / timings['reference_s'], 2),
                **timings,
                'ofa_jax_compile_s': round(compile_s, 1),
            }
        )
    )


if __name__ == '__main__':
    main()
