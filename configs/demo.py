"""Demo: the nano OFA learns all 8 pretraining tasks of the embedded synthetic world on a CPU in a few minutes,
then answers unseen scenes and draws its predictions (workdir/predictions.png).

    bash launch/local.sh
    python -m ofa_jax.train --config configs/demo.py --workdir workdir/demo [--config.total_steps=600]
"""
import ml_collections

from ofa_jax.train_config import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model = 'nano'
    # Image-code targets cover the centre half of the 64-pixel image: a 4x4 grid, as a 32-pixel code image.
    config.model_overrides = dict(dropout=0.0, code_image_size=32)

    config.data = ml_collections.ConfigDict(dict(
        source='world', world_size=4000, world_seed=0, mixture='world_pretrain', image_size=64,
        max_source_length=40, max_target_length=24, workers=0, strict=False))

    config.batch_size = 32
    config.total_steps = 400
    config.learning_rate = 2e-3
    config.warmup_steps = 40

    config.log_every = 20
    config.checkpoint_every = 200
    config.keep_checkpoints = 2
    config.demo_evaluation = True
    return config
