"""Finetuning a pretrained OFA (ours, or OFA's converted with `python -m ofa_jax.convert`) on one task: caption,
vqa, grounding (RefCOCO), snli_ve, classification (ImageNet-style), or the text tasks sst2, mnli, rte, qqp and
summarization (Gigaword), with OFA's finetuning recipes where it published them (all clip 1.0).

    python -m ofa_jax.convert ofa_base.pt checkpoints/ofa_base
    python -m ofa_jax.train --config configs/finetune.py:caption --workdir workdir/caption_base \\
        --config.init_from=checkpoints/ofa_base --config.data.tasks.caption.path=caption_stage1_train.tsv \\
        --config.data.tasks.caption.valid_path=caption_val.tsv    # validated every 500 steps, the best kept
    python -m ofa_jax.train --config configs/finetune.py:vqa,large ...    # TASK[,SIZE]; the size defaults to base
    python -m ofa_jax.train --config configs/finetune.py:caption_scst --workdir workdir/caption_scst_base \\
        --config.init_from=workdir/caption_base/best --config.data.tasks.caption.path=caption_stage2_train.tsv \\
        --config.data.tasks.caption.valid_path=caption_val.tsv    # stage 2: CIDEr optimization (SCST)

A recipe counts epochs where OFA's script does (--config.epochs; for a fixed number of updates instead:
--config.epochs=0 --config.total_steps=N). The TSV files are OFA's released finetuning data (tsv_kind says which
layout: caption, vqa, refcoco, snli_ve, imagenet); any task also reads JSONL with an image folder
(`--config.data.tasks.TASK.format=jsonl`; the text tasks only do), which `python -m ofa_jax.prepare_data` writes from
COCO captions, VQA v2 and RefCOCO annotations.
Evaluate with `python -m ofa_jax.evaluate --config configs/finetune.py:caption --checkpoint WORKDIR ...`. VQA as OFA
trains and reports it needs its answer list: `--config.data.tasks.vqa.answers=trainval_ans2label.pkl` (training then
constrains each answer to the list, evaluation scores every answer of it).

On a TPU slice (BUILD.md's fit table plans each of these on a v5e:2x2, 4 chips of 16 GiB): base as it is with
--config.device_batch_size=8 (caption_scst: 2, as it trains a row per caption of its beam); large with
--config.mesh.fsdp=4 --config.model_overrides.remat=True --config.model_overrides.scan_layers=True
--config.device_batch_size=4 (gradients accumulate to the global batch).
"""

from typing import NamedTuple

import ml_collections

from ofa_jax.train_config import default_config, finetune_task_config


class Recipe(NamedTuple):
    learning_rate: float
    batch_size: int  # global: OFA's per-GPU batch x update frequency x GPUs
    epochs: float  # 0: train for total_steps updates
    total_steps: int
    warmup: float  # fraction of the updates (OFA's --warmup-ratio) ...
    warmup_steps: int  # ... or a number of them (--warmup-updates)
    label_smoothing: float
    ema_decay: float
    drop_path: float  # encoder and decoder (--encoder/decoder-drop-path-rate); the ResNet's is 0 in every script
    freeze_token_embedding: bool
    drop_worst_ratio: float
    drop_worst_after: int
    image_size: int
    max_source_length: int
    max_target_length: int
    end_learning_rate: float = 0.0


# The base-size recipes: OFA's *_base scripts for caption (run_scripts/caption/train_caption_stage1_base.sh), VQA
# (vqa/train_vqa_base_distributed.sh), RefCOCO (refcoco/train_refcoco_base.sh), SNLI-VE
# (snli_ve/train_snli_ve_base.sh) and Gigaword (gigaword/train_gigaword.sh, its only script); its learning rate for
# ImageNet. The GLUE tasks' and ImageNet's other settings are this project's choice (text-only tasks see no image: a
# 32-pixel placeholder).
# Caption targets are cut at 20 words, then at 32 tokens (OFA cuts words only; 20 COCO words rarely pass 30 tokens).
# max_target_length counts the answer's tokens and eos; a prompted task's decoder reads its prompt before them.
# VQA's source holds the question (80 words) and 30 object words: 128 tokens.
TASKS = {
    'caption': Recipe(1e-5, 128, 5, 0, 0.06, 0, 0.1, 0.0, 0.1, True, 0.2, 6000, 480, 80, 32),
    'vqa': Recipe(5e-5, 512, 15, 0, 0.04, 0, 0.1, 0.9999, 0.1, True, 0.0, 0, 480, 128, 16),
    'grounding': Recipe(5e-5, 128, 10, 0, 0.06, 0, 0.1, 0.0, 0.1, False, 0.0, 0, 512, 80, 5),
    'snli_ve': Recipe(5e-5, 256, 5, 0, 0.06, 0, 0.0, 0.0, 0.1, False, 0.0, 0, 480, 80, 5),
    'classification': Recipe(5e-5, 512, 0, 50_000, 0.06, 0, 0.1, 0.0, 0.0, False, 0.0, 0, 480, 80, 16),
    'sst2': Recipe(5e-5, 512, 0, 20_000, 0.06, 0, 0.0, 0.0, 0.0, False, 0.0, 0, 32, 256, 4),
    'mnli': Recipe(5e-5, 512, 0, 40_000, 0.06, 0, 0.0, 0.0, 0.0, False, 0.0, 0, 32, 256, 4),
    'rte': Recipe(5e-5, 512, 0, 5_000, 0.06, 0, 0.0, 0.0, 0.0, False, 0.0, 0, 32, 256, 4),
    'qqp': Recipe(5e-5, 512, 0, 40_000, 0.06, 0, 0.0, 0.0, 0.0, False, 0.0, 0, 32, 256, 4),
    'summarization': Recipe(1e-4, 512, 6, 0, 0.06, 0, 0.1, 0.0, 0.1, False, 0.0, 0, 32, 512, 33),
    # Stage 2 (caption/train_caption_stage2{_base,}.sh): SCST from stage 1's best checkpoint, dropout 0.
    'caption_scst': Recipe(1e-5, 64, 3, 0, 0.06, 0, 0.0, 0.0, 0.0, True, 0.0, 0, 480, 80, 32),
}
# Where OFA's large scripts (train_caption_stage1.sh, train_vqa_distributed.sh, train_refcoco.sh, train_snli_ve.sh)
# differ; huge uses them too, tiny and medium the base recipes.
LARGE = {
    'caption': dict(epochs=2, drop_worst_after=2500),
    'caption_scst': dict(end_learning_rate=2e-7),
    'vqa': dict(epochs=0, total_steps=40_000, warmup=0.0, warmup_steps=1000, drop_path=0.2),
    'grounding': dict(learning_rate=3e-5, drop_path=0.2),
    'snli_ve': dict(learning_rate=2e-5, epochs=6, drop_path=0.2),
}
# OFA's dataset options in the scripts: VQA and SNLI-VE read the instruction in the decoder (--prompt-type=prev_output)
# and train their answer over a trie (no --unconstrained-training; VQA's answers from --ans2label-file: set
# data.tasks.vqa.answers, without it VQA trains over the whole vocabulary); VQA adds the image's object words
# (--add-object), SNLI-VE the premise (--add-caption); Gigaword's decoder reads a noised target (--noise-ratio).
OPTIONS = {
    'vqa': dict(prompt_type='prev_output', add_object=True),
    'snli_ve': dict(prompt_type='prev_output', add_caption=True),
    'summarization': dict(noise_ratio=0.2),  # --noise-ratio=0.2: a fifth of the decoder's input tokens random
}


def recipe_of(task: str, size: str) -> Recipe:
    recipe = TASKS[task]
    return recipe._replace(**LARGE.get(task, {})) if size in ('large', 'huge') else recipe


def get_config(arg: str = 'caption') -> ml_collections.ConfigDict:
    task, _, size = arg.partition(',')
    if task not in TASKS:
        raise ValueError(f'configs/finetune.py:{arg}: the task must be one of {", ".join(TASKS)}')
    size = size or 'base'
    recipe = recipe_of(task, size)
    config = default_config('tasks')
    config.model = size
    config.model_overrides = dict(
        dtype='bfloat16',
        encoder_drop_path_rate=recipe.drop_path,
        decoder_drop_path_rate=recipe.drop_path,
        remat=False,  # --config.model_overrides.remat=True recomputes layers, as remat_policy says, to fit memory
        remat_policy='nothing_saveable',
        scan_layers=False,  # True loops one compiled layer per stack: a TPU slice compiles large and huge in minutes
    )
    config.scst = task == 'caption_scst'
    if config.scst:
        config.model_overrides.update(dropout=0.0, attention_dropout=0.0)
    kind = 'caption' if config.scst else task
    options = OPTIONS.get(task, {})
    # The prev_output prompt puts the source's tokens (all but its eos) before the answer, bos already counted.
    prompt_length = recipe.max_source_length - 2 if options.get('prompt_type') == 'prev_output' else 0
    config.data.update(
        image_size=recipe.image_size,
        max_source_length=recipe.max_source_length,
        max_target_length=prompt_length + recipe.max_target_length,
        workers=8,
    )
    config.data.tasks = {kind: {**finetune_task_config(kind), **options}}

    config.batch_size = recipe.batch_size
    config.epochs, config.total_steps = recipe.epochs, recipe.total_steps
    config.learning_rate, config.end_learning_rate = recipe.learning_rate, recipe.end_learning_rate
    config.warmup_steps, config.warmup_ratio = recipe.warmup_steps, recipe.warmup
    config.label_smoothing = recipe.label_smoothing
    config.ema_decay = recipe.ema_decay
    config.freeze_token_embedding = recipe.freeze_token_embedding
    config.drop_worst_ratio, config.drop_worst_after = recipe.drop_worst_ratio, recipe.drop_worst_after
    config.clip_norm = 1.0
    config.log_every = 100
    config.checkpoint_every = 2000
    # OFA's scripts validate every 500 updates (--validate-interval-updates=500; VQA's once an epoch,
    # --validate-interval=1) and keep the best checkpoint by the task's score (--best-checkpoint-metric): give the
    # validation file, data.tasks.TASK.valid_path.
    if task != 'summarization':  # no automatic metric
        config.validation.update(every=500, metric='caption_cider' if kind == 'caption' else f'{kind}_accuracy')
    if task == 'vqa':
        config.validation.every_epochs = 1.0
    return config
