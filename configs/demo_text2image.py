"""Demo: the nano OFA learns to draw the synthetic world's scenes from their captions (text-to-image), on a CPU.

Targets are the 8x8 codes of each 64-pixel scene from the world's patch codebook (as OFA's are its VQGAN's codes).
At the end it draws the captions of unseen scenes beside the true scenes (workdir/drawings.png) and scores how many
drawings show exactly the colours their caption names; `Predictor.load(workdir).text_to_image(captions,
world_codebook(World(...)))` draws more.

    python -m ofa_jax.train --config configs/demo_text2image.py --workdir workdir/text2image
"""
import ml_collections

from ofa_jax.train_config import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model = 'nano'
    # The code grid is the whole 64-pixel scene: 8x8 codes of 8 pixels.
    config.model_overrides = dict(dropout=0.0, code_image_size=64)
    config.data = ml_collections.ConfigDict(dict(
        source='world', world_size=4000, world_seed=0, mixture='world_text_to_image', image_size=64,
        max_source_length=40, max_target_length=65, workers=0, strict=False))
    config.batch_size = 32
    config.total_steps = 800
    config.learning_rate = 2e-3
    config.warmup_steps = 40
    config.log_every = 20
    config.checkpoint_every = 200
    config.keep_checkpoints = 2
    config.demo_evaluation = True
    return config
