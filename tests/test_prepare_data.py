"""The annotation files people have (COCO captions, VQA v2, RefCOCO) become JSONL a finetuning task reads."""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, load_config
from PIL import Image

from ofa_jax import prepare_data
from ofa_jax.data import mixtures, pipeline, sources
from ofa_jax.data.tasks import resize_transform
from ofa_jax.data.vocab import default_vocabulary

VOCAB = default_vocabulary()


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / 'train2014'
    folder.mkdir()
    for image_id in (1, 2):
        pixels = np.full((40, 60, 3), 50 * image_id, np.uint8)
        Image.fromarray(pixels).save(folder / f'COCO_train2014_{image_id:012d}.jpg')
    return folder


def coco_images() -> list[dict]:
    return [{'id': i, 'file_name': f'COCO_train2014_{i:012d}.jpg'} for i in (1, 2, 3)]  # image 3 has no file


def run(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, '-m', 'ofa_jax.prepare_data', *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def examples(path, kind: str) -> list[dict]:
    source = sources.JsonlSource(path)
    steps = mixtures.finetune_preprocessors(kind, VOCAB, resize_transform(32))
    out = []
    for i in range(len(source)):
        example = source[i]
        for step in steps:
            example = step(example, np.random.default_rng(i))
        out.append(example)
    return out


def test_coco_captions_per_caption_and_per_image(tmp_path, images):
    annotations = tmp_path / 'captions_train2014.json'
    annotations.write_text(
        json.dumps(
            {
                'images': coco_images(),
                'annotations': [
                    {'id': 10, 'image_id': 1, 'caption': 'A dog on the grass.'},
                    {'id': 11, 'image_id': 1, 'caption': 'A brown dog.'},
                    {'id': 12, 'image_id': 2, 'caption': 'Two cats.'},
                    {'id': 13, 'image_id': 3, 'caption': 'An image that is missing.'},
                    {'id': 14, 'image_id': 99, 'caption': 'No such image.'},
                ],
            }
        )
    )
    out = tmp_path / 'data' / 'train.jsonl'
    counts = run('coco_captions', '--annotations', str(annotations), '--images', str(images), '--out', str(out))
    assert counts['written'] == 3
    assert counts['skipped'] == {'missing_image': 1, 'caption_of_unknown_image': 1}
    captions = examples(out, 'caption')
    assert [VOCAB.decode(e['target_ids']).strip() for e in captions] == [
        'A dog on the grass',
        'A brown dog',
        'Two cats',
    ]  # OFA's caption_dataset deletes punctuation and keeps case in training targets
    assert captions[0]['references'] == ['A dog on the grass.', 'A brown dog.'] and captions[0]['image'].shape == (
        32,
        32,
        3,
    )
    per_image = tmp_path / 'data' / 'val.jsonl'
    run(
        'coco_captions',
        '--annotations',
        str(annotations),
        '--images',
        str(images),
        '--out',
        str(per_image),
        '--per_image',
    )
    rows = [json.loads(line) for line in per_image.read_text().splitlines()]
    assert [(r['id'], len(r['references'])) for r in rows] == [('1', 2), ('2', 1)]


def test_vqa_answers_carry_their_vqa_accuracy(tmp_path, images):
    questions = tmp_path / 'questions.json'
    questions.write_text(
        json.dumps(
            {
                'data_subtype': 'train2014',
                'questions': [
                    {'question_id': 100, 'image_id': 1, 'question': 'What animal is it?'},
                    {'question_id': 101, 'image_id': 2, 'question': 'How many cats?'},
                    {'question_id': 102, 'image_id': 2, 'question': 'Unanswered?'},
                ],
            }
        )
    )
    annotations = tmp_path / 'annotations.json'
    annotations.write_text(
        json.dumps(
            {
                'annotations': [
                    {'question_id': 100, 'answers': [{'answer': 'dog'}] * 8 + [{'answer': 'puppy'}] * 2},
                    {'question_id': 101, 'answers': [{'answer': '2'}] * 3 + [{'answer': 'two'}] * 7},
                ]
            }
        )
    )
    out = tmp_path / 'vqa.jsonl'
    counts = run(
        'vqa',
        '--questions',
        str(questions),
        '--annotations',
        str(annotations),
        '--images',
        str(images),
        '--out',
        str(out),
    )
    assert counts == {'written': 2, 'skipped': {'question_without_answers': 1}, 'out': str(out)}
    first, second = examples(out, 'vqa')
    assert first['answers'] == {'dog': 1.0, 'puppy': pytest.approx(0.6)}
    assert VOCAB.decode(first['target_ids']).strip() == 'dog' and first['loss_weight'] == 1.0
    assert VOCAB.decode(first['source_ids']).strip() == 'what animal is it?'
    assert second['answers'] == {'2': pytest.approx(0.9), 'two': 1.0}


def test_vqa_test_dev_questions_have_no_answers_and_are_kept_by_evaluation_only(tmp_path):
    folder = tmp_path / 'test2015'
    folder.mkdir()
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(folder / f'COCO_test2015_{7:012d}.jpg')
    questions = tmp_path / 'questions.json'
    asked = [{'question_id': 7000, 'image_id': 7, 'question': 'Is it raining?'}]
    questions.write_text(json.dumps({'data_subtype': 'test2015', 'questions': asked}))
    out = tmp_path / 'vqa_test-dev.jsonl'
    assert run('vqa', '--questions', str(questions), '--images', str(folder), '--out', str(out)) == {
        'written': 1,
        'skipped': {},
        'out': str(out),
    }
    config = load_config('finetune', 'vqa,tiny')
    config.data.tasks.vqa.update(format='jsonl', path=str(out))
    config.data.image_size = 32
    (task,), _ = mixtures.register_from_config(config.data)
    # Training drops the question (no target to learn); evaluation answers it from its inputs.
    (dropped,) = pipeline.example_stream([task], [1.0], seed=0, repeat=False)
    assert dropped == pipeline.Dropped(f'{task.name}/missing_answers')
    (example,) = pipeline.example_stream([task], [1.0], seed=0, repeat=False, keep_unlabeled=True)
    assert VOCAB.decode(example['source_ids']).strip() == 'is it raining?' and 'target_ids' not in example
    assert example['image'].shape == (32, 32, 3) and example['id'] == '7000'


@pytest.mark.parametrize('refs_format', ['pickle', 'json'])
def test_refcoco_refs_of_one_split_with_their_boxes(tmp_path, images, refs_format):
    refs = [
        {
            'ref_id': 5,
            'ann_id': 50,
            'image_id': 1,
            'split': 'train',
            'sentences': [{'sent_id': 0, 'sent': 'the dog on the left'}, {'sent_id': 1, 'sent': 'left dog'}],
        },
        {'ref_id': 6, 'ann_id': 60, 'image_id': 2, 'split': 'val', 'sentences': [{'sent_id': 2, 'sent': 'a cat'}]},
    ]
    path = tmp_path / ('refs(unc).p' if refs_format == 'pickle' else 'refs.json')
    if refs_format == 'pickle':
        path.write_bytes(pickle.dumps(refs, protocol=2))
    else:
        path.write_text(json.dumps(refs))
    instances = tmp_path / 'instances.json'
    instances.write_text(
        json.dumps(
            {
                'images': coco_images(),
                'annotations': [
                    {'id': 50, 'image_id': 1, 'bbox': [4, 6, 20, 10]},
                    {'id': 60, 'image_id': 2, 'bbox': [0, 0, 10, 10]},
                ],
            }
        )
    )
    out = tmp_path / 'refcoco.jsonl'
    counts = run(
        'refcoco',
        '--refs',
        str(path),
        '--instances',
        str(instances),
        '--images',
        str(images),
        '--split',
        'train',
        '--out',
        str(out),
    )
    assert counts['written'] == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r['region'] for r in rows] == [[4.0, 6.0, 24.0, 16.0]] * 2 and rows[1]['text'] == 'left dog'
    grounding = examples(out, 'grounding')
    assert all(len(e['target_ids']) == 4 for e in grounding)


def test_a_pickle_with_code_is_not_run_and_bad_files_name_themselves(tmp_path, images):
    class Payload:
        def __reduce__(self):
            return (exec, ("open('pwned', 'w').write('x')",))

    hostile = tmp_path / 'refs(unc).p'
    hostile.write_bytes(pickle.dumps([Payload()]))
    instances = tmp_path / 'instances.json'
    instances.write_text(json.dumps({'images': coco_images(), 'annotations': []}))
    counts = prepare_data.write(
        prepare_data.refcoco(str(hostile), str(instances), 'train'), str(images), str(tmp_path / 'out.jsonl')
    )
    assert (counts['written'], counts['skipped']) == (0, {'not_a_ref': 1})
    assert not (tmp_path / 'pwned').exists() and not (ROOT / 'pwned').exists()
    (tmp_path / 'wrong.json').write_text(json.dumps({'info': {}}))
    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'ofa_jax.prepare_data',
            'coco_captions',
            '--annotations',
            str(tmp_path / 'wrong.json'),
            '--images',
            str(images),
            '--out',
            str(tmp_path / 'x.jsonl'),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "missing ['images', 'annotations']" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one clear line, no traceback


def test_index_keeps_the_line_index_a_training_start_reads(tmp_path, monkeypatch, capsys):
    path = tmp_path / 'vqa.tsv'
    path.write_text('0\t\tq\ta\n1\t\tq\ta\n2\t\tq\ta\n')
    (tmp_path / 'unwritable.tsv').write_text('0\t\tq\ta\n')
    sources.index_path(tmp_path / 'unwritable.tsv').mkdir()  # a folder where its index would go
    prepare_data.main(['index', str(path), str(tmp_path / 'unwritable.tsv')])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == [
        {'file': str(path), 'rows': 3, 'index': str(sources.index_path(path))},
        {'file': str(tmp_path / 'unwritable.tsv'), 'rows': 1, 'index': None},
    ]
    monkeypatch.setattr(sources, 'line_offsets', lambda p: pytest.fail(f'{p} read end to end again'))
    assert len(sources.OFATsvSource(path, 'vqa', num_columns=None)) == 3
    with pytest.raises(SystemExit, match=r'prepare_data index: .*missing\.tsv'):
        prepare_data.main(['index', str(tmp_path / 'missing.tsv')])
