"""Demo: the nano OFA model learns the embedded example (one synthetic image and its caption) on a CPU.

    bash launch/local.sh
    python -m ofa_jax.demo --config configs/demo.py --workdir workdir/demo [--config.steps=80]
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = 'nano'
    config.image_size = 64
    config.steps = 60
    config.learning_rate = 2e-3
    config.log_every = 10
    config.seed = 0
    return config
