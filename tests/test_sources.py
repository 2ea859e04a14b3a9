"""Data sources: OFA's TSV layouts, JSON lines and TFDS mappings into the raw record schema; random access, pickling,
malformed rows reported as '_error', and reading through grain."""

import base64
import io
import json
import operator
import pickle

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags
from conftest import FakeSplit
from PIL import Image

from ofa_jax.data import sources
from ofa_jax.data.sources import JsonlSource, OFATsvSource, TfdsSource


def png(color: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new('RGB', size, color).save(buffer, format='PNG')
    return buffer.getvalue()


RED, BLUE = png((255, 0, 0)), png((0, 0, 255), (3, 5))


def b64(data: bytes) -> str:
    """As OFA's TSVs store images (its loader reads URL-safe and standard base64 alike)."""
    return base64.urlsafe_b64encode(data).decode()


def write_tsv(tmp_path, rows, name='data.tsv', end='\n') -> str:
    path = tmp_path / name
    path.write_bytes(end.join('\t'.join(row) for row in rows).encode() + end.encode())
    return str(path)


def assert_fields(record: dict, expected: dict) -> None:
    """`record` has exactly the expected fields (besides source and record) with equal values."""
    assert set(record) - {'source', 'record'} == set(expected), sorted(record)
    for key, value in expected.items():
        if isinstance(value, np.ndarray):
            assert record[key].dtype == value.dtype and record[key].shape == value.shape, key
            np.testing.assert_allclose(record[key], value, err_msg=key)
        else:
            assert record[key] == value, key


# One row per kind, columns in the order of OFA's released files, and the record it must give.
TSV_CASES = {
    'caption': (
        ['101', '12455', 'the sun sets over the docks.&&a dock at sunset', 'sky&&water', b64(RED)],
        {
            'id': '101',
            'image': RED,
            'caption': 'the sun sets over the docks.',
            'references': ['the sun sets over the docks.', 'a dock at sunset'],
        },
    ),
    'vqa': (
        ['79459', '12', 'is this person wearing shorts?', '0.6|!+no&&1.0|!+yes', 'house&&short', b64(RED)],
        {
            'id': '79459',
            'image': RED,
            'question': 'is this person wearing shorts?',
            'answers': {'no': 0.6, 'yes': 1.0},
            'objects': ['house', 'short'],
        },
    ),
    'refcoco': (
        ['7', '580', 'man in red', '10.5,20,30.25,40', b64(RED)],
        {'id': '7', 'image': RED, 'text': 'man in red', 'region': np.array([10.5, 20, 30.25, 40], np.float32)},
    ),
    'snli_ve': (
        ['3', '99', b64(RED), 'two dogs play', 'dogs run in a park', 'entailment'],
        {
            'id': '3',
            'image': RED,
            'hypothesis': 'two dogs play',
            'premise': 'dogs run in a park',
            'label': 'entailment',
        },
    ),
    'imagenet': (
        [b64(RED), '769', 'rugby ball'],
        {'id': '0', 'image': RED, 'label': 'rugby ball', 'caption': 'rugby ball'},
    ),
    'pretrain_text': (['5', 'the complete text'], {'id': '5', 'text': 'the complete text'}),
    'pretrain_image': (
        ['6', b64(RED), '1 2 3 8191'],
        {'id': '6', 'image': RED, 'codes': np.array([1, 2, 3, 8191], np.int32)},
    ),
    'pretrain_detection': (
        ['8', b64(RED), '1,2,3,4,1,person&&5.5,6,7,8,10,traffic light, red'],
        {
            'id': '8',
            'image': RED,
            'boxes': np.array([[1, 2, 3, 4], [5.5, 6, 7, 8]], np.float32),
            'labels': ['person', 'traffic light, red'],
        },
    ),
}

PRETRAIN_VL_CASES = [
    (
        ['1', b64(RED), 'a cat on a mat', '', '', 'cat&&mat', 'coco', 'caption'],
        {
            'id': '1',
            'image': RED,
            'caption': 'a cat on a mat',
            'objects': ['cat', 'mat'],
            'dataset': 'coco',
            'type': 'caption',
        },
    ),
    (
        ['2', b64(RED), '', 'what color is the cat?', '0.9|!+black&&0.3|!+gray', 'cat', 'vqav2', 'qa'],
        {
            'id': '2',
            'image': RED,
            'question': 'what color is the cat?',
            'answers': {'black': 0.9, 'gray': 0.3},
            'objects': ['cat'],
            'dataset': 'vqav2',
            'type': 'qa',
        },
    ),
    (
        ['3', b64(RED), 'the black cat', '', '1,2,30,40', '', 'refcoco', 'visual_grounding'],
        {
            'id': '3',
            'image': RED,
            'text': 'the black cat',
            'region': np.array([1, 2, 30, 40], np.float32),
            'dataset': 'refcoco',
            'type': 'visual_grounding',
        },
    ),
]


@pytest.mark.parametrize('kind', sorted(TSV_CASES))
def test_tsv_kind_parses_into_schema(tmp_path, kind):
    row, expected = TSV_CASES[kind]
    source = OFATsvSource(write_tsv(tmp_path, [row]), kind)
    assert len(source) == 1
    record = source[0]
    assert record['source'] == 'data' and record['record'] == 0
    assert_fields(record, expected)


def test_tsv_pretrain_vl_rows_by_type(tmp_path):
    source = OFATsvSource(write_tsv(tmp_path, [row for row, _ in PRETRAIN_VL_CASES]), 'pretrain_vl')
    for i, (_, expected) in enumerate(PRETRAIN_VL_CASES):
        assert_fields(source[i], expected)


def test_tsv_reads_standard_base64_and_crlf_lines(tmp_path):
    row = ['7', '580', 'man', '1,2,3,4', base64.b64encode(BLUE).decode()]
    source = OFATsvSource(write_tsv(tmp_path, [row, row], end='\r\n'), 'refcoco')
    assert source[1]['image'] == BLUE and source[1]['region'].tolist() == [1, 2, 3, 4]


def test_tsv_selected_cols_and_plain_text_lines(tmp_path):
    # OFA's caption stage 2 keys rows by image-id: selected_cols=1,4,2.
    row, _ = TSV_CASES['caption']
    assert OFATsvSource(write_tsv(tmp_path, [row]), 'caption', selected_cols='1,4,2')[0]['id'] == '12455'
    # A corpus of one text a line, without ids.
    path = tmp_path / 'corpus.txt'
    path.write_text('first line\nsecond\tline with a tab\n')
    corpus = OFATsvSource(path, 'pretrain_text', selected_cols=(None, 0))
    assert [corpus[i]['text'] for i in range(len(corpus))] == ['first line', 'second']
    assert [corpus[i]['id'] for i in range(len(corpus))] == ['0', '1']
    vqa_row, _ = TSV_CASES['vqa']
    assert 'objects' not in OFATsvSource(write_tsv(tmp_path, [vqa_row], 'vqa.tsv'), 'vqa', (0, 5, 2, 3, None))[0]
    no_type = OFATsvSource(write_tsv(tmp_path, [PRETRAIN_VL_CASES[0][0]], 'vl.tsv'), 'pretrain_vl', '0,1,2,3,4,5,6,')
    assert no_type[0]['_error'].startswith('type:')
    with pytest.raises(ValueError, match='selected_cols'):
        OFATsvSource(path, 'caption', selected_cols='0,4')
    with pytest.raises(ValueError, match='unknown OFA TSV kind'):
        OFATsvSource(path, 'gigaword')


def test_tsv_random_access_equals_sequential(tmp_path):
    rows = [
        [str(i), b64(png((i, 2 * i, 3 * i), (1 + i % 5, 2))), ' '.join(map(str, range(1 + i * 37 % 11)))]
        for i in range(40)
    ]
    path = tmp_path / 'many.tsv'
    path.write_bytes('\n'.join('\t'.join(row) for row in rows).encode())  # the last line has no newline
    source = OFATsvSource(path, 'pretrain_image')
    assert len(source) == 40
    sequential = [source[i] for i in range(len(source))]
    order = np.random.default_rng(0).permutation(len(source))
    for i in order:
        assert source[int(i)]['id'] == sequential[i]['id'] == str(i)
        assert source[int(i)]['image'] == sequential[i]['image']
        np.testing.assert_array_equal(source[int(i)]['codes'], np.arange(1 + i * 37 % 11))
    with pytest.raises(IndexError):
        source[40]
    with pytest.raises(IndexError):
        source[-1]


def test_line_offsets_stream_in_chunks(tmp_path):
    path = tmp_path / 'lines.txt'
    path.write_bytes(b'a\n\nbcd\nefghij\nk')
    np.testing.assert_array_equal(sources.line_offsets(path, chunk_bytes=3), [0, 2, 3, 7, 14, 15])
    np.testing.assert_array_equal(sources.line_offsets(path), sources.line_offsets(path, chunk_bytes=3))
    (tmp_path / 'empty.txt').write_bytes(b'')
    assert len(sources.line_offsets(tmp_path / 'empty.txt')) == 1


def test_a_files_line_index_is_built_once_and_rebuilt_when_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / 'lines.jsonl'
    path.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert len(JsonlSource(path)) == 2 and sources.index_path(path).exists()
    built = []
    real = sources.line_offsets
    monkeypatch.setattr(sources, 'line_offsets', lambda p: built.append(p) or real(p))
    assert len(JsonlSource(path)) == 2 and built == []  # read from the index, not the file
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n')
    assert len(JsonlSource(path)) == 3 and len(built) == 1
    assert JsonlSource(path)[2]['text'] == 'c' and len(built) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ['lines.jsonl', 'lines.jsonl.index.npz']
    # An index that cannot be written (here a folder stands in its place) only costs the cache.
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'lines.jsonl').write_text('{"text": "a"}\n')
    sources.index_path(other / 'lines.jsonl').mkdir()
    assert JsonlSource(other / 'lines.jsonl')[0]['text'] == 'a'
    assert sorted(p.name for p in other.iterdir()) == ['lines.jsonl', 'lines.jsonl.index.npz']


def test_tsv_pickles_and_reads_in_the_copy(tmp_path):
    source = OFATsvSource(write_tsv(tmp_path, [TSV_CASES['vqa'][0]] * 3), 'vqa')
    first = source[2]  # the original has its file open
    copy = pickle.loads(pickle.dumps(source))
    assert_fields(copy[2], {k: v for k, v in first.items() if k not in ('source', 'record')})
    assert "kind='vqa'" in repr(copy) and 'rows=3' in repr(copy)


def test_tsv_malformed_rows_name_the_field(tmp_path):
    image = b64(RED)
    rows = {
        'row': ['1', '2', 'too few columns', image],
        'region': ['2', '2', 'man', '1,2,x,4', image],
        'image': ['4', '2', 'man', '1,2,3,4', 'not base64!'],
    }
    source = OFATsvSource(write_tsv(tmp_path, list(rows.values()) + [['5', '2', 'ok', '1,2,3,4', image]]), 'refcoco')
    for i, field in enumerate(rows):
        record = source[i]
        assert record['_error'].startswith(f'{field}:'), record
        assert record['source'] == 'data' and record['record'] == i
    assert '_error' not in source[3]
    assert source[1]['id'] == '2'  # the id survives when its column parsed

    vqa = OFATsvSource(
        write_tsv(tmp_path, [['1', '2', 'q?', 'high|!+yes', '', image], ['2', '2', 'q?', 'yes', '', image]], 'vqa.tsv'),
        'vqa',
    )
    assert vqa[0]['_error'].startswith('answers:') and 'high' in vqa[0]['_error']
    assert vqa[1]['_error'].startswith('answers:')

    vl = OFATsvSource(write_tsv(tmp_path, [['1', image, 'c', '', '', '', 'coco', 'ocr']], 'vl.tsv'), 'pretrain_vl')
    assert vl[0]['_error'].startswith('type:')
    det = OFATsvSource(write_tsv(tmp_path, [['1', image, '1,2,3,person']], 'det.tsv'), 'pretrain_detection')
    assert det[0]['_error'].startswith('boxes:')
    codes = OFATsvSource(write_tsv(tmp_path, [['1', image, '1 2 x']], 'img.tsv'), 'pretrain_image')
    assert codes[0]['_error'].startswith('codes:')

    path = tmp_path / 'latin1.tsv'
    path.write_bytes(b'1\tcaf\xe9\n')
    assert OFATsvSource(path, 'pretrain_text')[0]['_error'].startswith('text:')


def test_tsv_column_count_checks(tmp_path):
    row, _ = TSV_CASES['caption']
    path = write_tsv(tmp_path, [row + ['extra']])
    assert OFATsvSource(path, 'caption')[0]['_error'] == 'row: 6 columns, expected 5'
    assert '_error' not in OFATsvSource(path, 'caption', num_columns=None)[0]
    assert OFATsvSource(path, 'caption', selected_cols='0,4,2')[0]['_error'].startswith('row:')  # the default
    assert '_error' not in OFATsvSource(path, 'caption', selected_cols=(1, 4, 2))[0]  # custom: no exact count


def test_jsonl_with_image_folder(tmp_path):
    (tmp_path / 'images').mkdir()
    (tmp_path / 'images' / 'a.png').write_bytes(RED)
    lines = [
        {
            'id': 1,
            'image': 'a.png',
            'caption': 'a red square',
            'region': [1, 2, 3, 4],
            'boxes': [[1, 2, 3, 4]],
            'labels': ['square'],
            'answers': {'red': 1},
            'candidates': ['red', 'blue'],
            'passage': 'kept',
        },
        {'text': 'plain text'},
        {'id': 'm', 'image': 'missing.png'},
        {'region': [1, 2, 3]},
        {'answers': {'red': 'high'}},
        [1, 2],
    ]
    path = tmp_path / 'data.jsonl'
    path.write_text('\n'.join(json.dumps(line) for line in lines) + '\n{not json\n')
    source = JsonlSource(path, image_root=tmp_path / 'images')
    assert len(source) == 7
    assert_fields(
        source[0],
        {
            'id': '1',
            'image': RED,
            'caption': 'a red square',
            'region': np.array([1, 2, 3, 4], np.float32),
            'boxes': np.array([[1, 2, 3, 4]], np.float32),
            'labels': ['square'],
            'answers': {'red': 1.0},
            'candidates': ['red', 'blue'],
            'passage': 'kept',
        },
    )
    assert_fields(source[1], {'id': '1', 'text': 'plain text'})
    errors = [source[i]['_error'] for i in range(2, 7)]
    assert [e.split(':')[0] for e in errors] == ['image', 'region', 'answers', 'json', 'json']
    assert source[2]['id'] == 'm' and source[6]['record'] == 6
    copy = pickle.loads(pickle.dumps(source))
    assert copy[0]['image'] == RED and 'rows=7' in repr(copy)
    # Without image_root, paths are relative to the JSONL file's folder.
    assert JsonlSource(path)[0]['_error'].startswith('image:')


# ---- TFDS --------------------------------------------------------------------------------------------------------

IMAGE = np.zeros((100, 200, 3), np.uint8)  # height 100, width 200


def text_array(*texts: str) -> np.ndarray:
    """Text features as TFDS decodes them without TensorFlow: object arrays of UTF-8 bytes."""
    return np.array([t.encode() for t in texts], object)


def ref_coco_example() -> dict:
    # Nested sequences decode ragged: a list with one array per object.
    return {
        'image': IMAGE,
        'image/id': np.int64(580),
        'objects': {
            'id': np.array([11, 12]),
            'area': np.array([5, 6]),
            'label': np.array([1, 1]),
            'bbox': np.array([[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1]], np.float32),
            'gt_box_index': np.array([0, 1]),
            'mask': [b'png', b'png'],
            'refexp': {
                'raw': [text_array('left man', 'man on left'), text_array('whole thing')],
                'refexp_id': [np.array([7, 8]), np.array([9])],
            },
        },
        'coco_annotations': {
            'id': np.array([11, 12]),
            'area': np.array([5, 6]),
            'label': np.array([1, 1]),
            'bbox': np.array([[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1]], np.float32),
        },
    }


def clevr_example(answers: bool = True) -> dict:
    return {
        'image': IMAGE,
        'file_name': b'CLEVR_train_000001.png',
        'objects': {
            'color': np.array([4]),
            'material': np.array([1]),
            'shape': np.array([0]),
            'size': np.array([1]),
            'rotation': np.array([0.5], np.float32),
            '3d_coords': np.zeros((1, 3), np.float32),
            'pixel_coords': np.zeros((1, 3), np.float32),
        },
        'question_answer': {
            'question': text_array('how many cubes?', 'is it red?'),
            'answer': text_array('1', 'yes') if answers else text_array(),
        },
    }


def test_tfds_box_to_pixels():
    np.testing.assert_allclose(sources.tfds_box_to_pixels(np.array([0.1, 0.2, 0.5, 0.6]), 100, 200), [40, 10, 120, 50])


def test_tfds_mappings_on_feature_shaped_examples():
    objects = {
        'id': np.array([1, 2]),
        'area': np.array([3, 4]),
        'is_crowd': np.array([False, False]),
        'bbox': np.array([[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1]], np.float32),
        'label': np.array([0, 2]),
    }
    coco = {'image': IMAGE, 'image/filename': b'000000000009.jpg', 'image/id': np.int64(9), 'objects': objects}
    assert_fields(
        sources.coco_detection_record(coco, ['person', 'bicycle', 'car']),
        {
            'id': '9',
            'image': IMAGE,
            'labels': ['person', 'car'],
            'boxes': np.array([[40, 10, 120, 50], [0, 0, 200, 100]], np.float32),
        },
    )
    empty = {**coco, 'objects': {k: v[:0] for k, v in objects.items()}}
    record = sources.coco_detection_record(empty, ['person'])
    assert record['boxes'].shape == (0, 4) and record['labels'] == []

    captions = {**coco, 'captions': {'id': np.array([31, 32]), 'text': text_array('a man rides', 'a cyclist')}}
    assert_fields(
        sources.coco_captions_record(captions, 1),
        {'id': '9', 'image': IMAGE, 'caption': 'a cyclist', 'references': ['a man rides', 'a cyclist']},
    )

    example = ref_coco_example()
    assert sources.TFDS_MAPPINGS['ref_coco'].items(example) == [(0, 0), (0, 1), (1, 0)]
    assert_fields(
        sources.ref_coco_record(example, 0, 1),
        {'id': '580-8', 'image': IMAGE, 'text': 'man on left', 'region': np.array([40, 10, 120, 50], np.float32)},
    )
    assert_fields(
        sources.ref_coco_record(example, 1, 0),
        {'id': '580-9', 'image': IMAGE, 'text': 'whole thing', 'region': np.array([0, 0, 200, 100], np.float32)},
    )

    assert_fields(
        sources.clevr_record(clevr_example(), 1),
        {'id': 'CLEVR_train_000001.png-1', 'image': IMAGE, 'question': 'is it red?', 'answers': {'yes': 1.0}},
    )
    assert 'answers' not in sources.clevr_record(clevr_example(answers=False), 0)

    imagenet = {'image': IMAGE, 'label': np.int64(1), 'file_name': b'n01443537_1.JPEG'}
    assert_fields(
        sources.imagenet_record(imagenet, ['tench', 'goldfish']),
        {'id': 'n01443537_1.JPEG', 'image': IMAGE, 'label': 'goldfish', 'caption': 'goldfish'},
    )


@pytest.mark.parametrize('name', ['ref_coco', 'clevr', 'imagenet2012'])
def test_tfds_mappings_on_mock_examples(name):
    """The mappings read examples with the structure TFDS gives (mock values are random and need not agree)."""
    with tfds.testing.mock_data(num_examples=2):
        data = tfds.data_source(name, split='train')
        mapping = sources.TFDS_MAPPINGS[name]
        names = list(data.dataset_info.features['label'].names) if mapping.label else []
        example = data[0]
    items = mapping.items(example) if mapping.items else [(0, 0)]
    assert items
    record = mapping.record(example, items[0], names)
    assert isinstance(record['id'], str) and record['image'].dtype == np.uint8
    text_field = {'ref_coco': 'text', 'clevr': 'question', 'imagenet2012': 'label'}[name]
    assert isinstance(record[text_field], str)
    if name == 'ref_coco':
        assert record['region'].shape == (4,) and record['region'].dtype == np.float32
    if name == 'imagenet2012':
        assert record['label'] in names


def mock_split(examples: list):
    def as_data_source(builder, split, **kwargs):
        return FakeSplit(examples, builder.info.features)

    return tfds.testing.mock_data(as_data_source_fn=as_data_source)


def test_tfds_source_flattens_items_and_pickles():
    second = ref_coco_example()
    second['image/id'] = np.int64(581)
    no_objects = {**ref_coco_example(), 'objects': {**second['objects'], 'refexp': {'raw': [], 'refexp_id': []}}}
    with mock_split([ref_coco_example(), no_objects, second]):
        source = TfdsSource('ref_coco/refcoco_unc', 'train')
        per_example = TfdsSource('ref_coco/refcoco_unc', 'train', per_example=True)
    assert len(source) == 6 and source.examples_without_items == 1
    assert [source[i]['id'] for i in range(6)] == ['580-7', '580-8', '580-9', '581-7', '581-8', '581-9']
    assert source[4]['source'] == 'ref_coco/refcoco_unc:train' and source[4]['record'] == 4
    # One record per example, the first expression; the example without any is reported, not skipped.
    assert len(per_example) == 3 and per_example[0]['id'] == '580-7' and per_example[2]['id'] == '581-7'
    assert per_example[1]['_error'].startswith('region:')
    copy = pickle.loads(pickle.dumps(source))
    assert_fields(copy[2], {k: v for k, v in source[2].items() if k not in ('source', 'record')})
    assert 'records=6' in repr(copy) and 'examples=3' in repr(copy) and 'examples_without_items=1' in repr(copy)
    with pytest.raises(IndexError):
        source[6]


def test_tfds_source_clevr_imagenet_and_bad_examples():
    with mock_split([clevr_example(), {'image': IMAGE, 'file_name': b'x.png'}]):
        clevr = TfdsSource('clevr', 'train')
    assert [clevr[i]['question'] for i in range(2)] == ['how many cubes?', 'is it red?']
    assert len(clevr) == 3 and clevr[2]['_error'] == "example: KeyError: 'question_answer'"
    with mock_split([{'image': IMAGE, 'label': np.int64(0), 'file_name': b'a.JPEG'}, {'file_name': b'b.JPEG'}]):
        imagenet = TfdsSource('imagenet2012', 'validation')
        named = TfdsSource('imagenet2012', 'validation', label_names=['tench'] + ['other'] * 999)
    assert imagenet[0]['label'] == 'n01440764'  # TFDS names ImageNet classes by WordNet id
    assert named[0]['caption'] == 'tench'
    assert named[1]['_error'].startswith('example:') and named[1]['record'] == 1
    with pytest.raises(ValueError, match='no record mapping'):
        TfdsSource('mnist', 'train')


# ---- grain -------------------------------------------------------------------------------------------------------


def caption_length(record: dict) -> int:
    return len(record['caption'])


def test_grain_reads_a_source(tmp_path):
    rows = [[str(i), '0', 'c' * (i + 1), '', b64(RED)] for i in range(6)]
    source = OFATsvSource(write_tsv(tmp_path, rows), 'caption')
    dataset = grain.MapDataset.source(source).map(caption_length)
    assert [dataset[i] for i in range(len(dataset))] == [1, 2, 3, 4, 5, 6]
    shuffled = grain.MapDataset.source(source).shuffle(seed=3).map(caption_length)
    assert sorted(shuffled) == [1, 2, 3, 4, 5, 6]


def test_grain_worker_processes_read_a_pickled_source(tmp_path):
    rows = [[str(i), '0', f'caption {i}', '', b64(RED)] for i in range(5)]
    source = OFATsvSource(write_tsv(tmp_path, rows), 'caption')
    source[0]  # the parent's open file must not travel
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside an absl app, use their defaults
        flags.FLAGS.mark_as_parsed()
    stream = grain.MapDataset.source(source).map(operator.itemgetter('caption')).to_iter_dataset()
    assert list(stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=1))) == [r[2] for r in rows]
