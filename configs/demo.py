"""Demo: the nano OFA learns all 8 pretraining tasks of the embedded synthetic world on a CPU in a few minutes,
then answers unseen scenes and draws its predictions (workdir/predictions.png).

    bash launch/local.sh
    python -m ofa_jax.train --config configs/demo.py --workdir workdir/demo [--config.total_steps=600]
"""
import ml_collections

from ofa_jax.sharding import DEFAULT_RULES


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = 'nano'
    # Image-code targets cover the centre half of the 64-pixel image: a 4x4 grid, as a 32-pixel code image.
    config.model_overrides = dict(dropout=0.0, code_image_size=32)
    config.seed = 0

    config.data = ml_collections.ConfigDict(dict(
        source='world', world_size=4000, world_seed=0, mixture='world_pretrain', image_size=64,
        max_source_length=40, max_target_length=24, workers=0, strict=False))

    config.batch_size = 32  # global
    config.grad_accum_steps = 1
    config.total_steps = 400
    config.learning_rate = 2e-3
    config.end_learning_rate = 0.0
    config.warmup_steps = 40
    config.weight_decay = 0.01
    config.adam_b1, config.adam_b2, config.adam_eps = 0.9, 0.999, 1e-8
    config.clip_norm = 1.0
    config.label_smoothing = 0.0
    config.ema_decay = 0.0
    config.sample_patch_num = 0  # 0: every patch

    config.mesh = dict(replica=1, data=-1, fsdp=1, tensor=1)
    config.logical_axis_rules = DEFAULT_RULES
    config.init_from = ''

    config.log_every = 20
    config.checkpoint_every = 200
    config.keep_checkpoints = 2
    config.keep_every_steps = 0
    config.demo_evaluation = True
    return config
