"""What the commands print: a quiet training console (its own lines, no library INFO logs, no deprecation warnings),
one line for a bad flag or config value, the evaluation as a table, and the demo's picture of every task."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, load_config
from PIL import Image

from ofa_jax import demo, evaluate
from ofa_jax.data import mixtures
from ofa_jax.data.world import World

pytestmark = pytest.mark.xdist_group('console')


def command(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize(
    'flag, named',
    [
        ('--config.nosuch=1', 'nosuch'),
        ('--config.model=huger', 'huger'),
        ('--config.batch_size=lots', 'lots'),
        # A key a config dict lacks: named with the argument that asked for it.
        ('--config.model_overrides.d_model=128', "no key 'd_model' (--config.model_overrides.d_model)"),
    ],
)
def test_a_bad_config_value_ends_with_one_line_naming_it(tmp_path, flag, named):
    result = command('ofa_jax.train', '--config', 'configs/demo.py', f'--workdir={tmp_path}', flag)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('python -m ofa_jax.train: error:') and named in lines[0], lines


def assert_own_lines_only(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert 'Warning' not in output and 'INFO' not in output and 'WARNING' not in output, output[-3000:]
    # absl's lines start with I or W and the date (I1202 03:12:15.4 ...); none may reach the console.
    assert not [line for line in output.splitlines() if line[:1] in 'IW' and line[1:5].isdigit()], output[-3000:]


def test_training_and_evaluation_print_their_own_lines_only(tmp_path):
    small = ('--config.data.world_size=20',)
    result = command(
        'ofa_jax.train',
        '--config',
        'configs/demo.py',
        f'--workdir={tmp_path}',
        '--config.total_steps=2',
        '--config.log_every=1',
        '--config.batch_size=4',
        *small,
    )
    assert_own_lines_only(result)
    steps = [line for line in result.stdout.splitlines() if line.startswith('step ')]
    assert [line.split(':')[0] for line in steps] == ['step 1', 'step 2']
    assert all('loss' in line and 'examples/s' in line for line in steps)
    # Reading the training workdir back (its steps also hold the input position) warns of nothing.
    result = command(
        'ofa_jax.evaluate',
        '--config',
        'configs/demo.py',
        f'--checkpoint={tmp_path}',
        f'--workdir={tmp_path / "evaluation"}',
        '--max_examples=2',
        *small,
    )
    assert_own_lines_only(result)
    assert 'caption' in result.stdout, result.stdout


def test_scores_read_as_a_table_of_tasks():
    table = evaluate.scores_table(
        {
            'caption_cider': 1.5,
            'caption_exact_match': 0.25,
            'caption_examples': 8,
            'caption_dropped': 0,
            'grounded_caption_exact_match': 0.5,
            'grounded_caption_examples': 8,
            'grounded_caption_dropped': 1,
            'vqa_accuracy': 0.75,
            'vqa_examples': 6,
            'vqa_dropped': 0,
            'vqa_unlabeled': 2,
        }
    )
    assert table.splitlines() == [
        'task              metrics',
        'caption           cider 1.500, exact_match 0.250  (8 examples)',
        'grounded_caption  exact_match 0.500  (8 examples, 1 dropped)',
        'vqa               accuracy 0.750  (6 examples, 2 unscored: no answers)',
    ]


def test_the_demo_picture_shows_every_task_without_cutting_a_word(tmp_path):
    config = load_config('demo')
    world = World(size=4, seed=1000, image_size=64)
    tokenizer = mixtures.world_tokenizer(config.data)
    predictions = {}
    for i in range(4):
        record = world[i]

        def line(task, prediction, instruction=''):
            predictions.setdefault(task, []).append(
                {'id': record['id'], 'prediction': prediction, 'instruction': instruction}
            )

        line('caption', 'a red square and a green circle and a yellow triangle and a blue square')
        line('vqa', 'many')
        line('grounding', record['region'].tolist())
        line('grounded_caption', 'the red square')
        line('itm', 'yes', 'does the image describe " a red square "?')
        line('detection', [record['boxes'].tolist(), record['labels']])
        line('image_infill', [int(c) for c in np.arange(16) % tokenizer.num_codes])
        line('text_infill', 'there are two shapes .', 'what is the complete text of " there are <mask> shapes . "?')
    path = tmp_path / 'predictions.png'
    demo._draw(world, predictions, tokenizer, str(path))
    picture = np.asarray(Image.open(path))
    assert picture.shape[1] == 4 * (64 * demo.SCALE + 16)
    # The predicted boxes (red) and the infilled centre are drawn.
    assert np.any(np.all(picture == (255, 0, 0), axis=-1))
    wrapped = demo._wrapped(['caption: ' + predictions['caption'][0]['prediction']], 42)
    assert (
        len(wrapped) > 1
        and ' '.join(wrapped).split() == ('caption: ' + predictions['caption'][0]['prediction']).split()
    )
    assert all(len(part) <= 42 for part in wrapped)


def test_the_demo_prints_its_evaluation_as_a_table(tmp_path, capsys):
    scores = {'caption_exact_match': 1.0, 'caption_examples': 2, 'caption_dropped': 0}
    assert demo._report(scores, str(tmp_path)) == scores
    printed = capsys.readouterr().out
    assert 'evaluation.json' in printed and 'caption  exact_match 1.000  (2 examples)' in printed
