"""Finetuning on your own data, run the way a user runs it: the commands as subprocesses, in order, for every finetuning
task of configs/finetune.py, on files this test writes in OFA's TSV layout (with corrupt rows) and as JSONL with an
image folder.

    python -m ofa_jax.convert ofa_tiny.pt converted/        (modelscope's OFA-Tiny, random weights)
    python -m ofa_jax.train --config configs/finetune.py:TASK,tiny --config.init_from=converted ...
    python -m ofa_jax.evaluate --config configs/finetune.py:TASK,tiny --checkpoint WORKDIR ...
    python -m ofa_jax.predict --checkpoint WORKDIR --task TASK ...      (once per task: it reads no data file)

The records come from the synthetic world, so every answer is a real one. Every process shares one persistent
compilation cache: the second file format of a task compiles nothing new.
"""

import base64
import io
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from ofa_jax import train
from ofa_jax.data.world import World

pytestmark = [pytest.mark.slow, pytest.mark.parity]

SIZE = 64  # the image side every command is run at (the configs' 480/512 would only be slower)
ROWS = 10  # good records per file; each file adds CORRUPT bad ones
CORRUPT = 2
WORLD = World(size=ROWS, seed=11, image_size=SIZE)
IMAGE_TASKS = ('caption', 'vqa', 'grounding', 'snli_ve', 'classification')
TEXT_TASKS = ('sst2', 'mnli', 'rte', 'qqp', 'summarization')
METRIC = {
    'caption': 'caption_cider',
    'vqa': 'vqa_accuracy',
    'grounding': 'grounding_accuracy',
    'snli_ve': 'snli_ve_accuracy',
    'classification': 'classification_accuracy',
    'sst2': 'sst2_accuracy',
    'mnli': 'mnli_accuracy',
    'rte': 'rte_accuracy',
    'qqp': 'qqp_accuracy',
}
RESULT = {
    'caption': 'caption',
    'vqa': 'answer',
    'grounding': 'box',
    'snli_ve': 'answer',
    'classification': 'label',
    'sst2': 'answer',
    'mnli': 'answer',
    'rte': 'answer',
    'qqp': 'answer',
    'summarization': 'summary',
}


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format='PNG')
    return buffer.getvalue()


def record(task: str, i: int) -> dict:
    """Scene i as a record of `task`, in the project's record schema (image left out)."""
    scene = WORLD[i]
    other = WORLD[(i + 1) % ROWS]['caption']
    x0, y0, x1, y1 = (float(v) for v in scene['region'])
    return {
        'caption': {'caption': scene['caption']},
        'vqa': {'question': scene['question'], 'answers': scene['answers']},
        'grounding': {'text': scene['text'], 'region': [x0, y0, x1, y1]},
        'snli_ve': {
            'hypothesis': scene['caption'] if i % 2 else other,
            'premise': scene['caption'],
            'label': 'entailment' if i % 2 else 'contradiction',
        },
        'classification': {'label': scene['labels'][0]},
        'sst2': {
            'text': f'{scene["caption"]}, a lovely picture' if i % 2 else f'{scene["caption"]}, dull',
            'label': i % 2,
        },
        'mnli': {'premise': scene['passage'], 'hypothesis': scene['caption'], 'label': 'entailment'},
        'rte': {'premise': scene['passage'], 'hypothesis': other, 'label': 'not_entailment'},
        'qqp': {'premise': scene['question'], 'hypothesis': scene['question'].replace('what', 'which'), 'label': '1'},
        'summarization': {'text': scene['passage'], 'target': scene['caption']},
    }[task]


def tsv_row(task: str, i: int) -> list[str]:
    """Scene i in OFA's TSV layout of `task` (ofa_jax.data.sources.TSV_LAYOUTS)."""
    fields, image = record(task, i), base64.b64encode(png_bytes(WORLD[i]['image'])).decode()
    if task == 'caption':
        return [str(i), str(i), fields['caption'], '', image]
    if task == 'vqa':
        answers = '&&'.join(f'{c}|!+{a}' for a, c in fields['answers'].items())
        return [str(i), str(i), fields['question'], answers, '', image]
    if task == 'grounding':
        return [str(i), str(i), fields['text'], ','.join(f'{v:.1f}' for v in fields['region']), image]
    if task == 'snli_ve':
        return [str(i), str(i), image, fields['hypothesis'], fields['premise'], fields['label']]
    return [image, '0', fields['label']]  # classification: OFA's imagenet layout


def write_data(task: str, folder) -> dict[str, str]:
    """The task's records as OFA's TSV (image tasks) and as JSONL with an image folder, each with CORRUPT bad rows:
    {format: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    if task in IMAGE_TASKS:
        rows = ['\t'.join(tsv_row(task, i)) for i in range(ROWS)]
        broken = ['not-base64!', '0', 'x'] if task == 'classification' else tsv_row(task, 0)[:-1] + ['not-base64!']
        rows += ['\t'.join(broken), 'a row\twith too few columns']
        paths['tsv'] = str(folder / f'{task}.tsv')
        (folder / f'{task}.tsv').write_text('\n'.join(rows) + '\n')
    (folder / 'images').mkdir(exist_ok=True)
    lines = []
    for i in range(ROWS):
        line = {'id': str(i), **record(task, i)}
        if task in IMAGE_TASKS:
            (folder / 'images' / f'{i}.png').write_bytes(png_bytes(WORLD[i]['image']))
            line['image'] = f'images/{i}.png'
        lines.append(json.dumps(line))
    lines += ['{"id": "broken", "caption": ', json.dumps({'id': 'no-image', **record(task, 0), 'image': 'gone.png'})]
    if task not in IMAGE_TASKS:
        lines[-1] = json.dumps({'id': 'not-a-dict', 'text': 5})  # a text task's bad record: a non-string text
    paths['jsonl'] = str(folder / f'{task}.jsonl')
    (folder / f'{task}.jsonl').write_text('\n'.join(lines) + '\n')
    if task == 'vqa':  # the answer list, as OFA ships it (an {answer: label} pickle) and as JSON
        answers = sorted({a for i in range(ROWS) for a in WORLD[i]['answers']})
        (folder / 'trainval_ans2label.pkl').write_bytes(pickle.dumps({a: i for i, a in enumerate(answers)}))
        (folder / 'answers.json').write_text(json.dumps(answers))
    return paths


def write_unlabeled_vqa(fmt: str, folder) -> str:
    """The scenes' VQA questions without answers, as VQA test-dev / test-std give them, question ids 1000 + i, in the
    folder write_data filled: the file's path."""
    path = folder / f'vqa_test.{fmt}'
    if fmt == 'tsv':
        rows = [tsv_row('vqa', i) for i in range(ROWS)]
        path.write_text(
            ''.join('\t'.join([str(1000 + i), *row[1:3], '', *row[4:]]) + '\n' for i, row in enumerate(rows))
        )
    else:
        lines = [
            {'id': str(1000 + i), 'question': record('vqa', i)['question'], 'image': f'images/{i}.png'}
            for i in range(ROWS)
        ]
        path.write_text(''.join(json.dumps(line) + '\n' for line in lines))
    return str(path)


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, '-m', *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, f'{args[:3]}:\n{result.stderr[-4000:]}'
    return result


@pytest.fixture(scope='module')
def environment(tmp_path_factory):
    """Subprocess environment (the tests' compilation cache, every program cached) and OFA-Tiny converted from a
    PyTorch checkpoint."""
    from reference import tiny_reference, torch  # noqa: PLC0415 - the PyTorch reference loads only here

    folder = tmp_path_factory.mktemp('finetune')
    env = {
        **os.environ,
        'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
        'JAX_PLATFORMS': 'cpu',
    }
    torch.save({'model': tiny_reference().state_dict()}, folder / 'ofa_tiny.pt')
    result = run(['ofa_jax.convert', str(folder / 'ofa_tiny.pt'), str(folder / 'converted')], env)
    assert (folder / 'converted' / 'config.json').exists(), result.stdout
    return env, folder


def overrides(task: str, fmt: str, path: str) -> list[str]:
    answers = []
    if task == 'vqa':  # trained over the answers' trie, evaluated by scoring every answer
        answers = [
            f'--config.data.tasks.vqa.answers={os.path.dirname(path)}/'
            + ('trainval_ans2label.pkl' if fmt == 'tsv' else 'answers.json')
        ]
    return [
        f'--config.data.tasks.{task}.path={path}',
        f'--config.data.tasks.{task}.format={fmt}',
        f'--config.data.image_size={SIZE}',
        '--config.data.workers=0',
        '--config.model_overrides.dtype=float32',
        *answers,
    ]


# A task's two formats (and the text tasks, which share programs) run one after the other in one test process
# (tests/run.sh distributes by xdist group), so the second finds its programs in the compilation cache.
CASES = [
    pytest.param(task, fmt, id=f'{task}-{fmt}', marks=pytest.mark.xdist_group(task if task in IMAGE_TASKS else 'text'))
    for task in IMAGE_TASKS + TEXT_TASKS
    for fmt in (('tsv', 'jsonl') if task in IMAGE_TASKS else ('jsonl',))
]


@pytest.mark.parametrize('task, fmt', CASES)
def test_convert_train_evaluate_predict(environment, task, fmt):
    env, folder = environment
    path = write_data(task, folder / f'{task}_{fmt}')[fmt]
    config = f'configs/finetune.py:{task},tiny'
    workdir = folder / f'{task}_{fmt}' / 'workdir'
    validation = []  # a task with a metric is validated at its last step on the training file, the best kept
    if task in METRIC:
        validation = [
            '--config.validation.every=2',
            '--config.validation.every_epochs=0',  # VQA's recipe validates once an epoch
            '--config.validation.max_examples=4',
            f'--config.data.tasks.{task}.valid_path={path}',
        ]
    run(
        [
            'ofa_jax.train',
            '--config',
            config,
            f'--workdir={workdir}',
            f'--config.init_from={folder / "converted"}',
            '--config.epochs=0',
            '--config.total_steps=2',
            '--config.batch_size=4',
            '--config.log_every=1',
            '--config.checkpoint_every=2',
            *overrides(task, fmt, path),
            *validation,
        ],
        env,
    )
    logged = train.read_metrics(str(workdir))
    assert [row['step'] for row in logged] == [1, 2] and all(np.isfinite(row['loss']) for row in logged)
    if task in METRIC:
        assert logged[-1][f'validation/{METRIC[task]}'] >= 0 and logged[-1][f'validation/{task}_examples'] == 4
        assert (workdir / train.BEST_DIR / 'checkpoints' / '2').is_dir()
    assert logged[-1]['learning_rate'] > 0  # the recipe's warmup follows the shortened run
    assert (workdir / 'checkpoints' / '2').is_dir()

    evaluation = folder / f'{task}_{fmt}' / 'evaluation'
    run(
        [
            'ofa_jax.evaluate',
            '--config',
            config,
            f'--checkpoint={workdir}',
            f'--workdir={evaluation}',
            '--batch_size=4',
            *overrides(task, fmt, path),
        ],
        env,
    )
    scores = json.loads((evaluation / 'metrics.json').read_text())
    predictions = [json.loads(line) for line in (evaluation / 'predictions.jsonl').read_text().splitlines()]
    if task == 'summarization':  # no automatic metric: nothing is scored
        assert scores == {} and predictions == []
    else:
        assert 0.0 <= scores[METRIC[task]] <= 10.0
        assert (scores[f'{task}_examples'], scores[f'{task}_dropped']) == (ROWS, CORRUPT)
        assert len(predictions) == ROWS and {p['task'] for p in predictions} == {task}
    if task == 'vqa':  # every answer of the list scored, one of them chosen
        answers = json.loads((folder / f'{task}_{fmt}' / 'answers.json').read_text())
        assert {p['prediction'] for p in predictions} <= set(answers)
        # Questions without answers (test-dev): answered, not scored, and written as the server's result file.
        unlabeled = write_unlabeled_vqa(fmt, folder / f'{task}_{fmt}')
        test = folder / f'{task}_{fmt}' / 'test_dev'
        command = ['ofa_jax.evaluate', '--config', config, f'--checkpoint={workdir}', f'--workdir={test}']
        run([*command, '--batch_size=4', *overrides(task, fmt, unlabeled)], env)
        scores = json.loads((test / 'metrics.json').read_text())
        assert scores == {'vqa_examples': ROWS, 'vqa_dropped': 0, 'vqa_unlabeled': ROWS}
        results = json.loads((test / 'vqa_results.json').read_text())
        assert [r['question_id'] for r in results] == [1000 + i for i in range(ROWS)]
        assert all(isinstance(r['answer'], str) for r in results) and {r['answer'] for r in results} <= set(answers)

    if fmt == 'jsonl' and task in IMAGE_TASKS:
        return  # predict reads no data file: the task's TSV case runs it

    image = folder / f'{task}_{fmt}' / 'scene.png'
    image.write_bytes(png_bytes(WORLD[0]['image']))
    given = record(task, 0)
    command = ['ofa_jax.predict', f'--checkpoint={workdir}', '--task', task, '--beam_size', '2']
    if task in IMAGE_TASKS:
        command += ['--image', str(image)]
    text = {
        'vqa': 'question',
        'grounding': 'text',
        'snli_ve': 'hypothesis',
        'mnli': 'hypothesis',
        'rte': 'hypothesis',
        'qqp': 'hypothesis',
        'sst2': 'text',
        'summarization': 'text',
    }.get(task)
    if text:
        command += ['--text', given[text]]
    if task in ('mnli', 'rte', 'qqp'):
        command += ['--premise', given['premise']]
    if task == 'classification':
        (folder / 'labels.txt').write_text('red square\nblue circle\ngreen triangle\n' + given['label'] + '\n')
        command += ['--answers', str(folder / 'labels.txt')]
    if task == 'grounding':
        command += ['--draw', str(folder / f'{task}_{fmt}' / 'boxes.png')]
    (result,) = json.loads(run(command, env).stdout)
    assert 'error' not in result and RESULT[task] in result and np.isfinite(result['score'])
    if task == 'grounding':
        assert len(result['box']) == 4 and os.path.exists(result['drawing'])
    if task in ('snli_ve', 'sst2', 'mnli', 'rte', 'qqp'):
        assert result['answer'] in ('yes', 'no', 'maybe', 'positive', 'negative')
