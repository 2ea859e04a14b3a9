"""Every shipped config loads, names a real model, keeps to the config schema, and registers its data from files of
OFA's formats as the tasks it says."""

import base64
import io
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from conftest import config_module, load_config
from PIL import Image

from ofa_jax import ablate, evaluate, train
from ofa_jax.checkpoint import model_from_config
from ofa_jax.data import mixtures, tasks
from ofa_jax.data.vocab import vocabulary_from_spec
from ofa_jax.model import PRESETS, model_config
from ofa_jax.train_config import DATA_SOURCES, data_config, default_config

ROOT = os.path.join(os.path.dirname(__file__), '..')
SIZES = ('tiny', 'medium', 'base', 'large', 'huge')
FINETUNE_KINDS = mixtures.FINETUNE_TASKS  # configs/finetune.py offers every finetuning task
FINETUNE_ARGS = (*FINETUNE_KINDS, 'caption_scst')  # and caption stage 2, on caption data
DEMO_VARIANTS = ('pretrain', 'text_to_image')
ABLATION_VARIANTS = ('cpu', 'pod')
SHIPPED = (
    [('pretrain', size) for size in SIZES]
    + [('finetune', arg) for arg in FINETUNE_ARGS]
    + [('demo', variant) for variant in DEMO_VARIANTS]
)


def image_base64(size: int = 40) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 200, np.uint8)).save(buffer, format='PNG')
    return base64.b64encode(buffer.getvalue()).decode()


def assert_trainer_keys(config) -> None:
    """The config has exactly the schema's keys, its data section exactly its source's, and names a real model and
    vocabulary."""
    assert config.data.source in DATA_SOURCES
    assert set(config.keys()) == set(default_config(config.data.source).keys())
    assert set(config.data.keys()) == set(data_config(config.data.source).keys())
    # The model's embedding and output layer are as wide as the vocabulary.
    assert model_from_config(config).config.vocab_size == vocabulary_from_spec(config.data.vocab).size
    assert config.batch_size > 0 and (config.epochs > 0) != (config.total_steps > 0)
    assert config.epochs or train.warmup_steps(config) < config.total_steps


@pytest.mark.parametrize('name, arg', SHIPPED, ids=[f'{name}:{arg}' for name, arg in SHIPPED])
def test_every_shipped_config_keeps_to_the_schema(name, arg):
    config = load_config(name, arg)
    assert_trainer_keys(config)
    assert config.data.source == {'pretrain': 'ofa_pretrain', 'finetune': 'tasks', 'demo': 'world'}[name]
    assert (
        load_config(name).to_dict()
        == load_config(name, {'pretrain': 'base', 'finetune': 'caption', 'demo': 'pretrain'}[name]).to_dict()
    )


@pytest.mark.parametrize('variant', ABLATION_VARIANTS)
def test_each_size_of_a_shipped_ablation_is_a_training_config(variant):
    config = load_config('ablate', variant)
    assert config.ablation.budget in ablate.BUDGETS and config.ablation[config.ablation.budget] > 0
    sizes = ablate.sizes_of(config, '')
    assert len(sizes) >= 3
    for size in sizes:
        sized = ablate.size_config(config, size, 100).to_dict()
        assert sized.pop('ablation') == config.ablation.to_dict()  # saved with the run, ignored by the trainer
        assert_trainer_keys(ml_collections.ConfigDict(sized))


@pytest.mark.parametrize(
    'name, choices',
    [
        ('pretrain', SIZES),
        ('finetune', FINETUNE_ARGS),
        ('demo', DEMO_VARIANTS),
        ('ablate', ABLATION_VARIANTS),
    ],
)
def test_configs_reject_unknown_arguments_naming_every_choice(name, choices):
    """The choices named are all the shipped ones: the lists above cover every config."""
    with pytest.raises(ValueError, match=f'one of {", ".join(choices)}$'):
        load_config(name, 'gigantic')


def test_the_vocabulary_sets_the_model_width():
    config = load_config('demo')
    assert config.data.vocab == 'world' and model_from_config(config).config.vocab_size == 1740
    config.data.vocab = 'ofa'
    assert model_from_config(config).config.vocab_size == 59457
    config.model_overrides.vocab_size = 9676
    with pytest.raises(ValueError, match="vocab_size is 9676, but the vocabulary 'ofa' has 59457 ids"):
        model_from_config(config)


def test_data_config_rejects_unknown_sources():
    with pytest.raises(ValueError, match='data source'):
        data_config('imagenet')


@pytest.mark.parametrize('size', SIZES)
def test_pretraining_config_per_size(size, tmp_path):
    config = load_config('pretrain', size)
    assert config.model == size and size in PRESETS
    assert (config.learning_rate, config.clip_norm, config.label_smoothing, config.sample_patch_num) == (
        1e-4,
        5.0,
        0.0,
        196,
    )
    assert train.warmup_steps(config) == config.total_steps // 100
    assert (config.data.max_source_length, config.data.max_target_length) == (80, 30)
    assert config.model_overrides.scan_layers and config.model_overrides.scan_resnet
    overrides = config.model_overrides
    assert (overrides.encoder_drop_path_rate, overrides.decoder_drop_path_rate) == (0.1, 0.1)  # OFA's scripts
    assert model_config(size, **overrides).encoder_drop_path_rate == 0.1
    with pytest.raises(ValueError, match='vision_language_path is empty'):
        mixtures.register_from_config(config.data)
    vl = tmp_path / 'vl.tsv'
    vl.write_text(f'0\t{image_base64()}\ttwo dogs on grass\t\t\t\tcoco\tcaption\n')
    config.data.vision_language_path = str(vl)
    config.data.image_size = 64
    task_list, _ = mixtures.register_from_config(config.data)
    example = task_list[0].preprocess(task_list[0].source[0], np.random.default_rng(0))
    assert example['image'].shape == (64, 64, 3)
    assert vocabulary_from_spec(config.data.vocab).decode(example['source_ids']) == tasks.CAPTION


FINETUNE_ROWS = {  # one row of each of OFA's finetuning TSV layouts, by the task that reads it
    'caption': ['1', '11', 'a dog on grass', 'dog', '{image}'],
    'vqa': ['1', '11', 'what is it?', '1.0|!+dog', 'dog', '{image}'],
    'grounding': ['1', '11', 'the dog', '2,3,30,35', '{image}'],  # OFA's refcoco layout
    'snli_ve': ['1', '11', '{image}', 'a dog sleeps', 'a dog on grass', 'entailment'],
    'classification': ['{image}', '0', 'golden retriever'],  # OFA's imagenet layout
}
TEXT_RECORDS = {  # the text tasks have no TSV layout: a JSON line each
    'sst2': {'text': 'a gripping film', 'label': 1},
    'mnli': {'premise': 'a man sleeps', 'hypothesis': 'someone rests', 'label': 'entailment'},
    'rte': {'premise': 'the city flooded', 'hypothesis': 'it rained', 'label': 'not_entailment'},
    'qqp': {'premise': 'how do i learn jax?', 'hypothesis': 'what is the way to learn jax?', 'label': '0'},
    'summarization': {'text': 'the council approved the budget on monday', 'target': 'budget approved'},
}
LEARNING_RATES = {
    'caption': 1e-5,
    'vqa': 5e-5,
    'grounding': 5e-5,
    'snli_ve': 5e-5,
    'classification': 5e-5,
    'summarization': 1e-4,
}


@pytest.mark.parametrize('kind', FINETUNE_KINDS)
def test_finetuning_config_per_task(kind, tmp_path):
    config = load_config('finetune', f'{kind},tiny')
    assert_trainer_keys(config)
    assert config.model == 'tiny' and config.clip_norm == 1.0
    assert config.learning_rate == LEARNING_RATES.get(kind, 5e-5)
    assert config.ema_decay == (0.9999 if kind == 'vqa' else 0.0)
    assert kind in mixtures.FINETUNE_TASKS and tasks.TASKS[kind].metrics is not None or kind == 'summarization'
    assert list(config.data.tasks) == [kind] and config.data.tasks[kind].kind == kind
    entry = config.data.tasks[kind]
    assert (entry.format, entry.tsv_kind) == (
        ('tsv', {'grounding': 'refcoco', 'classification': 'imagenet'}.get(kind, kind))
        if kind in FINETUNE_ROWS
        else ('jsonl', '')
    )
    with pytest.raises(ValueError, match=f'no path.*data.tasks.{kind}.path'):
        mixtures.register_from_config(config.data)
    if kind in FINETUNE_ROWS:
        path = tmp_path / f'{kind}.tsv'
        path.write_text('\t'.join(FINETUNE_ROWS[kind]).format(image=image_base64()) + '\n')
    else:
        path = tmp_path / f'{kind}.jsonl'
        path.write_text(json.dumps(TEXT_RECORDS[kind]) + '\n')
    entry.path = str(path)
    config.data.image_size = 64
    (registered,), rates = mixtures.register_from_config(config.data)
    assert registered.kind == kind and rates == [1.0]
    example = registered.preprocess(registered.source[0], np.random.default_rng(0))
    assert example['target_ids'] and (example.get('image') is not None) == tasks.TASKS[kind].image
    if tasks.TASKS[kind].image:
        assert example['image'].shape == (64, 64, 3)
    assert 'constraint' not in example  # no finetuning task but text-to-image trains under a constraint
    # What `ofa_jax.evaluate` runs for the config: the one task, reported under its kind (summarization: no metric).
    evaluated = evaluate.evaluable_tasks(config.data)
    if kind == 'summarization':
        assert evaluated == {}
    else:
        assert list(evaluated) == [kind] and evaluated[kind].kind == kind and evaluated[kind].name == registered.name


def test_train_command_reads_a_config_argument_and_names_the_missing_file(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'ofa_jax.train',
            '--config',
            'configs/finetune.py:grounding,tiny',
            '--workdir',
            str(tmp_path / 'run'),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert 'data.tasks.grounding.path' in result.stderr


def test_demo_config_evaluates_every_pretraining_task_of_the_world():
    config = load_config('demo')
    assert config.data.mixture == 'world_pretrain'
    evaluated = evaluate.evaluable_tasks(config.data)
    assert set(evaluated) == set(mixtures.WORLD_RATES)
    assert all(task.kind == kind and task.name == mixtures.world_task_name(kind) for kind, task in evaluated.items())


def test_the_demo_holds_every_world_example_whole():
    """No target or source of the demo is cut (the pipeline cuts what is longer, as OFA does): with targets of 24
    tokens every three-shape passage lost its end, and text infilling could never restore a third of the passages.
    A text-infilling source is random: the passage's instruction with no word masked bounds it (a mask stands for
    one word or more); a source of 40 tokens cut 1 in 2,000 of them."""
    config = load_config('demo')
    vocab = vocabulary_from_spec(config.data.vocab)
    rng = np.random.default_rng(0)
    for task in mixtures.register_from_config(config.data)[0]:
        for index in range(300):
            example = task.preprocess(task.source[index], rng)
            assert len(example['target_ids']) + 1 <= config.data.max_target_length, (task.name, index)  # and eos
            assert len(example['source_ids']) + 2 <= config.data.max_source_length, (task.name, index)  # bos, eos
            if task.kind == 'text_infill':
                bound = len(tasks.text_infill_instruction(vocab, task.source[index]['text']))
                assert len(example['source_ids']) <= bound, (task.name, index)
                assert bound + 2 <= config.data.max_source_length, (task.name, index)


def test_text_to_image_demo_config_matches_its_code_grid():
    config = load_config('demo', 'text_to_image')
    assert config.data.mixture == mixtures.world_task_name('text_to_image')
    (task,), _ = mixtures.register_from_config(config.data)
    assert task.kind == 'text_to_image'
    example = task.preprocess(task.source[0], np.random.default_rng(0))
    grid = config.model_overrides['code_image_size'] // 8
    assert len(example['target_ids']) == grid * grid < config.data.max_target_length
    assert 'image' not in example and example['constraint'] == 'codes'


def fit_table_rows() -> dict[str, list[str]]:
    """BUILD.md's fit table: each planned config's cells (topology, mesh, global batch, device batch, accumulation,
    GiB per device, fits, FLOPs, compile seconds), by its config argument."""
    with open(os.path.join(ROOT, 'BUILD.md')) as f:
        lines = [line for line in f if line.startswith('| configs/')]
    rows = [[cell.strip() for cell in line.strip().strip('|').split('|')] for line in lines]
    return {row[0]: row[1:] for row in rows}


# OFA published large-size recipes for these tasks (configs/finetune.py's LARGE); the others are planned at base.
LARGE_FINETUNING = ('caption', 'vqa', 'grounding', 'snli_ve')


def test_build_md_plans_every_shipped_config_on_a_slice_where_it_fits():
    rows = fit_table_rows()
    planned = [(f'configs/pretrain.py:{size}', load_config('pretrain', size)) for size in SIZES]
    planned += [(f'configs/finetune.py:{arg},base', load_config('finetune', arg)) for arg in FINETUNE_ARGS]
    planned += [(f'configs/finetune.py:{t},large', load_config('finetune', f'{t},large')) for t in LARGE_FINETUNING]
    missing = [name for name, _ in planned if name not in rows]
    assert not missing, f'BUILD.md has no fit-table row for {missing}'
    for name, config in planned:
        assert len(rows[name]) == 9, f'{name}: BUILD.md has an error row, not a plan: {rows[name]}'
        topology, _, global_batch, device_batch, _, _, fits, *_ = rows[name]
        assert fits == 'yes', f'{name} does not fit {topology}'
        assert int(global_batch) == config.batch_size, f'{name}: BUILD.md plans another batch than the config'
        if config.device_batch_size:  # the pretraining sizes set theirs; finetuning's is given on the command line
            assert int(device_batch) == config.device_batch_size, name
    for size, settings in config_module('pretrain').SIZES.items():  # each size on the slice its config names
        assert rows[f'configs/pretrain.py:{size}'][0] == settings['slice'], size
