"""The input pipeline on the embedded world: determinism, resume, sharding, mixing, drops, and every task's form."""

import collections
import json
import struct
import zlib

import numpy as np
import pytest
from conftest import ofa_pretraining_files, png_base64

from ofa_jax.data import boxes, mixtures, pipeline, tasks
from ofa_jax.data.image_codes import PatchCodebook
from ofa_jax.data.registry import DropExample, Task, TaskRegistry, get_tasks
from ofa_jax.data.vocab import BOS, EOS, PAD, default_vocabulary
from ofa_jax.data.world import BACKGROUND, COLORS, SHAPES, World, WorldText, colors_drawn
from ofa_jax.train_config import data_config, finetune_task_config

# One test process builds this module's fixtures once (tests/run.sh distributes by group).
pytestmark = pytest.mark.xdist_group('data')

SPEC = pipeline.BatchSpec(batch_size=8, image_size=64, max_source_length=48, max_target_length=24)


@pytest.fixture(scope='module')
def vocab():
    return default_vocabulary()  # the bundled copy of OFA's files


@pytest.fixture(scope='module')
def world():
    return World(size=300, image_size=64)


@pytest.fixture(scope='module')
def codebook(world):
    return PatchCodebook.fit(np.stack([world[i]['image'] for i in range(24)]), num_codes=64)


@pytest.fixture(scope='module')
def world_tasks(vocab, world, codebook):
    """Every world task by kind, and the mixture's tasks and rates, as registered (other tests may register the
    world's names again, so the tasks are kept rather than looked up later)."""
    mixture = mixtures.register_world(vocab, world, codebook)
    names = mixture.task_names + [mixtures.world_task_name('text_to_image')]
    return {TaskRegistry.get(name).kind: TaskRegistry.get(name) for name in names}, get_tasks(mixture.name)


@pytest.fixture(scope='module')
def world_mixture(world_tasks):
    return world_tasks[1]


def take(dataset, n):
    iterator = iter(dataset)
    return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x['dropped'], x['cut']) == (y['dropped'], y['cut'])
        for key in x:
            if key not in pipeline.HOST_KEYS:
                np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_same_seed_same_batches_other_seed_others(world_mixture):
    task_list, rates = world_mixture
    first = take(pipeline.batches(task_list, rates, SPEC, seed=3), 4)
    assert_same_batches(first, take(pipeline.batches(task_list, rates, SPEC, seed=3), 4))
    other = take(pipeline.batches(task_list, rates, SPEC, seed=4), 4)
    assert not all(np.array_equal(a['src_tokens'], b['src_tokens']) for a, b in zip(first, other))


def test_restored_iterator_continues_identically(world_mixture):
    task_list, rates = world_mixture
    dataset = pipeline.batches(task_list, rates, SPEC, seed=0)
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(3)]
    restored = iter(pipeline.batches(task_list, rates, SPEC, seed=0))
    restored.set_state(state)
    assert_same_batches([next(restored) for _ in range(3)], expected)


def test_worker_processes_give_the_same_batches(world_mixture):
    task_list, rates = world_mixture
    assert_same_batches(
        take(pipeline.batches(task_list, rates, SPEC, seed=1, workers=2), 3),
        take(pipeline.batches(task_list, rates, SPEC, seed=1), 3),
    )


def test_batches_from_worker_processes_resume_exactly(world_mixture):
    # The workers send uint8 images, normalized in a prefetching thread here: its state must be the consumer's.
    task_list, rates = world_mixture
    iterator = iter(pipeline.batches(task_list, rates, SPEC, seed=2, workers=2))
    for _ in range(2):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(2)]
    restored = iter(pipeline.batches(task_list, rates, SPEC, seed=2, workers=2))
    restored.set_state(state)
    assert_same_batches([next(restored) for _ in range(2)], expected)
    assert expected[0]['patch_images'].dtype == np.float32 and expected[0]['patch_images'].min() >= -1


def test_process_shards_partition_the_stream(world_mixture):
    task_list, rates = world_mixture
    whole = pipeline.example_stream(task_list, rates, seed=0)
    shards = [pipeline.example_stream(task_list, rates, seed=0, shard_index=i, shard_count=2) for i in range(2)]
    for i in range(6):
        assert shards[i % 2][i // 2]['source_ids'] == whole[i]['source_ids']


def test_mixture_proportions(world_mixture):
    task_list, rates = world_mixture
    counts = collections.Counter()
    for batch in take(pipeline.batches(task_list, rates, SPEC, seed=0), 40):
        counts.update(batch['task_ids'][batch['example_mask']].tolist())
    total = sum(counts.values())
    for i, rate in enumerate(rates):
        expected = rate / sum(rates)
        assert abs(counts[i] / total - expected) <= 3 * np.sqrt(expected * (1 - expected) / total) + 0.01


def test_every_template_as_ofa_writes_it(vocab, world_mixture):
    task_list, _ = world_mixture
    world = task_list[0].source
    rng = np.random.default_rng(0)
    assert [t.name for t in task_list] == [mixtures.world_task_name(t.kind) for t in task_list]
    sources = {t.kind: vocab.decode(t.preprocess(t.source[7], rng)['source_ids']) for t in task_list}
    record = world[7]
    assert sources['caption'] == ' what does the image describe?'
    assert sources['grounding'] == f' which region does the text " {record["text"]} " describe?'
    assert sources['grounded_caption'].startswith('  what does the region describe? region:<bin_')
    assert sources['itm'].startswith(' does the image describe " ') and sources['itm'].endswith(' "?')
    assert sources['vqa'] == ' ' + record['question']
    assert sources['detection'] == ' what are the objects in the image?'
    assert sources['image_infill'] == ' what is the image in the middle part?'
    assert sources['text_infill'].startswith(' what is the complete text of "')
    assert sources['text_infill'].endswith(' "?') and '<mask>' in sources['text_infill']
    assert tasks.SNLI_VE == ' does the image describe " {} "?'
    assert tasks.TEXT_TO_IMAGE.format('a cat') == ' what is the complete image? caption: a cat'


def test_targets_follow_the_scene(vocab, world_mixture):
    task_list, _ = world_mixture
    by_name = {t.kind: t for t in task_list}
    world = by_name['caption'].source
    rng = np.random.default_rng(0)
    record = world[11]
    caption = by_name['caption'].preprocess(record, rng)
    assert vocab.decode(caption['target_ids']) == ' ' + record['caption']
    grounding = by_name['grounding'].preprocess(record, rng)
    box = boxes.tokens_to_box(grounding['target_ids'], vocab)
    assert np.abs(box - record['region']).max() <= 512 / 999 / 2 + 1e-6  # world images are the model's size
    vqa = by_name['vqa'].preprocess(record, rng)
    assert vocab.decode(vqa['target_ids']) == ' ' + next(iter(record['answers']))
    detection = by_name['detection'].preprocess(record, rng)
    assert sum(vocab.is_bin(t) for t in detection['target_ids']) == 4 * len(record['labels'])
    infill = by_name['image_infill'].preprocess(record, rng)
    assert len(infill['target_ids']) == (64 // 2 // 8) ** 2 and infill['code_target']
    assert np.all(infill['image'][16:48, 16:48] == 0) and infill['image'].min() >= -1
    answers = collections.Counter(
        vocab.decode(by_name['itm'].preprocess(world[i], np.random.default_rng(i))['target_ids']) for i in range(200)
    )
    assert 70 <= answers[' yes'] <= 130 and answers[' yes'] + answers[' no'] == 200


# The raw input of each world task's instruction, by the example field it is kept in after preprocessing.
INSTRUCTION_FIELDS = {
    'vqa': {'question': 'question'},
    'grounding': {'text': 'text'},
    'grounded_caption': {'region': 'region'},
    'itm': {'text': 'itm_text'},
    'text_infill': {'text': 'masked_text'},
    'text_to_image': {'text': 'caption'},
}


def test_training_sources_are_the_declared_instructions_with_their_constraints(vocab, world_tasks):
    """What training feeds the model is what the task declarations (and so the API) build from the same inputs."""
    by_kind, _ = world_tasks
    assert set(by_kind) == set(mixtures.WORLD_RATES) | {'text_to_image'}
    for kind, task in by_kind.items():
        declared = tasks.TASKS[kind]
        for i in range(12):
            example = task.preprocess(task.source[i], np.random.default_rng(i))
            inputs = {name: example[field] for name, field in INSTRUCTION_FIELDS.get(kind, {}).items()}
            assert example['source_ids'] == declared.source_ids(vocab, **inputs), (kind, i)
            # The world trains grounding and image infilling under their constraints (OFA's recipes do not).
            assert example.get('constraint') == declared.constraint, kind
            if declared.constraint:
                assert example['constraint_range'] == vocab.constraint_range(declared.constraint), kind
            else:
                assert 'constraint_range' not in example, kind
    assert tasks.TASKS['grounding'].constraint == 'bins' and tasks.TASKS['image_infill'].constraint == 'codes'
    with pytest.raises(ValueError, match='missing'):
        tasks.TASKS['grounding'].source_ids(vocab)
    with pytest.raises(ValueError, match="unknown \\['question'\\]"):
        tasks.TASKS['caption'].source_ids(vocab, question='what is it?')


def test_batches_carry_each_rows_constraint_range(vocab, world_mixture):
    task_list, rates = world_mixture
    expected = {
        i: vocab.constraint_range(tasks.TASKS[t.kind].constraint)
        if tasks.TASKS[t.kind].constraint
        else pipeline.UNCONSTRAINED
        for i, t in enumerate(task_list)
    }
    seen = set()
    for batch in take(pipeline.batches(task_list, rates, SPEC, seed=0), 12):
        for row in np.flatnonzero(batch['example_mask']):
            task_id = int(batch['task_ids'][row])
            assert tuple(batch['constraint_ranges'][row]) == tuple(expected[task_id]), task_list[task_id].name
            seen.add(task_list[task_id].kind)
    assert {'grounding', 'image_infill', 'caption'} <= seen
    empty = pipeline.to_batch([], SPEC, [])
    assert np.all(empty['constraint_ranges'] == pipeline.UNCONSTRAINED) and not empty['example_mask'].any()


def test_long_pretraining_targets_keep_what_ofa_keeps(vocab):
    text = ' '.join(f'word{i}' for i in range(400))  # 2 tokens a word
    example = tasks.text_infill(vocab, max_tokens=256, keep_last=True)({'text': text}, np.random.default_rng(0))
    # OFA keeps the last 256 of the first 512 tokens: words 128 .. 255.
    assert vocab.decode(example['target_ids']).split() == [f'word{i}' for i in range(128, 256)]
    boxes = np.tile([[1.0, 2.0, 30.0, 40.0]], (20, 1)).astype(np.float32)
    record = {'boxes': boxes, 'labels': ['dog'] * 20, 'image': np.zeros((8, 8, 3), np.float32)}
    example = tasks.detection(vocab, max_tokens=23)(record, np.random.default_rng(0))
    assert len(example['target_ids']) == 20  # whole objects only: four of five tokens


def test_text_infill_masks_about_thirty_percent_of_words(vocab):
    corpus = WorldText(World(size=50, image_size=64))
    step = tasks.text_infill(vocab)
    ratios = []
    for i in range(50):
        example = step(corpus[i], np.random.default_rng(i))
        assert vocab.decode(example['target_ids']).split() == corpus[i]['text'].split()
        # One mask token per masked span, and the masked text is the text with each span as '<mask>'.
        shown = example['masked_text'].split()
        assert example['source_ids'].count(vocab.mask_id) == shown.count(tasks.MASK) > 0
        words, kept_words = iter(corpus[i]['text'].split()), [w for w in shown if w != tasks.MASK]
        assert all(w in words for w in kept_words)  # the words left, in order
        kept = len(example['source_ids']) - len(vocab.encode(' what is the complete text of "')) - 2
        ratios.append(1 - kept / len(example['target_ids']))
    assert 0.15 < np.mean(ratios) < 0.5


def test_box_bins_survive_resizing_within_half_a_bin(vocab):
    world = World(size=40, image_size=64)
    for size in (96, 384, 480):
        transform = tasks.transform_image(tasks.resize_transform(size), with_region=True)
        for i in range(40):
            record = world[i]
            moved = transform(record, np.random.default_rng(i))
            bins = boxes.quantize(moved['region'])
            back = boxes.dequantize(bins, scale=size / 64)
            assert np.abs(back - record['region']).max() <= (512 / 999 / 2) / (size / 64) + 1e-6


class BadRecords:
    """Records with one problem each, then good ones."""

    def __init__(self):
        self.world = World(size=20, image_size=64)

    def __len__(self):
        return 20

    def __getitem__(self, index):
        record = dict(self.world[index])
        if index == 0:
            record['image'] = b'not an image'
        elif index == 1:
            record['caption'] = '  '
        elif index == 2:
            record['region'] = np.array([10, 10, 500, 20], np.float32)
        elif index == 3:
            record['_error'] = 'column 3 (region): could not parse "x"'
        return record

    def __repr__(self):
        return 'BadRecords()'


def test_bad_records_are_counted_by_reason_or_fail_strictly(vocab):
    steps = (
        tasks.decode_image,
        tasks.require_text('caption', 'text'),
        tasks.transform_image(tasks.resize_transform(64), with_region=True),
        tasks.grounding(vocab),
    )
    task = Task('bad_grounding', BadRecords(), steps)
    spec = pipeline.BatchSpec(batch_size=16, image_size=64, max_source_length=48, max_target_length=8)
    batch = next(iter(pipeline.batches([task], [1.0], spec, seed=0, repeat=False)))
    assert batch['dropped'] == {
        'bad_grounding/undecodable_image': 1,
        'bad_grounding/empty_caption': 1,
        'bad_grounding/region_outside_image': 1,
        'bad_grounding/malformed_record': 1,
    }
    assert batch['example_mask'].sum() == 16
    with pytest.raises(ValueError, match=r'bad_grounding.*BadRecords\(\).*record 0.*undecodable_image'):
        next(iter(pipeline.batches([task], [1.0], spec, seed=0, repeat=False, strict=True)))


def test_examples_too_long_are_cut_as_ofa_cuts_them_and_counted():
    """A source past max_source_length or a target past max_target_length is cut (the target keeps its eos), the
    example trained, and each cut counted by task and reason in the batch, as dropped records are."""
    spec = pipeline.BatchSpec(batch_size=4, image_size=8, max_source_length=6, max_target_length=5)

    def example(source, target):
        return {'task': 'long', 'source_ids': source, 'target_ids': target}

    records = [
        example([10, 11, 12, 13], [20, 21, 22, 23]),  # bos + 4 + eos = 6; bos + 4 = 5 decoder positions: whole
        example([10, 11, 12, 13, 14], [20]),  # source one past
        example([10], [20, 21, 22, 23, 24, 25]),  # target two past
        example([10, 11, 12, 13, 14], [20, 21, 22, 23, 24]),  # both
    ]
    (batch,) = pipeline.batches(
        [Task('long', records, [lambda record, rng: record])], [1.0], spec, seed=0, repeat=False
    )
    assert batch['cut'] == {'long/source_cut_to_max_source_length': 2, 'long/target_cut_to_max_target_length': 2}
    assert batch['dropped'] == {} and batch['example_mask'].all()
    np.testing.assert_array_equal(batch['src_tokens'][1], [BOS, 10, 11, 12, 13, EOS])
    np.testing.assert_array_equal(batch['target_tokens'][2], [20, 21, 22, 23, EOS])
    np.testing.assert_array_equal(batch['target_tokens'][0], [20, 21, 22, 23, EOS])


def declared_png(width: int, height: int, rows: int = 1) -> bytes:
    """A PNG whose header declares width x height black RGB pixels and whose data holds `rows` rows of them."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress((b'\0' + bytes(3 * width)) * rows)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', pixels) + chunk(b'IEND', b'')


@pytest.mark.parametrize('width, height', [(8000, 5001), (20_000, 20_000)])  # past the limit; past PIL's own check
def test_an_image_bomb_is_dropped_unread(width, height):
    bomb = declared_png(width, height)
    assert len(bomb) < 100_000
    with pytest.raises(DropExample) as dropped:
        tasks.decode_image({'image': bomb}, np.random.default_rng(0))
    assert dropped.value.reason == 'image_too_large'
    small = tasks.decode_image({'image': declared_png(4, 3, rows=3)}, np.random.default_rng(0))['image']
    assert small.shape == (3, 4, 3)


def test_finite_pipeline_pads_its_last_batch(vocab):
    task = Task(
        'few_captions',
        World(size=5, image_size=64),
        (tasks.decode_image, tasks.transform_image(tasks.resize_transform(64)), tasks.caption(vocab)),
    )
    (batch,) = list(pipeline.batches([task], [1.0], SPEC, seed=0, repeat=False))
    assert batch['example_mask'].tolist() == [True] * 5 + [False] * 3
    assert np.all(batch['src_tokens'][5:] == 1) and batch['patch_masks'].tolist() == [True] * 5 + [False] * 3
    prev, target = batch['prev_output_tokens'][:5], batch['target_tokens'][:5]
    assert np.all(prev[:, 0] == 0) and np.all((target == 2).sum(1) == 1)
    shifted = prev[:, 1:] != 1
    np.testing.assert_array_equal(prev[:, 1:][shifted], target[:, :-1][shifted])


def test_world_is_deterministic_and_drawn_where_it_says():
    world = World(size=30, image_size=64, seed=5)
    for i in range(30):
        record = world[i]
        np.testing.assert_array_equal(record['image'], World(size=30, image_size=64, seed=5)[i]['image'])
        for box, label in zip(record['boxes'], record['labels']):
            x0, y0, x1, y1 = box
            cx, cy = int((x0 + x1) / 2), int(y0 + 0.65 * (y1 - y0))  # inside a triangle too
            assert tuple(record['image'][cy, cx]) == COLORS[label.split()[0]]
            assert label in record['caption']
    assert World(seed=6, image_size=64)[0]['caption'] != World(seed=5, image_size=64)[0][
        'caption'
    ] or not np.array_equal(World(seed=6, image_size=64)[0]['image'], World(seed=5, image_size=64)[0]['image'])


def test_world_questions_ask_about_every_shape_colour_and_kind():
    """The kind of question and its subject vary independently (once both cycled with the index: every "is there"
    question asked about a triangle, every colour question of a three-shape scene about its leftmost shape)."""
    world = World(size=600, image_size=64)
    asked, places = set(), set()
    for i in range(len(world)):
        record, shapes = world[i], world.shapes(i)
        question, answer = record['question'], next(iter(record['answers']))
        if question.startswith('is there a '):
            asked.add((*question[len('is there a ') : -1].split(), answer))
        elif question.startswith('what color is the ') and len(shapes) == 3 and answer != 'many':
            places.add(next(p for p, s in enumerate(shapes) if s.color == answer and question.endswith(f' {s.kind}?')))
    assert {(c, k) for c, k, _ in asked} == {(c, k) for c in COLORS for k in SHAPES}
    assert {a for *_, a in asked} == {'yes', 'no'}
    assert places == {0, 1, 2}


def test_patch_codebook_round_trip_and_persistence(tmp_path):
    world = World(size=16, image_size=64)
    images = np.stack([world[i]['image'] for i in range(16)])
    codebook = PatchCodebook.fit(images, num_codes=128)
    codes = codebook.encode(images)
    assert codes.shape == (16, 8, 8) and codes.max() < 128
    assert np.abs(codebook.decode(codes).astype(int) - images).mean() < 8
    codebook.save(tmp_path / 'codebook.npz')
    np.testing.assert_array_equal(PatchCodebook.load(tmp_path / 'codebook.npz').encode(images), codes)


def test_registry_rejects_duplicates_and_unknown_names():
    task = Task('unique_task_name', World(size=2), ())
    TaskRegistry.add(task)
    with pytest.raises(ValueError, match='already registered'):
        TaskRegistry.add(task)
    with pytest.raises(ValueError, match='unknown task'):
        TaskRegistry.get('no_such_task')


def test_drop_example_carries_its_reason():
    error = DropExample('empty_caption', 'record 3')
    assert error.reason == 'empty_caption' and 'record 3' in str(error)


def test_finetuning_tasks_from_a_config_read_ofa_tsv(tmp_path, vocab):
    world = World(size=4, image_size=64)
    rows = []
    for i in range(4):
        x0, y0, x1, y1 = world[i]['region']
        rows.append(f'{i}\t{i}\t{world[i]["text"]}\t{x0},{y0},{x1},{y1}\t{png_base64(world[i]["image"])}')
    (tmp_path / 'refcoco.tsv').write_text('\n'.join(rows) + '\n')
    data = data_config('tasks')
    data.image_size = 96
    data.tasks = {
        'grounding': finetune_task_config('grounding', name='tsv_grounding', path=str(tmp_path / 'refcoco.tsv'))
    }
    assert data.tasks.grounding.tsv_kind == 'refcoco'
    (task,), rates = mixtures.register_from_config(data)
    assert (task.name, task.kind) == ('tsv_grounding', 'grounding')
    example = task.preprocess(task.source[2], np.random.default_rng(0))
    assert example['image'].shape == (96, 96, 3) and rates == [1.0]
    assert vocab.decode(example['source_ids']) == tasks.GROUNDING.format(tasks.clean_text(world[2]['text']))
    assert 'constraint' not in example  # OFA's RefCOCO trains over the whole vocabulary
    back = boxes.tokens_to_box(example['target_ids'], default_vocabulary(), scale=96 / 64)
    assert np.abs(back - world[2]['region']).max() <= 512 / 999 / 2 / (96 / 64) + 1e-3


def test_ofa_pretraining_mixture_over_its_tsv_files(tmp_path, vocab):
    world = World(size=9, image_size=64)
    question = world[1]['question']
    x0, y0, x1, y1 = world[2]['region']
    paths = ofa_pretraining_files(tmp_path, world)
    data = data_config('ofa_pretrain')
    data.update(dict(image_size=64, **{f'{role}_path': str(path) for role, path in paths.items()}))
    assert data.extra_image_size == 256  # OFA's image infilling and detection images
    data.extra_image_size = 48
    task_list, rates = mixtures.register_from_config(data)
    by_name = dict(zip([t.name for t in task_list], task_list))
    assert dict(zip(by_name, rates)) == {
        'ofa_vl_first': 8,
        'ofa_vl_second': 8,
        'ofa_text_infill': 2,
        'ofa_image_infill': 1,
        'ofa_detection': 1,
    }
    # The vision-language tasks mix row types; the others are one declared task each.
    assert {name: task.kind for name, task in by_name.items()} == {
        'ofa_vl_first': '',
        'ofa_vl_second': '',
        'ofa_text_infill': 'text_infill',
        'ofa_image_infill': 'image_infill',
        'ofa_detection': 'detection',
    }

    def sample(task_name, index, seed=0):
        task = by_name[task_name]
        example = task.preprocess(task.source[index], np.random.default_rng(seed))
        return vocab.decode(example['source_ids']), example

    assert sample('ofa_vl_first', 0)[0] == tasks.CAPTION
    source, vqa = sample('ofa_vl_first', 1)
    assert source == ' ' + tasks.clean_text(question) and vqa['loss_weight'] == 0.9  # the answer's confidence
    assert vocab.decode(vqa['target_ids']) == ' blue'
    # A CC12M caption's first two target tokens are not trained on (OFA's unify_dataset.py); a COCO one's are.
    spec = pipeline.BatchSpec(batch_size=2, image_size=64, max_source_length=48, max_target_length=24)
    captions = pipeline.to_batch([sample('ofa_vl_first', 4)[1], sample('ofa_vl_first', 0)[1]], spec, list(by_name))
    cc12m, coco = sample('ofa_vl_first', 4)[1]['target_ids'], sample('ofa_vl_first', 0)[1]['target_ids']
    np.testing.assert_array_equal(captions['target_tokens'][0, : len(cc12m) + 1], [PAD, PAD, *cc12m[2:], EOS])
    np.testing.assert_array_equal(captions['prev_output_tokens'][0, : len(cc12m) + 1], [BOS, *cc12m])
    np.testing.assert_array_equal(captions['target_tokens'][1, : len(coco) + 1], [*coco, EOS])
    assert sample('ofa_vl_first', 2)[0] == tasks.GROUNDING.format(tasks.clean_text(world[2]['text']))
    assert sample('ofa_vl_second', 2)[0].startswith(tasks.GROUNDED_CAPTION)
    seen = collections.Counter()
    for seed in range(12):
        text, example = sample('ofa_vl_second', 1, seed)
        answer = vocab.decode(example['target_ids'])
        assert example['loss_weight'] == 0.9  # the copy of the VQA sample keeps its confidence
        if answer == ' yes':
            assert text == tasks.ANSWER_MATCH.format(tasks.clean_text(question), 'blue')
        else:
            assert text == tasks.ANSWER_MATCH.format(tasks.clean_text(question), 'red') and answer == ' no'
        text, example = sample('ofa_vl_second', 0, seed)
        assert text.startswith(' does the image describe "')
        seen[answer] += 1
    assert set(seen) == {' yes', ' no'}
    infill = sample('ofa_image_infill', 0)[1]
    assert infill['target_ids'] == [vocab.code_id(i) for i in range(16)] and infill['image'].shape == (48, 48, 3)
    source, detection = sample('ofa_detection', 0)
    assert source == tasks.DETECTION and detection['image'].shape == (48, 48, 3)
    assert sample('ofa_text_infill', 0)[0].startswith(' what is the complete text of "')

    # OFA's extra samples (text, image, detection) form a sub-batch of their own, weighted 2: a fifth of the rows.
    assert [t.name for t in task_list if t.extra] == ['ofa_text_infill', 'ofa_image_infill', 'ofa_detection']
    spec = pipeline.BatchSpec(
        batch_size=10, image_size=64, max_source_length=48, max_target_length=24,
        extra_max_source_length=64, extra_max_target_length=40, extra_image_size=48,
    )  # fmt: skip
    dataset = pipeline.batches(task_list, rates, spec, seed=0)
    iterator = iter(dataset)
    batch = next(iterator)
    assert batch['patch_images'].shape == (8, 64, 64, 3) and batch['target_tokens'].shape == (8, 24)
    extra = batch['extra']
    assert extra['src_tokens'].shape == (2, 64) and extra['target_tokens'].shape == (2, 40)
    assert extra['patch_images'].shape == (2, 48, 48, 3)
    assert {task_list[i].name for i in extra['task_ids']} <= {t.name for t in task_list if t.extra}
    assert not {task_list[i].extra for i in batch['task_ids']} - {False} and np.all(extra['loss_weights'] == 2.0)
    assert all(reason.endswith('/bad_type') for reason in batch['dropped'])
    # Both streams resume where they were.
    state = iterator.get_state()
    following = next(iterator)
    again = iter(dataset)
    again.set_state(state)
    resumed = next(again)
    for key in ('src_tokens', 'target_tokens'):
        np.testing.assert_array_equal(resumed[key], following[key])
        np.testing.assert_array_equal(resumed['extra'][key], following['extra'][key])
    with pytest.raises(ValueError, match='extra sub-batch'):
        pipeline.batches(task_list, rates, pipeline.BatchSpec(8, 64, 48, 24), seed=0)
    data.vision_language_path = str(tmp_path / 'missing.tsv')
    with pytest.raises(ValueError, match='vision_language file .*missing.tsv'):
        mixtures.register_from_config(data)


def test_ofa_negative_samples_are_drawn_as_ofa_draws_them(tmp_path, vocab):
    # OFA's unify task reads --neg-sample-dir; unify_dataset.py get_negative_caption / get_negative_answer draw them.
    (tmp_path / 'object.txt').write_text('cat\n\nbird\nhorse\n')
    (tmp_path / 'all_captions.txt').write_text('a red bus\n a green tree \n')
    type2ans = {'what color': ['red', 'blue', 'green'], 'how many': ['1', '2', '3'], 'other': ['yes', 'no', 'maybe']}
    (tmp_path / 'type2ans.json').write_text(json.dumps(type2ans))
    negatives = mixtures.read_negatives(str(tmp_path))
    assert negatives.objects == ('cat', 'bird', 'horse') and negatives.captions == ('a red bus', 'a green tree')

    itm = tasks.itm(vocab, [], negatives.objects, captions=negatives.captions)
    record = {'caption': 'a dog on a sofa', 'objects': ['dog', 'sofa']}
    swapped = {f'a {o} on a sofa' for o in negatives.objects} | {f'a dog on a {o}' for o in negatives.objects}
    seen = collections.Counter()
    for seed in range(200):
        example = itm(record, np.random.default_rng(seed))
        if vocab.decode(example['target_ids']) == ' no':
            text = example['itm_text']
            seen['object' if text in swapped else 'caption' if text in negatives.captions else text] += 1
    assert set(seen) == {'object', 'caption'} and 0.25 < seen['object'] / sum(seen.values()) < 0.55  # OFA's 40%

    def negative_answers(answer: str, confidence: float) -> set[str]:
        match = tasks.answer_match(vocab, [], negatives.type2ans)
        found = set()
        for seed in range(200):
            example = match({'question': 'q', 'answers': {answer: confidence}}, np.random.default_rng(seed))
            assert example['loss_weight'] == confidence
            if vocab.decode(example['target_ids']) == ' no':
                found.add(vocab.decode(example['source_ids']).split('is "')[-1].split('"')[0].strip())
        return found

    assert negative_answers('blue', 1.0) == {'red', 'green', 'yes', 'no'}  # its type's others; 'other' at times
    assert negative_answers('2', 1.0) == {'1', '3', 'yes', 'no'}  # a count one off, or its type's others
    assert negative_answers('zebra', 1.0) == {'yes', 'no'}  # an answer of no type: 'other' (never its last but one)
    (tmp_path / 'type2ans.json').write_text(json.dumps({'what color': ['red', 'blue']}))
    with pytest.raises(ValueError, match="no 'other' question type"):
        mixtures.read_negatives(str(tmp_path))
    (tmp_path / 'object.txt').unlink()
    with pytest.raises(ValueError, match='object.txt is missing'):
        mixtures.read_negatives(str(tmp_path))


def test_the_world_codebook_is_the_same_for_every_world_seed():
    # Evaluating on unseen scenes (another seed) must score codes of the codebook the model was trained with.
    trained, unseen = data_config('world'), data_config('world')
    trained.image_size = unseen.image_size = 32
    unseen.world_seed, unseen.world_size = 1000, 50
    a, b = mixtures.world_tokenizer(trained), mixtures.world_tokenizer(unseen)
    np.testing.assert_array_equal(a.centroids, b.centroids)


def test_colors_drawn_finds_exactly_the_captioned_colours_in_scenes_and_their_codes(world):
    images = np.stack([world[i]['image'] for i in range(100, 140)])
    fitted = mixtures.world_codebook(world)
    redrawn = fitted.decode(fitted.encode(images))
    for i, (image, again) in enumerate(zip(images, redrawn)):
        named = {s.color for s in world.shapes(100 + i)}
        assert colors_drawn(image) == named and colors_drawn(again) == named, world[100 + i]['caption']
    blank = np.full_like(images[0], BACKGROUND)
    assert colors_drawn(blank) == set()
    blank[:2, :2] = COLORS['red']  # a few stray pixels are not a shape
    assert colors_drawn(blank) == set()


def test_text_to_image_targets_are_the_codes_of_the_whole_scene(vocab, world_tasks, codebook):
    task = world_tasks[0]['text_to_image']
    assert task.name == 'world_text_to_image' and task.name not in [t.name for t in world_tasks[1][0]]
    record = task.source[3]
    example = task.preprocess(record, np.random.default_rng(0))
    assert vocab.decode(example['source_ids']) == tasks.TEXT_TO_IMAGE.format(tasks.clean_text(record['caption']))
    assert 'image' not in example and example['code_target'] and example['constraint'] == 'codes'
    assert example['constraint_range'] == vocab.constraint_range('codes') == vocab.code_range()
    assert example['target_ids'] == [vocab.code_id(int(c)) for c in codebook.encode(record['image'][None]).ravel()]
    assert len(example['target_ids']) == (64 // 8) ** 2
    spec = pipeline.BatchSpec(batch_size=4, image_size=64, max_source_length=48, max_target_length=65)
    batch = next(iter(pipeline.batches([task], [1.0], spec, seed=0)))
    assert not batch['patch_masks'].any() and batch['code_masks'].all()
    assert np.all(batch['constraint_ranges'] == vocab.code_range())


def test_instruction_inputs_empty_once_cleaned_drop_the_record():
    vocab = default_vocabulary()
    with pytest.raises(DropExample, match='empty_instruction_input'):
        tasks.vqa(vocab)({'question': '?!', 'answers': {'yes': 1.0}}, np.random.default_rng(0))
    with pytest.raises(DropExample, match='empty_instruction_input'):
        tasks.grounding(vocab)({'text': '...', 'region': [0, 0, 4, 4]}, np.random.default_rng(0))


def test_a_constraint_without_its_range_is_refused():
    example = {'source_ids': [5], 'target_ids': [6], 'task': 't', 'constraint': 'bins'}
    with pytest.raises(ValueError, match="needs its 'constraint_range'"):
        pipeline.to_batch([example], pipeline.BatchSpec(1, 16, 8, 4), ['t'])


def test_a_stream_of_bad_records_alone_stops_naming_them(vocab):
    class Unreadable:
        def __len__(self):
            return 7

        def __getitem__(self, index):
            return {'id': str(index), 'image': b'not an image', 'caption': 'a red square'}

    task = Task('unreadable', Unreadable(), (tasks.decode_image, tasks.caption(vocab)))
    with pytest.raises(
        ValueError, match=r'last 10000 records were all dropped \(unreadable/undecodable_image: 10000\)'
    ):
        next(iter(pipeline.batches([task], [1.0], SPEC, seed=0)))
    # One good record in the mixture keeps the stream alive: its batches come, the bad records counted.
    good = Task(
        'few_captions',
        World(size=5, image_size=64),
        (tasks.decode_image, tasks.transform_image(tasks.resize_transform(64)), tasks.caption(vocab)),
    )
    batch = next(iter(pipeline.batches([task, good], [0.5, 0.5], SPEC, seed=0)))
    assert batch['example_mask'].all() and batch['dropped']['unreadable/undecodable_image'] > 0
