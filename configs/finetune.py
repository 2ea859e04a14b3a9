"""Finetuning a pretrained OFA (ours, or OFA's converted with `python -m ofa_jax.convert`) on one task: caption,
vqa, grounding (RefCOCO) or snli_ve, as OFA's finetuning recipes do it (all clip 1.0).

    python -m ofa_jax.convert ofa_base.pt checkpoints/ofa_base
    python -m ofa_jax.train --config configs/finetune.py:caption --workdir workdir/caption_base \\
        --config.init_from=checkpoints/ofa_base --config.data.tasks.caption.path=caption_stage1_train.tsv
    python -m ofa_jax.train --config configs/finetune.py:vqa,large ...    # TASK[,SIZE]; the size defaults to base

The TSV files are OFA's released finetuning data (tsv_kind says which layout: caption, vqa, refcoco, snli_ve).
Evaluate with
`python -m ofa_jax.evaluate --config configs/finetune.py:caption --checkpoint WORKDIR ...`.
"""

import ml_collections

from ofa_jax.train_config import default_config, finetune_task_config

# learning rate, total updates, warmup fraction (OFA's run scripts), label smoothing, EMA, image side, token lengths.
TASKS = {
    'caption': dict(
        learning_rate=1e-5,
        total_steps=50_000,
        warmup=0.06,
        label_smoothing=0.1,
        ema_decay=0.0,
        image_size=480,
        max_source_length=80,
        max_target_length=20,
    ),
    'vqa': dict(
        learning_rate=5e-5,
        total_steps=40_000,
        warmup=0.04,
        label_smoothing=0.1,
        ema_decay=0.9999,
        image_size=480,
        max_source_length=80,
        max_target_length=16,
    ),
    'grounding': dict(
        learning_rate=3e-5,
        total_steps=20_000,
        warmup=0.06,
        label_smoothing=0.1,
        ema_decay=0.0,
        image_size=512,
        max_source_length=80,
        max_target_length=5,
    ),
    'snli_ve': dict(
        learning_rate=2e-5,
        total_steps=30_000,
        warmup=0.06,
        label_smoothing=0.0,
        ema_decay=0.0,
        image_size=480,
        max_source_length=80,
        max_target_length=5,
    ),
}


def get_config(arg: str = 'caption') -> ml_collections.ConfigDict:
    task, _, size = arg.partition(',')
    if task not in TASKS:
        raise ValueError(f'configs/finetune.py:{arg}: the task must be one of {", ".join(TASKS)}')
    settings = TASKS[task]
    config = default_config('tasks')
    config.model = size or 'base'
    config.model_overrides = dict(dtype='bfloat16')
    config.data.update(
        image_size=settings['image_size'],
        max_source_length=settings['max_source_length'],
        max_target_length=settings['max_target_length'],
        workers=8,
    )
    config.data.tasks = {task: finetune_task_config(task)}

    config.batch_size = 512
    config.total_steps = settings['total_steps']
    config.learning_rate = settings['learning_rate']
    config.warmup_ratio = settings['warmup']
    config.label_smoothing = settings['label_smoothing']
    config.ema_decay = settings['ema_decay']
    config.clip_norm = 1.0
    config.log_every = 100
    config.checkpoint_every = 2000
    return config
