"""Every shipped config loads, names a real model, and registers its data from files of OFA's formats."""
import base64
import importlib.util
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ofa_jax.data import tasks
from ofa_jax.model import PRESETS, model_config
from ofa_jax.train_config import default_config

ROOT = os.path.join(os.path.dirname(__file__), '..')


def load(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, (module.get_config() if arg is None else module.get_config(arg))


def image_base64(size: int = 40) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 200, np.uint8)).save(buffer, format='PNG')
    return base64.b64encode(buffer.getvalue()).decode()


def assert_trainer_keys(config) -> None:
    missing = set(default_config().keys()) - set(config.keys())
    assert not missing, missing
    model_config(config.model, **config.model_overrides)
    assert config.warmup_steps < config.total_steps and config.batch_size > 0


@pytest.mark.parametrize('size', ['tiny', 'medium', 'base', 'large', 'huge'])
def test_pretraining_config_per_size(size, tmp_path):
    module, config = load('pretrain', size)
    assert_trainer_keys(config)
    assert config.model == size and size in PRESETS
    assert (config.learning_rate, config.clip_norm, config.label_smoothing, config.sample_patch_num) == (
        1e-4, 5.0, 0.0, 196)
    assert config.warmup_steps == config.total_steps // 100
    assert (config.data.max_source_length, config.data.max_target_length) == (80, 30)
    with pytest.raises(ValueError, match='vision_language_path is empty'):
        tasks.register_from_config(config.data)
    vl = tmp_path / 'vl.tsv'
    vl.write_text(f'0\t{image_base64()}\ttwo dogs on grass\t\t\t\tcoco\tcaption\n')
    config.data.vision_language_path = str(vl)
    config.data.image_size = 64
    task_list, _ = tasks.register_from_config(config.data)
    example = task_list[0].preprocess(task_list[0].source[0], np.random.default_rng(0))
    assert example['image'].shape == (64, 64, 3)


def test_pretraining_config_rejects_unknown_sizes():
    module, _ = load('pretrain', 'tiny')
    with pytest.raises(ValueError, match='tiny, medium, base, large, huge'):
        module.get_config('gigantic')


FINETUNE_ROWS = {  # one row of each of OFA's finetuning TSV layouts
    'caption': ['1', '11', 'a dog on grass', 'dog', '{image}'],
    'vqa': ['1', '11', 'what is it?', '1.0|!+dog', 'dog', '{image}'],
    'refcoco': ['1', '11', 'the dog', '2,3,30,35', '{image}'],
    'snli_ve': ['1', '11', '{image}', 'a dog sleeps', 'a dog on grass', 'entailment'],
}


@pytest.mark.parametrize('task', sorted(FINETUNE_ROWS))
def test_finetuning_config_per_task(task, tmp_path):
    _, config = load('finetune', f'{task},tiny')
    assert_trainer_keys(config)
    assert config.model == 'tiny' and config.clip_norm == 1.0
    expected_lr = {'caption': 1e-5, 'vqa': 5e-5, 'refcoco': 3e-5, 'snli_ve': 2e-5}[task]
    assert config.learning_rate == expected_lr
    assert config.ema_decay == (0.9999 if task == 'vqa' else 0.0)
    with pytest.raises(ValueError, match=f'no path.*data.tasks.{task}.path'):
        tasks.register_from_config(config.data)
    path = tmp_path / f'{task}.tsv'
    path.write_text('\t'.join(FINETUNE_ROWS[task]).format(image=image_base64()) + '\n')
    config.data.tasks[task].path = str(path)
    config.data.image_size = 64
    (registered,), rates = tasks.register_from_config(config.data)
    example = registered.preprocess(registered.source[0], np.random.default_rng(0))
    assert example['image'].shape == (64, 64, 3) and example['target_ids'] and rates == [1.0]


def test_train_command_reads_a_config_argument_and_names_the_missing_file(tmp_path):
    result = subprocess.run(
        [sys.executable, '-m', 'ofa_jax.train', '--config', 'configs/finetune.py:refcoco,tiny',
         '--workdir', str(tmp_path / 'run')], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert 'data.tasks.refcoco.path' in result.stderr


def test_text_to_image_demo_config_matches_its_code_grid():
    _, config = load('demo_text2image')
    assert_trainer_keys(config)
    (task,), _ = tasks.register_from_config(config.data)
    example = task.preprocess(task.source[0], np.random.default_rng(0))
    grid = config.model_overrides['code_image_size'] // 8
    assert len(example['target_ids']) == grid * grid < config.data.max_target_length
