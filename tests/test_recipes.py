"""OFA's finetuning recipes: what ofa-jax builds from a raw record equals what OFA's own procedure builds, each OFA
procedure written out below from the lines of OFA-Sys/OFA it cites."""

import string

import numpy as np
import pytest

from ofa_jax.data import mixtures
from ofa_jax.data.tasks import resize_transform
from ofa_jax.data.vocab import default_vocabulary

VOCAB = default_vocabulary()
IMAGE = np.full((24, 32, 3), 128, np.uint8)


def preprocess(kind: str, record: dict) -> dict:
    example = dict(record)
    for step in mixtures.finetune_preprocessors(kind, VOCAB, resize_transform(32)):
        example = step(example, np.random.default_rng(0))
    return example


def ofa_caption_target(caption: str, max_tgt_length: int = 20) -> str:
    # data/mm_data/caption_dataset.py:128-131 (training, not SCST): transtab deletes string.punctuation; :138 encodes
    # ' {}'.format(tgt_caption). run_scripts/caption/train_caption_stage1*.sh: --max-tgt-length=20.
    transtab = str.maketrans({key: None for key in string.punctuation})
    caption = caption.translate(transtab).strip()
    return ' '.join(caption.strip().split()[:max_tgt_length])


@pytest.mark.parametrize(
    'caption',
    [
        "A man's T-shirt, on the beach.",
        '  Two dogs   playing (outside) in the snow!  ',
        'A very long caption that goes on and on with many words about a kitchen, a stove, a sink, a fridge and a cat.',
        'DOGS & cats: 3.5 of them',
    ],
)
def test_the_caption_target_is_ofas(caption):
    example = preprocess('caption', {'image': IMAGE, 'caption': caption})
    assert example['target_ids'] == VOCAB.encode(' ' + ofa_caption_target(caption))
    assert example['source_ids'] == VOCAB.encode(' what does the image describe?')  # caption_dataset.py:117
