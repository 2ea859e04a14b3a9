"""Finetuning a pretrained OFA (ours, or OFA's converted with `python -m ofa_jax.convert`) on one task: caption,
vqa, grounding (RefCOCO), snli_ve, classification (ImageNet-style), or the text tasks sst2, mnli, rte, qqp and
summarization (Gigaword), with OFA's finetuning recipes where it published them (all clip 1.0).

    python -m ofa_jax.convert ofa_base.pt checkpoints/ofa_base
    python -m ofa_jax.train --config configs/finetune.py:caption --workdir workdir/caption_base \\
        --config.init_from=checkpoints/ofa_base --config.data.tasks.caption.path=caption_stage1_train.tsv
    python -m ofa_jax.train --config configs/finetune.py:vqa,large ...    # TASK[,SIZE]; the size defaults to base

The TSV files are OFA's released finetuning data (tsv_kind says which layout: caption, vqa, refcoco, snli_ve,
imagenet); any task also reads JSONL with an image folder (`--config.data.tasks.TASK.format=jsonl`; the text tasks
only do), which `python -m ofa_jax.prepare_data` writes from COCO captions, VQA v2 and RefCOCO annotations.
Evaluate with `python -m ofa_jax.evaluate --config configs/finetune.py:caption --checkpoint WORKDIR ...`.
"""

from typing import NamedTuple

import ml_collections

from ofa_jax.train_config import default_config, finetune_task_config


class Recipe(NamedTuple):
    learning_rate: float
    total_steps: int  # updates
    warmup: float  # fraction of the updates (OFA's --warmup-ratio)
    label_smoothing: float
    ema_decay: float
    image_size: int
    max_source_length: int
    max_target_length: int


# OFA's run scripts for caption, VQA, RefCOCO, SNLI-VE; its learning rates for ImageNet and Gigaword. The GLUE tasks'
# and those two's other settings are this project's choice (text-only tasks see no image: a 32-pixel placeholder).
TASKS = {
    'caption': Recipe(1e-5, 50_000, 0.06, 0.1, 0.0, 480, 80, 20),
    'vqa': Recipe(5e-5, 40_000, 0.04, 0.1, 0.9999, 480, 80, 16),
    'grounding': Recipe(3e-5, 20_000, 0.06, 0.1, 0.0, 512, 80, 5),
    'snli_ve': Recipe(2e-5, 30_000, 0.06, 0.0, 0.0, 480, 80, 5),
    'classification': Recipe(5e-5, 50_000, 0.06, 0.1, 0.0, 480, 80, 16),
    'sst2': Recipe(5e-5, 20_000, 0.06, 0.0, 0.0, 32, 256, 4),
    'mnli': Recipe(5e-5, 40_000, 0.06, 0.0, 0.0, 32, 256, 4),
    'rte': Recipe(5e-5, 5_000, 0.06, 0.0, 0.0, 32, 256, 4),
    'qqp': Recipe(5e-5, 40_000, 0.06, 0.0, 0.0, 32, 256, 4),
    'summarization': Recipe(1e-4, 50_000, 0.06, 0.1, 0.0, 32, 256, 33),
}


def get_config(arg: str = 'caption') -> ml_collections.ConfigDict:
    task, _, size = arg.partition(',')
    if task not in TASKS:
        raise ValueError(f'configs/finetune.py:{arg}: the task must be one of {", ".join(TASKS)}')
    recipe = TASKS[task]
    config = default_config('tasks')
    config.model = size or 'base'
    config.model_overrides = dict(dtype='bfloat16')
    config.data.update(
        image_size=recipe.image_size,
        max_source_length=recipe.max_source_length,
        max_target_length=recipe.max_target_length,
        workers=8,
    )
    config.data.tasks = {task: finetune_task_config(task)}

    config.batch_size = 512
    config.total_steps = recipe.total_steps
    config.learning_rate = recipe.learning_rate
    config.warmup_steps, config.warmup_ratio = 0, recipe.warmup
    config.label_smoothing = recipe.label_smoothing
    config.ema_decay = recipe.ema_decay
    config.clip_norm = 1.0
    config.log_every = 100
    config.checkpoint_every = 2000
    return config
