"""A whole text-to-image query of OFA-Tiny: 1,024 image codes sampled from a caption, then drawn by OFA's VQGAN, in
ofa-jax against modelscope's PyTorch OFA and taming's VQGAN decoder, same random weights, same CPU, one run.

    .venv/bin/python bench/text_to_image_vs_reference.py [--samples 1] [--repeats 1] [--threads N]
        [--code_image_size 256]

Both sample like OFA's image generation: top-k 256 within the 8,192 code tokens, exactly (code image size / 8)^2
codes (32x32 for OFA's 256 px), `--samples` images per caption; float32. Times the two in turns
(bench/_common.interleaved) and prints the median seconds per query (codes and pixels) and the ratio (above 1:
ofa-jax is faster). The reference takes minutes per 256 px query on a CPU (its cost grows with the square of the code
count), so it runs `--repeats` times only, after one untimed query of each. Needs the test requirements (torch,
modelscope, taming-transformers).
"""

import argparse
import json
import os
import time

import jax
import numpy as np
from _common import interleaved  # also puts tests/ on the path for `reference`
from reference import IdsOnlyTokenizer, SequenceGenerator, tiny_reference, torch
from vqgan_reference import random_reference

from ofa_jax import vqgan
from ofa_jax.convert import from_torch_state_dict
from ofa_jax.data.tasks import TEXT_TO_IMAGE
from ofa_jax.data.vocab import default_vocabulary
from ofa_jax.decode import sample_codes
from ofa_jax.model import OFA

TOP_K = 256
CAPTION = 'a red double decker bus driving down a city street'


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag, default in (
        ('--repeats', 1),
        ('--threads', os.cpu_count()),
        ('--samples', 1),
        ('--code_image_size', 256),
    ):
        parser.add_argument(flag, type=int, default=default)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Only after `reference`, which stands in for the fairseq modules modelscope's OFA package imports.
    from modelscope.models.multi_modal.ofa.generate import search

    vocab = default_vocabulary()
    reference = tiny_reference(code_image_size=args.code_image_size)
    config, variables = from_torch_state_dict(reference.state_dict())
    model = OFA(config)
    vqgan_config = vqgan.PRESETS['ofa']
    reference_vqgan = random_reference(vqgan_config)
    vqgan_variables = vqgan.from_state_dict(
        {k: v.numpy() for k, v in reference_vqgan.state_dict().items()}, vqgan_config
    )
    vqgan_model = vqgan.VQGAN(vqgan_config)
    draw = jax.jit(lambda v, c: vqgan.to_pixels(vqgan_model.apply(v, c, method=vqgan_model.decode)))

    src = np.array([vocab.encode(TEXT_TO_IMAGE.format(CAPTION))], np.int32)
    code_range = vocab.code_range(vqgan_config.n_embed)
    side = config.code_image_size // 8
    queries = iter(range(1_000_000))

    def ours():
        tokens, _ = sample_codes(
            model, variables, src, code_range, args.samples, jax.random.key(next(queries)), top_k=TOP_K
        )
        codes = np.asarray(tokens[0]).reshape(args.samples, side, side) - code_range[0]
        return np.asarray(draw(vqgan_variables, codes))

    start = time.perf_counter()
    images = ours()
    compile_s = time.perf_counter() - start

    tokenizer = IdsOnlyTokenizer(config.vocab_size)
    generator = SequenceGenerator(
        tokenizer,
        beam_size=args.samples,
        max_len_b=side * side,
        min_len=side * side,
        search_strategy=search.Sampling(tokenizer, sampling_topk=TOP_K),
        constraint_range=f'{code_range[0]},{code_range[1]}',
        gen_code=True,
    )
    sample = {'net_input': {'input_ids': torch.from_numpy(src.astype(np.int64))}}

    drawn = []

    def theirs():
        with torch.no_grad():
            hypotheses = generator.generate([reference], sample)[0]
        codes = np.stack([h['tokens'][: side * side].numpy() for h in hypotheses]) - code_range[0]
        pixels = reference_vqgan.decode(codes.reshape(-1, side, side))
        drawn.append(((np.clip(pixels, -1, 1) + 1) / 2 * 255).astype(np.uint8))

    timings = interleaved(ours, theirs, args.repeats)
    expected = (args.samples, side * 8, side * 8, 3)
    assert images.shape == drawn[-1].shape == expected, (images.shape, drawn[-1].shape)

    print(
        json.dumps(
            {
                'benchmark': 'tiny text-to-image query (codes + VQGAN decode)',
                'codes': side * side,
                'samples': args.samples,
                'threads': args.threads,
                'device': jax.devices()[0].device_kind,
                **timings,
                'ofa_jax_compile_s': round(compile_s, 1),
            }
        )
    )


if __name__ == '__main__':
    main()
