"""Vocabularies and box bins: OFA ids against independent GPT-2 tokenizers, the id layout, SentencePiece, boxes."""

import pathlib
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ofa_jax.data import boxes
from ofa_jax.data import vocab as V

# One test process builds this module's fixtures once (tests/run.sh distributes by group).
pytestmark = pytest.mark.xdist_group('vocab')

REPO = pathlib.Path(__file__).resolve().parents[1]
BPE_DIR = pathlib.Path(V.OFA_BPE_DIR)  # OFA's BPE files, as bundled with the library

TEXTS = [
    ' what does the image describe?',
    'Hello, world! (really?) "quoted" [x] {y} #tag @me 50% a&b',
    "don't I'll we've they're it's",
    '123 4567 3.14159 1,000,000 2024-01-31',
    'Café naïve résumé Ångström façade',
    '東京タワーの写真 北京 서울 Москва',
    'emoji 😀 👍🏽 🇯🇵 👨‍👩‍👧',
    'multiple   spaces   between  words  ',
    '  two leading spaces',
    'line one\nline two\n\nafter a blank line\n',
    'tab\tand\r\nwindows newline',
    'non\u00a0breaking and zero\u200bwidth',
    ' ',
    '',
]


def _gpt2_to_ofa_table() -> dict[int, int]:
    with open(BPE_DIR / 'dict.txt', encoding='utf-8') as f:
        return {int(line.split(' ')[0]): k + 4 for k, line in enumerate(f) if line.split(' ')[0].isdigit()}


@pytest.fixture(scope='module')
def ofa_vocab():
    return V.OFAVocabulary(BPE_DIR)


@pytest.fixture(scope='module')
def slow_gpt2_ids():
    """Reference OFA ids from transformers' pure-Python GPT-2 tokenizer, mapped through dict.txt."""
    from transformers import GPT2Tokenizer

    tokenizer = GPT2Tokenizer(vocab_file=str(BPE_DIR / 'encoder.json'), merges_file=str(BPE_DIR / 'vocab.bpe'))
    table = _gpt2_to_ofa_table()
    return {text: [table[i] for i in tokenizer.encode(text)] for text in TEXTS}


def test_constants_describe_the_ofa_layout():
    assert (V.BOS, V.PAD, V.EOS, V.UNK, V.MASK) == (0, 1, 2, 3, 50264)
    assert V.CODE_OFFSET == V.MASK + 1 and V.BIN_OFFSET == V.CODE_OFFSET + V.NUM_CODES
    assert V.OFA_VOCAB_SIZE == V.BIN_OFFSET + V.NUM_BINS == 59457


@pytest.mark.parametrize('text', TEXTS)
def test_ofa_ids_match_slow_gpt2_tokenizer(ofa_vocab, slow_gpt2_ids, text):
    assert ofa_vocab.encode(text) == slow_gpt2_ids[text]


@pytest.mark.parametrize('text', TEXTS)
def test_ofa_round_trip(ofa_vocab, text):
    assert ofa_vocab.decode(ofa_vocab.encode(text)) == text


def test_ofa_known_ids(ofa_vocab):
    # The caption instruction and caption whose ids ofa_jax/demo.py writes out.
    assert ofa_vocab.encode(' what does the image describe?') == [99, 473, 5, 2274, 6190, 116]
    assert ofa_vocab.encode(' a red square above a blue circle') == [10, 1275, 3925, 1065, 10, 2440, 7922]


@pytest.mark.parity
def test_ofa_matches_modelscope_tokenizer(ofa_vocab, tmp_path, monkeypatch):
    """modelscope's OFATokenizer (a BartTokenizer) over vocab.json in fairseq dictionary order, plus codes and bins."""
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    import reference
    from modelscope.models.multi_modal.ofa import OFATokenizer

    reference.write_tokenizer_files(tmp_path, BPE_DIR)
    tokenizer = OFATokenizer.from_pretrained(str(tmp_path))
    tokenizer.add_tokens([f'<code_{i}>' for i in range(V.NUM_CODES)])
    tokenizer.add_tokens([f'<bin_{i}>' for i in range(V.NUM_BINS)])

    assert len(tokenizer) == ofa_vocab.size
    for text in TEXTS:
        assert ofa_vocab.encode(text) == tokenizer(text, add_special_tokens=False).input_ids, text
    special = ['<s>', '<pad>', '</s>', '<unk>', '<mask>', '<code_0>', '<code_8191>', '<bin_0>', '<bin_999>']
    assert tokenizer.convert_tokens_to_ids(special) == [
        ofa_vocab.bos_id,
        ofa_vocab.pad_id,
        ofa_vocab.eos_id,
        ofa_vocab.unk_id,
        ofa_vocab.mask_id,
        ofa_vocab.code_id(0),
        ofa_vocab.code_id(8191),
        ofa_vocab.bin_id(0),
        ofa_vocab.bin_id(999),
    ]


def test_ofa_special_code_and_bin_ids(ofa_vocab):
    v = ofa_vocab
    assert v.size == V.OFA_VOCAB_SIZE == 59457
    assert (v.bos_id, v.pad_id, v.eos_id, v.unk_id, v.mask_id) == (0, 1, 2, 3, 50264)
    assert (v.code_id(0), v.code_id(8191), v.bin_id(0), v.bin_id(999)) == (50265, 58456, 58457, 59456)
    assert [v.is_code(i) for i in (50264, 50265, 58456, 58457)] == [False, True, True, False]
    assert [v.is_bin(i) for i in (58456, 58457, 59456, 59457)] == [False, True, True, False]
    for bad in (-1, V.NUM_CODES):
        with pytest.raises(ValueError, match='code index'):
            v.code_id(bad)
    with pytest.raises(ValueError, match='bin index'):
        v.bin_id(V.NUM_BINS)
    # Every code of OFA's VQGAN, or the first 256 of a smaller tokenizer: the ids text-to-image samples within.
    assert v.code_range() == (50265, 58457) and v.code_range(256) == (50265, 50521)
    for bad in (0, V.NUM_CODES + 1):
        with pytest.raises(ValueError, match='num_codes'):
            v.code_range(bad)
    # The ranges a constrained target may take besides eos.
    assert v.bin_range() == (58457, 59457) == v.constraint_range('bins')
    assert v.constraint_range('codes') == v.code_range()
    with pytest.raises(ValueError, match="constraint must be one of.*'boxes'"):
        v.constraint_range('boxes')


def test_vocabulary_from_spec(tmp_path, spm_model):
    assert V.vocabulary_from_spec('ofa').encode(' a red square') == V.default_vocabulary().encode(' a red square')
    assert V.vocabulary_from_spec(f'bpe:{BPE_DIR}').size == V.OFA_VOCAB_SIZE
    spm = V.vocabulary_from_spec(f'spm:{spm_model}')
    assert isinstance(spm, V.SentencePieceVocabulary) and spm.encode('the cat') == V.SentencePieceVocabulary(
        spm_model
    ).encode('the cat')
    for bad in ('gpt2', 'bpe:', 'spm', ''):
        with pytest.raises(ValueError, match="expected 'ofa', 'world', 'bpe:DIR' or 'spm:MODEL_FILE'"):
            V.vocabulary_from_spec(bad)


def test_ofa_decode_renders_and_skips_specials(ofa_vocab):
    v = ofa_vocab
    ids = [
        v.bos_id,
        *v.encode(' region:'),
        v.bin_id(12),
        v.bin_id(999),
        v.code_id(0),
        v.code_id(8191),
        v.mask_id,
        v.unk_id,
        *v.encode(' end'),
        v.pad_id,
        v.eos_id,
    ]
    assert v.decode(ids) == ' region:<bin_12><bin_999><code_0><code_8191><mask><unk> end'
    assert v.decode(np.array(ids)) == v.decode(ids)
    assert v.decode([50261]) == 'madeupword0000'  # dict.txt filler lines keep their slot
    with pytest.raises(ValueError, match='59457'):
        v.decode([59457])
    with pytest.raises(ValueError, match='-1'):
        v.decode([-1])


def test_ofa_encode_is_literal_and_survives_pickling(ofa_vocab):
    # Like fairseq's BPE, encode never produces mask, code or bin ids from text.
    ids = ofa_vocab.encode('<mask><code_3> <bin_5>')
    assert all(4 <= i < ofa_vocab.mask_id for i in ids)
    assert pickle.loads(pickle.dumps(ofa_vocab)).encode(TEXTS[5]) == ofa_vocab.encode(TEXTS[5])


def _copy_bpe(dst: pathlib.Path) -> pathlib.Path:
    dst.mkdir()
    for name in ('encoder.json', 'vocab.bpe', 'dict.txt'):
        shutil.copy(BPE_DIR / name, dst / name)
    return dst


def test_gpt2_ids_missing_from_dict_become_unk(tmp_path):
    full = V.OFAVocabulary(BPE_DIR)
    text = 'the cat. the dog, ' + TEXTS[5]
    full_ids = full.encode(text)
    low, high = sorted({full_ids[1], full_ids[-1]})  # ' cat' and a CJK byte piece
    d = _copy_bpe(tmp_path / 'bpe')
    lines = (d / 'dict.txt').read_text(encoding='utf-8').splitlines()
    kept = [ln for k, ln in enumerate(lines) if k + 4 not in (low, high)]
    (d / 'dict.txt').write_text('\n'.join(kept) + '\n', encoding='utf-8')
    trimmed = V.OFAVocabulary(d)
    assert trimmed.size == full.size - 2 and trimmed.mask_id == full.mask_id - 2
    # The dropped GPT-2 ids turn into unk; the ids of the later lines shift down past the dropped lines.
    expected = [V.UNK if i in (low, high) else i - (i > low) - (i > high) for i in full_ids]
    assert expected.count(V.UNK) >= 2 and trimmed.encode(text) == expected
    assert trimmed.decode(expected) == full.decode([V.UNK if i in (low, high) else i for i in full_ids])


@pytest.mark.parametrize(
    'name, content, message',
    [
        ('encoder.json', '{"a": 0', 'not valid JSON'),
        ('encoder.json', '{"a": 0, "b": 1}', 'lacks the byte-level pieces'),
        ('vocab.bpe', '#version: 0.2\nĠ t\nbroken\n', 'line 3'),
        ('vocab.bpe', '#version: 0.2\nzzzq Ġ\n', 'does not fit encoder.json'),
        ('dict.txt', '13 850314647\n262 many\n', 'line 2'),
        ('dict.txt', '13 1\n13 1\n', 'repeats'),
        ('dict.txt', '99999999 1\n', 'beyond encoder.json'),
    ],
)
def test_ofa_malformed_files_name_the_file(tmp_path, name, content, message):
    d = _copy_bpe(tmp_path / 'bpe')
    (d / name).write_text(content, encoding='utf-8')
    with pytest.raises(ValueError, match=message) as info:
        V.OFAVocabulary(d)
    assert name in str(info.value)


@pytest.mark.parametrize('name', ['encoder.json', 'vocab.bpe', 'dict.txt'])
def test_ofa_missing_file_is_named(tmp_path, name):
    d = _copy_bpe(tmp_path / 'bpe')
    (d / name).unlink()
    with pytest.raises(ValueError, match=f'{name}: file not found'):
        V.OFAVocabulary(d)


SPM_WORDS = (
    'the a an cat dog bird sits runs on under mat sofa image photo of region what does describe red blue '
    'green large small car tree house river 東京 café naïve 42 3.5'
).split()


@pytest.fixture(scope='module')
def spm_corpus(tmp_path_factory) -> pathlib.Path:
    rng = np.random.default_rng(0)
    lines = [' '.join(rng.choice(SPM_WORDS, size=rng.integers(3, 12))) for _ in range(400)]
    path = tmp_path_factory.mktemp('spm') / 'corpus.txt'
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    return path


@pytest.fixture(scope='module')
def spm_model(spm_corpus) -> str:
    return V.train_sentencepiece([spm_corpus], spm_corpus.parent / 'tiny', vocab_size=320, minloglevel=2)


@pytest.fixture(scope='module')
def spm_vocab(spm_model):
    return V.SentencePieceVocabulary(spm_model)


def test_sentencepiece_layout(spm_model, spm_vocab):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=spm_model)
    # The trainer's defaults leave sentencepiece one special piece, its unk, at 0; bytes and learned pieces follow.
    assert sp.get_piece_size() == 320 and sp.is_unknown(0)
    assert not any(sp.is_control(i) for i in range(320))
    v = spm_vocab
    assert (v.bos_id, v.pad_id, v.eos_id, v.unk_id) == (0, 1, 2, 3)
    assert v.mask_id == 4 + 319
    assert (v.code_id(0), v.bin_id(0), v.bin_id(999)) == (v.mask_id + 1, v.mask_id + 1 + 8192, v.mask_id + 9192)
    assert v.size == v.mask_id + 1 + V.NUM_CODES + V.NUM_BINS
    # Piece p of sentencepiece (p >= 1) sits at OFA id p + 3.
    word = sp.encode('the cat', out_type=int)
    assert v.encode('the cat') == [p + 3 for p in word]
    assert v.decode([v.bos_id, *v.encode(' red'), v.bin_id(7), v.mask_id, v.eos_id]) == ' red<bin_7><mask>'


@pytest.mark.parametrize('text', TEXTS + ['the cat sits on the mat', 'wholly unseen Ωμέγα ☃ text'])
def test_sentencepiece_round_trip(spm_vocab, text):
    ids = spm_vocab.encode(text)
    assert all(4 <= i < spm_vocab.mask_id for i in ids)  # byte fallback: nothing maps to unk
    assert spm_vocab.decode(ids) == text


@pytest.mark.parametrize('vocab', ['ofa', 'spm', 'world'])
def test_encode_spaced_encodes_each_word_as_within_its_text(ofa_vocab, spm_vocab, vocab):
    v = {'ofa': ofa_vocab, 'spm': spm_vocab, 'world': V.vocabulary_from_spec('world')}[vocab]
    words = ['the', 'red', 'circle', 'is', 'at', 'the', 'top', 'left', ',', 'the', 'cat', 'sits']
    assert [t for w in words for t in v.encode_spaced(w)] == v.encode_spaced(' '.join(words))
    assert v.decode(v.encode_spaced('a red circle')).strip() == 'a red circle'
    # A SentencePiece model reads every text as following a space: the space added for OFA's BPE is no extra piece.
    assert len(v.encode_spaced('the')) == 1


@pytest.fixture(scope='module')
def world_texts() -> list[str]:
    from ofa_jax.data.mixtures import world_texts

    return world_texts()


def test_world_vocabulary_reads_the_world_word_by_word(world_texts):
    v = V.vocabulary_from_spec('world')
    assert v.size == 4 + 479 + 1 + V.WORLD_NUM_CODES + V.NUM_BINS == 1740
    # Its codes are the 256 of the world's patch codebook; the bins follow them.
    assert v.num_codes == 256 and v.code_range() == v.constraint_range('codes') == (484, 740)
    assert v.bin_id(0) == 740 and v.is_code(739) and not v.is_code(740)
    with pytest.raises(ValueError, match=r'code index 256 is outside \[0, 256\)'):
        v.code_id(256)
    for text in set(world_texts):
        assert v.decode(v.encode(text)) == text
    words = {w.strip(',.?":') for text in world_texts for w in text.split()} - {''}
    assert {'circle', 'triangle', 'yellow', 'describe', 'complete', 'region'} <= words
    assert {w: len(v.encode_spaced(w)) for w in words} == {w: 1 for w in words}
    unseen = 'a purple hexagon, 3 of them'
    assert v.decode(v.encode(unseen)) == unseen and V.UNK not in v.encode(unseen)  # byte fallback


def test_bundled_world_vocabulary_is_its_recipe(world_texts, tmp_path):
    """data/assets/README.md's commands rebuild the bundled model piece for piece."""
    import sentencepiece as spm

    corpus = tmp_path / 'world.txt'
    corpus.write_text('\n'.join(world_texts) + '\n', encoding='utf-8')
    subprocess.run(
        [
            sys.executable,
            '-m',
            'ofa_jax.data.vocab',
            'train_spm',
            '--corpus',
            str(corpus),
            '--prefix',
            str(tmp_path / 'w'),
        ]
        + ['--vocab_size', '480', '--model_type', 'bpe'],
        check=True,
        capture_output=True,
    )
    rebuilt, bundled = (
        spm.SentencePieceProcessor(model_file=f) for f in (str(tmp_path / 'w.model'), V.WORLD_SPM_MODEL)
    )
    assert rebuilt.get_piece_size() == bundled.get_piece_size() == 480
    pieces = [(m.id_to_piece(i), m.get_score(i)) for m in (rebuilt, bundled) for i in range(480)]
    assert pieces[:480] == pieces[480:]


def test_sentencepiece_cli(spm_corpus, tmp_path):
    prefix = tmp_path / 'cli'
    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'ofa_jax.data.vocab',
            'train_spm',
            '--corpus',
            str(spm_corpus),
            str(spm_corpus),
            '--prefix',
            str(prefix),
            '--vocab_size',
            '300',
            '--model_type',
            'bpe',
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    model = f'{prefix}.model'
    vocab = V.SentencePieceVocabulary(model)
    # 300 pieces less sentencepiece's own unk, plus 4 specials, mask, codes and bins.
    assert vocab.size == 4 + 299 + 1 + V.NUM_CODES + V.NUM_BINS
    assert f'{model}: {vocab.size} ids' in result.stdout
    assert vocab.decode(vocab.encode(' a red car')) == ' a red car'

    missing = subprocess.run(
        [
            sys.executable,
            '-m',
            'ofa_jax.data.vocab',
            'train_spm',
            '--corpus',
            str(tmp_path / 'nope.txt'),
            '--prefix',
            str(prefix),
            '--vocab_size',
            '300',
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode != 0 and 'nope.txt: corpus file not found' in missing.stderr


def test_sentencepiece_rejects_bad_model(tmp_path):
    bad = tmp_path / 'bad.model'
    bad.write_bytes(b'not a model')
    with pytest.raises(ValueError, match='bad.model: not a SentencePiece model'):
        V.SentencePieceVocabulary(bad)
    with pytest.raises(ValueError, match='file not found'):
        V.SentencePieceVocabulary(tmp_path / 'absent.model')


def _random_boxes(rng, n, size):
    xy0 = rng.uniform(0, size, (n, 2))
    xy1 = xy0 + rng.uniform(0, size, (n, 2))
    return np.concatenate([xy0, np.minimum(xy1, size)], axis=1)


@pytest.mark.parametrize('max_image_size, num_bins', [(512, 1000), (480, 1000), (384, 100)])
def test_box_quantization_error_within_half_a_bin(max_image_size, num_bins):
    rng = np.random.default_rng(1)
    for _ in range(200):
        sx, sy = rng.uniform(0.2, 4.0, 2)
        original = _random_boxes(rng, 1, max_image_size)[0] / np.array([sx, sy, sx, sy])
        resized = original * np.array([sx, sy, sx, sy])
        bins = boxes.quantize(resized, max_image_size, num_bins)
        assert all(isinstance(b, int) and 0 <= b < num_bins for b in bins)
        back = boxes.dequantize(bins, max_image_size, num_bins, scale=(sx, sy))
        half_bin = max_image_size / (num_bins - 1) / 2
        bound = half_bin / np.array([sx, sy, sx, sy]) + 1e-9
        assert np.all(np.abs(back - original) <= bound)
    # One scale for both axes, and a batch of boxes at once.
    grid = boxes.dequantize([[0, 999, 500, 1]], scale=2.0)
    np.testing.assert_allclose(grid, [[0, 256, 500 / 999 * 256, 1 / 999 * 256]])


def test_quantize_follows_ofa_formula_and_clips():
    assert boxes.quantize([0, 256, 512, 511.9]) == [0, 500, 999, 999]
    assert boxes.quantize([-30, 600, 2, 0.25]) == [0, 999, 4, 0]  # off the grid: clipped
    # Halves round to even, as torch's round in OFA's code: 2.5 -> 2, 3.5 -> 4, 0.5 -> 0, 1.5 -> 2.
    assert boxes.quantize([0.625, 0.875, 0.125, 0.375], max_image_size=1, num_bins=5) == [2, 4, 0, 2]
    with pytest.raises(ValueError, match='4 coordinates'):
        boxes.quantize([1, 2, 3])
    with pytest.raises(ValueError, match='finite'):
        boxes.quantize([0, 0, np.nan, 1])
    with pytest.raises(ValueError, match=r'\[0, 1000\)'):
        boxes.dequantize([0, 0, 1000, 5])
    with pytest.raises(ValueError, match='scale must be positive'):
        boxes.dequantize([0, 0, 1, 5], scale=(1.0, 0.0))


def test_box_tokens_round_trip(ofa_vocab, spm_vocab):
    rng = np.random.default_rng(2)
    for vocab in (ofa_vocab, spm_vocab):
        for box in _random_boxes(rng, 50, 512):
            ids = boxes.box_to_tokens(box, vocab)
            assert all(vocab.is_bin(i) for i in ids)
            assert ids == [vocab.bin_id(b) for b in boxes.quantize(box)]
            np.testing.assert_allclose(boxes.tokens_to_box(ids, vocab), boxes.dequantize(boxes.quantize(box)))
            assert np.all(np.abs(boxes.tokens_to_box(ids, vocab, scale=0.5) - 2 * box) <= 512 / 999 + 1e-9)
    assert boxes.box_to_tokens([0, 0, 512, 512], ofa_vocab) == [58457, 58457, 59456, 59456]


def test_tokens_to_box_names_a_non_bin_id(ofa_vocab):
    ids = boxes.box_to_tokens([10, 20, 30, 40], ofa_vocab)
    for bad in (ofa_vocab.code_id(5), 99, ofa_vocab.size):
        with pytest.raises(ValueError, match=f'token id {bad} is not a location bin'):
            boxes.tokens_to_box([*ids[:2], bad, ids[3]], ofa_vocab)


def test_tokens_to_objects_reads_ofa_detection_output(ofa_vocab):
    v = ofa_vocab
    first, second = [10, 20, 110, 220], [300, 40, 500, 90]
    ids = (
        boxes.box_to_tokens(first, v)
        + v.encode(' red square')
        + boxes.box_to_tokens(second, v)
        + v.encode(' blue circle')
        + [v.eos_id]
        + boxes.box_to_tokens(first, v)
        + v.encode(' after eos')
    )
    found, labels = boxes.tokens_to_objects(ids, v)
    assert labels == ['red square', 'blue circle'] and found.shape == (2, 4)
    np.testing.assert_allclose(found, [boxes.dequantize(boxes.quantize(b)) for b in (first, second)])
    np.testing.assert_allclose(boxes.tokens_to_objects(ids, v, scale=2.0)[0], found / 2)
    # Pieces off the pattern are skipped: a label without its box, three bins, a box without a label.
    broken = (
        v.encode(' stray')
        + boxes.box_to_tokens(first, v)[:3]
        + v.encode(' cut')
        + boxes.box_to_tokens(second, v)
        + v.encode(' green triangle')
        + boxes.box_to_tokens(first, v)
    )
    found, labels = boxes.tokens_to_objects(broken, v)
    assert labels == ['green triangle']
    np.testing.assert_allclose(found, [boxes.dequantize(boxes.quantize(second))])
    found, labels = boxes.tokens_to_objects([v.eos_id], v)
    assert found.shape == (0, 4) and labels == []
