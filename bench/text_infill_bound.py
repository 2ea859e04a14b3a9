"""How much of the world's text infilling a text-only model can get exactly right: the share of passages whose masked
words state no colour, shape or place.

    python bench/text_infill_bound.py [--passages 10000]

A world passage ("there are two shapes . the red square is at the top left , ...") states each shape's colour, kind
and place once, and nothing else in the text implies them; text infilling shows no image. A passage whose masking
hides one of those words cannot be restored exactly from its text, so this share bounds text_infill_exact_match for
any model. The masks are drawn as training and evaluation draw them (`tasks.span_mask`, 30% of the words in
Poisson(3) spans).
"""

import argparse

import numpy as np

from ofa_jax.data import tasks
from ofa_jax.data.world import COLORS, SHAPES, World, passage

PLACES = ('top', 'bottom', 'left', 'right')


def recoverable_share(passages: int, seed: int = 1000) -> float:
    world = World(size=passages, seed=seed)
    facts = set(COLORS) | set(SHAPES) | set(PLACES)
    rng = np.random.default_rng(seed)
    recoverable = 0
    for index in range(passages):
        words = tasks.clean_text(passage(world.shapes(index), world.image_size)).split()
        masked = tasks.span_mask(len(words), rng)
        recoverable += not any(word in facts for word, hidden in zip(words, masked) if hidden)
    return recoverable / passages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--passages', type=int, default=10000)
    args = parser.parse_args()
    share = recoverable_share(args.passages)
    print(
        f'{share:.3f} of {args.passages} passages can be restored exactly from their text (the bound on '
        f'text_infill_exact_match)'
    )


if __name__ == '__main__':
    main()
