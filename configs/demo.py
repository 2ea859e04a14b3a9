"""Demo: the nano OFA learns all 8 pretraining tasks of the embedded synthetic world on a CPU (12 to 14 minutes on 2
cores), then answers unseen scenes and draws its predictions (workdir/demo/predictions.png).

    bash launch/local.sh                  # trains, then evaluates: the two commands below
    python -m ofa_jax.train --config configs/demo.py --workdir workdir/demo [--config.total_steps=6000]
    python -m ofa_jax.demo --config configs/demo.py --workdir workdir/demo

`configs/demo.py:text_to_image` instead learns to draw the scenes from their captions: its targets are the 8x8 codes
of each 64-pixel scene from the world's patch codebook (as OFA's are its VQGAN's codes), and its evaluation draws the
captions of unseen scenes beside the true scenes (drawings.png), scoring how many drawings show exactly the colours
their caption names.

    python -m ofa_jax.train --config configs/demo.py:text_to_image --workdir workdir/text_to_image
    python -m ofa_jax.demo --config configs/demo.py:text_to_image --workdir workdir/text_to_image
"""

import ml_collections

from ofa_jax.train_config import default_config

VARIANTS = ('pretrain', 'text_to_image')


def get_config(variant: str = 'pretrain') -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f'configs/demo.py:{variant}: the variant must be one of {", ".join(VARIANTS)}')
    config = default_config('world')
    config.model = 'nano'
    # The world's own vocabulary: its output layer is 1,740 ids wide, not OFA's 59,457.
    # Every world example whole: the longest target is a three-shape passage (32 tokens and eos), the longest source
    # its text-infilling instruction: at most 44 with bos and eos, the passage's unmasked (a mask stands for one word
    # or more; 41 was the longest of 20,000 drawn, and 40 cut one in 2,000). A cut target can never be exactly right.
    # The pipeline counts what it cuts (cut/... in the metrics).
    config.data.update(image_size=64, max_source_length=44, max_target_length=33, vocab='world')
    config.batch_size = 32
    # Adam's second moment over ~20 steps (beta2 0.95, not 0.999) at 1e-3: with beta2 0.999 the model stays for
    # hundreds of steps on a plateau where it has the text's structure and not the pixels' colours and shapes
    # (README, "What the demo learns").
    config.learning_rate = 1e-3
    config.adam_b2 = 0.95
    config.warmup_steps, config.warmup_ratio = 0, 0.04  # 140 steps of the demo's 3,500; a shorter run warms up less
    config.log_every = 50
    config.checkpoint_every = 500
    config.keep_checkpoints = 2
    if variant == 'pretrain':
        # Image-code targets cover the centre half of the 64-pixel image: a 4x4 grid, as a 32-pixel code image.
        # Weights start at N(0, 1/sqrt(64)), not OFA's N(0, 0.02): at width 64 OFA's shrinks every projection's output
        # to a sixth of its input, and the captions sat for 600 steps and more at the loss of not knowing a colour or
        # shape (README, "What the demo learns").
        config.model_overrides = dict(dropout=0.0, code_image_size=32, init_std=0.125)
        # 0.19-0.26 s a step on 2 CPU cores, by their load: training ends within 15 minutes, evaluation takes one more.
        config.total_steps = 3500
    else:
        # The code grid is the whole 64-pixel scene: 8x8 codes of 8 pixels.
        config.model_overrides = dict(dropout=0.0, code_image_size=64)
        config.data.update(mixture='world_text_to_image', max_target_length=65)
        config.total_steps = 800
    return config
