"""The trainer's config keys and their defaults, which every file in configs/ starts from.

Kept apart from ofa_jax.train so config files can import it while `python -m ofa_jax.train` runs.
"""
import ml_collections

from ofa_jax import sharding


def default_config() -> ml_collections.ConfigDict:
    """Every key the trainer reads besides `data`, with OFA's optimizer settings; configs start here and override."""
    config = ml_collections.ConfigDict()
    config.model = 'tiny'  # a preset of ofa_jax.model.PRESETS
    config.model_overrides = {}  # OFAConfig fields, e.g. dropout, dtype='bfloat16', remat=True
    config.seed = 0
    config.init_from = ''  # a model directory (ofa_jax.checkpoint) to start from, e.g. a converted OFA checkpoint

    config.batch_size = 256  # global, over all processes
    config.grad_accum_steps = 1
    config.total_steps = 10_000
    config.learning_rate = 1e-4
    config.end_learning_rate = 0.0
    config.warmup_steps = 100
    config.weight_decay = 0.01
    config.adam_b1, config.adam_b2, config.adam_eps = 0.9, 0.999, 1e-8
    config.clip_norm = 1.0
    config.label_smoothing = 0.0
    config.ema_decay = 0.0  # 0: no EMA of the parameters
    config.sample_patch_num = 0  # 0: every image patch; OFA pretraining samples 196

    config.mesh = dict(replica=1, data=-1, fsdp=1, tensor=1)
    config.logical_axis_rules = sharding.DEFAULT_RULES

    config.log_every = 50
    config.checkpoint_every = 1000
    config.keep_checkpoints = 3
    config.keep_every_steps = 0  # also keep every K-th step's checkpoint (0: none)
    config.demo_evaluation = False
    return config
