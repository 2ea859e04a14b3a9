"""Property-based fuzzing of every kind of data source through the real input pipeline.

Hypothesis writes OFA TSV files (the caption, VQA, RefCOCO, detection and image-infilling layouts), JSON lines files
(caption, VQA and grounding records) and lists of TFDS-style example dicts (ref_coco, clevr, imagenet2012) in which
bad records are mixed into good ones of known content. Each bad record is a good one with one defect (bad base64, a
truncated image, an image declaring more pixels than allowed, a wrong column count, non-UTF-8 bytes, NaN, infinite,
negative, inverted or outside boxes, empty text, a JSON value of the wrong type, a missing key, nesting too deep, ...)
and carries the reason the pipeline must drop it for. Through `pipeline.batches` of the tasks' real preprocessors
(finite and unshuffled, so in the file's order):

- nothing raises;
- the drop counters, summed over the batches, equal the bad records by reason;
- every good record arrives exactly once, read back from its batch row's tokens (its text is numbered, so unique);
  a grounding record's target holds its region's bins;
- `strict=True` stops at the first bad record with an error naming its record, file and line (TFDS: its example)
  and its reason.

Batches of good and bad records mixed also go through the jitted train step, with a finite loss. Generation is
derandomized, and a failure's report carries the blob that replays it. The default tests generate over a thousand bad
records per TSV layout, JSON lines task and TFDS dataset (thousands per source kind); the `slow` ones at least 10,000
each (asserted).
"""

import base64
import collections
import dataclasses
import functools
import io
import json
import os
import re
import struct
import tempfile
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import FakeSplit, small_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ofa_jax import train
from ofa_jax.checkpoint import model_from_config
from ofa_jax.data import mixtures, pipeline, tasks
from ofa_jax.data.registry import Task, TaskRegistry
from ofa_jax.data.sources import PIPELINE_FIELDS, TSV_LAYOUTS, JsonlSource, TfdsSource
from ofa_jax.data.vocab import Vocabulary, default_vocabulary, vocabulary_from_spec

# Images declaring 89-179 million pixels make PIL warn as it opens them, before decode_image drops them unread.
pytestmark = pytest.mark.filterwarnings('ignore::PIL.Image.DecompressionBombWarning')

SPEC = pipeline.BatchSpec(batch_size=32, image_size=16, max_source_length=48, max_target_length=40)
# Per run: hypothesis examples of a test, the records of an example (about four in five of them bad), and the bad
# records a test must have generated in all.
RUNS = {'quick': (15, 200, 1_000), 'full': (70, 400, 10_000)}
SCALES = [pytest.param('quick'), pytest.param('full', marks=pytest.mark.slow)]


def fuzz_settings(examples: int) -> settings:
    # Reproducible in CI (derandomized, no example database); whole files are slow and large by design.
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,  # a failure's report carries the blob that replays it exactly
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


@dataclasses.dataclass(frozen=True)
class Rec:
    """A generated line (bytes) or TFDS example (dict) and what must come of it: the reasons its records are dropped
    for, or the keys its records arrive under (see KEYS); `regions` (grounding) are the regions of those records in
    the model's pixels, and `files` the image files a JSON line names."""

    data: Any
    drops: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    regions: tuple[tuple[float, ...], ...] = ()
    files: tuple[tuple[str, bytes], ...] = ()


@dataclasses.dataclass(frozen=True)
class Make:
    """What a record strategy draws: a maker of the record for its serial number, which a good record's text carries
    so that every good record reads back as its own; `what` the record is, for a failure's report."""

    make: Callable[[int], Rec]
    what: str

    def __call__(self, n: int) -> Rec:
        return self.make(n)


@dataclasses.dataclass(frozen=True)
class Defect:
    """What a defect does to a good record's fields (lines: then to its columns or bytes), and the reason the record
    is dropped for (None: it stays good)."""

    reason: str | None
    fields: Callable[[dict], dict] = lambda fields: fields
    line: Callable[[Any], Any] = lambda line: line
    image_file: bytes | None = None  # JSON lines: the contents of the image file the record names
    records: int | None = None  # TFDS: the records the example still makes, where the defect changes that


GOOD = Defect(None)
GOOD_WEIGHT = 3  # good records among the defects of a kind


def pick(draw: st.DrawFn, defects: Sequence[str]) -> str:
    return draw(st.sampled_from(('good',) * GOOD_WEIGHT + tuple(defects)))


def replace_field(field: str, value: Any) -> Callable[[dict], dict]:
    return lambda fields: {**fields, field: value}


def without(field: str) -> Callable[[dict], dict]:
    return lambda fields: {k: v for k, v in fields.items() if k != field}


# ---- images --------------------------------------------------------------------------------------------------------


def encode_image(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


_pixels = np.random.default_rng(0)
# (file, width, height, format): good images of several decoders and sizes, a single pixel included.
IMAGES = [
    (encode_image(_pixels.integers(0, 256, (h, w, 3), np.uint8), fmt), w, h, fmt)
    for fmt in ('PNG', 'JPEG', 'GIF', 'BMP', 'WEBP')
    for w, h in ((1, 1), (5, 3), (7, 19), (40, 23))
]
# Bytes at a file's end that a decoder may do without, having every pixel: PNG's IEND, the chunk's and zlib's checksums
# and two bytes that may hold the deflate stream's end code alone; JPEG's end marker; GIF's end code, block
# terminator and trailer; the padding of a BMP row. A cut before them is a cut into the pixels.
SPARE_BYTES = {'PNG': 22, 'JPEG': 2, 'GIF': 3, 'BMP': 3, 'WEBP': 0}


def png_declaring(width: int, height: int) -> bytes:
    """A PNG of a few bytes whose header declares width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(bytes(4))) + chunk(b'IEND', b'')


SMALL = {fmt: encode_image(np.zeros((8, 8, 3), np.uint8), fmt) for fmt in ('JPEG', 'GIF', 'BMP')}


def declaring(fmt: str, width: int, height: int) -> bytes:
    """A small file of `fmt` whose header says it is width x height pixels."""
    if fmt == 'PNG':
        return png_declaring(width, height)
    data = bytearray(SMALL[fmt])
    if fmt == 'JPEG':  # the frame header: marker, length, precision, height, width
        at = data.index(b'\xff\xc0')
        data[at + 5 : at + 9] = struct.pack('>HH', height, width)
    elif fmt == 'GIF':  # the logical screen
        data[6:10] = struct.pack('<HH', width, height)
    else:  # BMP's info header
        data[18:26] = struct.pack('<ii', width, height)
    return bytes(data)


# One draw for a position, a size or a choice that depends on other draws (taken modulo what it picks from):
# hypothesis spends its time per draw, and a file holds hundreds of records.
NUMBER = st.integers(0, 2**32)
IMAGE_INDEX = st.integers(0, len(IMAGES) - 1)
HUGE_FORMAT = st.sampled_from(('PNG', 'JPEG', 'GIF', 'BMP'))


def bad_image(draw: st.DrawFn) -> tuple[bytes, str]:
    """An encoded file no task can use (cut into its pixels, declaring too many pixels, or no image at all) and the
    reason it is dropped for."""
    kind = draw(st.sampled_from(('truncated', 'huge', 'huge', 'garbage')))
    if kind == 'truncated':
        data, _, _, fmt = IMAGES[draw(IMAGE_INDEX)]
        return data[: 1 + draw(NUMBER) % (len(data) - SPARE_BYTES[fmt] - 1)], 'undecodable_image'
    if kind == 'huge':
        fmt = draw(HUGE_FORMAT)
        side = 2**31 - 1 if fmt in ('PNG', 'BMP') else 2**16 - 1
        width = draw(st.integers(tasks.MAX_IMAGE_PIXELS // side + 1, side))
        least = tasks.MAX_IMAGE_PIXELS // width + 1  # width * least > MAX_IMAGE_PIXELS
        return declaring(fmt, width, least + draw(NUMBER) % (side - least + 1)), 'image_too_large'
    return b'this is no image file ' + draw(st.binary(max_size=32)), 'undecodable_image'


# ---- text and numbers ------------------------------------------------------------------------------------------------

WORDS = ('red', 'cat', 'dock', 'sun', 'man', 'left', 'tree', 'boat', 'two', 'dogs')
words = st.sampled_from([''] + list(WORDS) + [f'{a} {b}' for a in WORDS for b in WORDS])  # up to two, one draw
WORD = st.sampled_from(WORDS)
# Text that str.strip leaves empty, and text that OFA's cleaning (leading punctuation off) leaves empty.
BLANK = st.text(st.sampled_from(' \x0b\x0c\x1c\x85\xa0\u2028\u3000'), max_size=4)
PUNCTUATION = st.text(st.sampled_from(',.!?*#:;~'), min_size=1, max_size=6)
NON_FINITE = st.sampled_from((float('nan'), float('inf'), float('-inf')))
# Confidences outside VQA's soft scores in [0, 1].
BAD_CONFIDENCES = st.one_of(NON_FINITE, st.floats(max_value=-1e-6), st.floats(min_value=1.000001))
# JSON values of types no text field takes (None is a missing value, not a wrong type), and values that are no object.
WRONG_TYPES = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(st.integers(0, 9), min_size=1, max_size=3),
    st.dictionaries(WORD, st.integers(0, 9), max_size=2),
)
NOT_OBJECTS = st.one_of(st.integers(), st.floats(), st.booleans(), st.none(), st.text(max_size=8), st.lists(WORD))
# Integers past a float's range (float64 ends near 1.8e308).
PAST_FLOAT = st.integers(10**309, 10**400)
BOX_DEFECTS = st.sampled_from(('non_finite', 'inverted', 'negative', 'beyond', 'gone'))


def numbered(n: int, *parts: str) -> str:
    return ' '.join(p for p in (*parts, 'number', str(n)) if p)


def spoil_utf8(draw: st.DrawFn) -> Callable[[bytes], bytes]:
    """Puts one byte of 0x80-0xff into ASCII text: a lone continuation byte, or a lead byte without continuation,
    which UTF-8 text never holds."""
    at, byte = draw(NUMBER), draw(st.integers(0x80, 0xFF))

    def spoil(text: bytes) -> bytes:
        cut = at % (len(text) + 1)
        return text[:cut] + bytes([byte]) + text[cut:]

    return spoil


def draw_box(draw: st.DrawFn, width: int, height: int) -> tuple[float, ...]:
    """x0, y0, x1, y1 inside a width x height image, on a quarter-pixel grid, with area."""
    a, b = draw(NUMBER), draw(NUMBER)
    x0, y0 = a % (4 * width), b % (4 * height)
    x1, y1 = x0 + 1 + (a >> 16) % (4 * width - x0), y0 + 1 + (b >> 16) % (4 * height - y0)
    return x0 / 4, y0 / 4, x1 / 4, y1 / 4


def spoil_box(draw: st.DrawFn, box: Sequence[float], width: int, height: int, defect: str) -> list[float]:
    """The box (with area, inside the image) with one defect: 'non_finite' (a NaN or infinite coordinate),
    'inverted' (x0 > x1 or y0 > y1), 'negative' (x0 or y0), 'beyond' (x1 or y1 past the image) or 'gone' (shifted
    wholly off the image)."""
    box, number = list(box), draw(NUMBER)
    axis, amount = number % 2, (number >> 2) % 1000 / 4
    if defect == 'non_finite':
        box[(number >> 1) % 4] = draw(NON_FINITE)
    elif defect == 'inverted':
        box[axis], box[axis + 2] = box[axis + 2], box[axis]
    elif defect == 'negative':
        box[axis] = -0.25 - amount
    elif defect == 'beyond':
        box[axis + 2] = (width, height)[axis] + 0.25 + amount
    else:  # its far edge at or before the image's first pixel
        shift = box[axis + 2] + amount
        box[axis], box[axis + 2] = box[axis] - shift, box[axis + 2] - shift
    return box


def region_reason(defect: str) -> str:
    return 'bad_region' if defect == 'non_finite' else 'region_outside_image'


def coordinates(box: Sequence[float]) -> str:
    return ','.join(repr(float(c)) for c in box)


def model_region(box: Sequence[float], width: int, height: int) -> tuple[float, ...]:
    """A box of a width x height image in the pixels of the model's square input."""
    sx, sy = SPEC.image_size / width, SPEC.image_size / height
    return box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy


# ---- the pipeline's side: keys read back from batches, and the checks --------------------------------------------


def vqa_key(question: str, answer: str) -> str:
    return f'{question}? => {answer}'  # the finetuning instruction ends the question in a question mark


def grounding_key(source: str) -> str:
    return re.fullmatch(r'which region does the text " (.*) " describe\?', source)[1]


def detection_key(target: str) -> str:
    return ' | '.join(part.strip() for part in re.split(r'(?:<bin_\d+>)+', target)[1:])


# Task kind -> (vocabulary, source text, target text, target ids) of a batch row -> the key of its record.
KEYS: dict[str, Callable[[Vocabulary, str, str, list[int]], str]] = {
    'caption': lambda vocab, source, target, ids: target,
    'classification': lambda vocab, source, target, ids: target,
    'vqa': lambda vocab, source, target, ids: vqa_key(source.removesuffix('?'), target),
    'grounding': lambda vocab, source, target, ids: grounding_key(source),
    'detection': lambda vocab, source, target, ids: detection_key(target),
    'image_infill': lambda vocab, source, target, ids: ' '.join(str(i - vocab.code_id(0)) for i in ids),
}


def rows(batch: dict, vocab: Vocabulary) -> list[tuple[str, str, list[int]]]:
    """(source text, target text, target ids) of each real row of a batch."""
    out = []
    for row in np.flatnonzero(batch['example_mask']):
        source, target = batch['src_tokens'][row].tolist(), batch['target_tokens'][row].tolist()
        source, target = source[1 : source.index(vocab.eos_id)], target[: target.index(vocab.eos_id)]
        out.append((vocab.decode(source).strip(), vocab.decode(target).strip(), target))
    return out


# Opens a task on records (in a file of the given name): the task, and where(line or example) naming a record's place.
Opener = Callable[[Sequence[Rec], str], tuple[Task, Callable[[int], str]]]


def check_pipeline(kind: str, recs: Sequence[Rec], open_task: Opener, vocab: Vocabulary) -> collections.Counter:
    """Runs the records through the pipeline: the drop counts must equal the bad records by reason, every good record
    must arrive once, and strict mode must stop at the first bad one, naming it. Returns the drops by reason."""
    task, _ = open_task(recs, 'all')
    dropped, arrived, targets = collections.Counter(), collections.Counter(), {}
    for batch in pipeline.batches([task], [1.0], SPEC, seed=0, repeat=False):
        dropped.update(batch['dropped'])
        for source, target, ids in rows(batch, vocab):
            key = KEYS[kind](vocab, source, target, ids)
            arrived[key] += 1
            targets[key] = ids
    expected = collections.Counter(f'{task.name}/{reason}' for rec in recs for reason in rec.drops)
    assert dropped == expected, f'dropped {dropped - expected}, not dropped {expected - dropped}'
    good = collections.Counter(key for rec in recs for key in rec.keys)
    assert arrived == good, f'arrived {arrived - good}, lost {good - arrived}'
    for rec in recs:
        for key, region in zip(rec.keys, rec.regions):  # the target is the region's bins, to within a bin
            bins = np.asarray(region) / tasks.MAX_IMAGE_SIZE * (vocab.num_bins - 1)
            np.testing.assert_allclose(np.asarray(targets[key]) - vocab.bin_id(0), bins, atol=1.0, err_msg=key)

    # Strict mode stops at the first bad record, naming it, where it is and its reason; a file without one passes.
    first = next((position for position, rec in enumerate(recs) if rec.drops), None)
    if first is None:
        strict = pipeline.batches([task], [1.0], SPEC, seed=0, repeat=False, strict=True)
        assert sum(int(batch['example_mask'].sum()) for batch in strict) == sum(good.values())
    else:
        # Read up to the first bad record only: grain's threads, reading ahead, would go on with the records after it
        # once the error is raised, into the next hypothesis example; hypothesis lowers the recursion limit between
        # examples, and CPython 3.11 aborts a thread that is deeper than the new limit in a nested JSON line.
        task, where = open_task(recs[: first + 1], 'strict')
        with pytest.raises(ValueError) as error:
            list(pipeline.batches([task], [1.0], SPEC, seed=0, repeat=False, strict=True))
        message, index = str(error.value), sum(len(rec.keys) for rec in recs[:first])
        assert f'task {task.name!r}' in message and f'record {index} (id ' in message, message
        assert f', {where(first)}): {recs[first].drops[0]}' in message, message
    return collections.Counter(reason.split('/', 1)[1] for reason in dropped.elements())


def run_fuzz(scale: str, records: st.SearchStrategy, check: Callable[[list[Make]], collections.Counter]) -> None:
    """Runs hypothesis over files of `records` (makers of the records, in file order); `check` runs one file and
    returns its drops by reason. The bad records generated must reach the run's least number."""
    examples, size, least = RUNS[scale]
    totals = collections.Counter()

    @fuzz_settings(examples)
    @given(st.lists(records, min_size=size // 2, max_size=size))
    def fuzz(makes: list[Make]) -> None:
        totals.update(check(makes))

    fuzz()
    print(f'{sum(totals.values())} bad records by reason: {dict(sorted(totals.items()))}')
    assert sum(totals.values()) >= least, totals


@pytest.fixture(scope='module')
def vocab() -> Vocabulary:
    return default_vocabulary()


def write_lines(folder: str, name: str, recs: Sequence[Rec]) -> str:
    path = os.path.join(folder, name)
    with open(path, 'wb') as f:
        f.write(b''.join(rec.data + b'\n' for rec in recs))
    return path


# ---- OFA TSV ---------------------------------------------------------------------------------------------------------

# Bytes of a column no field reads: anything but the separators, UTF-8 or not.
UNUSED = st.binary(max_size=12).map(lambda data: data.translate(None, b'\t\n\r'))
TSV_TASKS = {  # layout -> the kind of the task trained on it
    'caption': 'caption',
    'vqa': 'vqa',
    'refcoco': 'grounding',
    'pretrain_detection': 'detection',
    'pretrain_image': 'image_infill',
}
TEXT_FIELD = {'caption': 'caption', 'vqa': 'question', 'refcoco': 'text', 'grounding': 'text'}
TSV_DEFECTS = ('columns', 'columns', 'base64', 'no_image', 'image', 'non_utf8', 'blank')
LAYOUT_DEFECTS = {
    'caption': ('empty', 'punctuation'),
    'vqa': ('empty', 'punctuation', 'no_answers', 'answers_format', 'confidence', 'empty_answer'),
    'refcoco': ('empty', 'punctuation', 'region', 'region', 'region_format'),
    'pretrain_detection': ('bad_box', 'boxes_gone', 'clipped_box', 'no_boxes', 'boxes_format', 'empty_label'),
    'pretrain_image': ('codes_format', 'codes_range', 'no_codes'),
}


def tsv_good(draw: st.DrawFn, layout: str, width: int, height: int) -> tuple[Callable[[int], tuple], tuple]:
    """A good row of the layout: its fields and key for serial number n, and its boxes (the region, or the
    detection boxes) in its width x height image."""
    extra, boxes = draw(words), ()
    if layout == 'caption':
        references = [draw(words) for _ in range(draw(NUMBER) % 3)]

        def good(n):
            return {'caption': '&&'.join([numbered(n, extra), *references])}, numbered(n, extra)

    elif layout == 'vqa':
        others = [(draw(NUMBER) % 10, draw(WORD)) for _ in range(draw(NUMBER) % 3)]
        objects = '&&'.join(draw(words).split())

        def good(n):
            answers = '&&'.join([f'1.0|!+answer {n}'] + [f'0.{c}|!+{w}' for c, w in others])
            question = numbered(n, 'what is', extra)
            return {'question': question, 'answers': answers, 'objects': objects}, vqa_key(question, f'answer {n}')

    elif layout == 'refcoco':
        boxes = (draw_box(draw, width, height),)

        def good(n):
            return {'text': numbered(n, extra), 'region': coordinates(boxes[0])}, numbered(n, extra)

    elif layout == 'pretrain_detection':
        boxes = tuple(draw_box(draw, width, height) for _ in range(1 + draw(NUMBER) % 2))
        names = [draw(WORD) for _ in boxes]

        def good(n):
            labels = [numbered(n, name) for name in names]
            items = [f'{coordinates(box)},{i},{label}' for i, (box, label) in enumerate(zip(boxes, labels))]
            return {'boxes': '&&'.join(items)}, ' | '.join(labels)

    else:  # pretrain_image
        codes = [draw(NUMBER) % 8192 for _ in range(draw(NUMBER) % 6)]

        def good(n):
            text = ' '.join(map(str, [n % 8192, *codes]))
            return {'codes': text}, text

    return good, boxes


def tsv_defect(draw: st.DrawFn, layout: str, width: int, height: int, boxes: tuple) -> Defect:
    """One defect of a row of the layout (or none), with the reason it is dropped for."""
    defect = pick(draw, TSV_DEFECTS + LAYOUT_DEFECTS[layout])
    number = draw(NUMBER) if defect != 'good' else 0
    if defect == 'good':
        return GOOD
    if defect == 'columns':  # one column fewer, or one to three more
        if number % 2:
            return Defect('malformed_record', line=lambda columns: columns[:-1] if number % 4 == 1 else columns[1:])
        more = [draw(UNUSED) for _ in range(1 + number % 3)]
        return Defect('malformed_record', line=lambda columns: columns[: number % 9] + more + columns[number % 9 :])
    if defect == 'base64':
        char = '!"#$%&\'()*,.:;<>?@[\\]^`{|}~'[number % 27].encode()

        def spoil(fields):
            image = fields['image']
            return {**fields, 'image': image[: number % len(image)] + char + image[number % len(image) :]}

        return Defect('malformed_record', spoil)
    if defect == 'no_image':
        return Defect('malformed_record', replace_field('image', draw(BLANK).encode()))
    if defect == 'image':
        data, reason = bad_image(draw)
        return Defect(reason, replace_field('image', base64.b64encode(data)))
    if defect == 'non_utf8':
        spoil, text_fields = spoil_utf8(draw), [f for f in TSV_LAYOUTS[layout].fields if f != 'image']
        field = text_fields[number % len(text_fields)]
        return Defect('malformed_record', lambda fields: {**fields, field: spoil(fields[field].encode())})
    if defect == 'blank':
        return Defect('malformed_record', line=lambda columns: [b''])
    if defect in ('empty', 'punctuation'):
        text = draw(BLANK if defect == 'empty' else PUNCTUATION)
        if layout == 'caption':  # the first of the '&&'-joined references is the caption
            text += ('', '&&', '&&a cat')[number % 3]
            return Defect('empty_caption' if defect == 'empty' else 'empty_target', replace_field('caption', text))
        field = TEXT_FIELD[layout]
        return Defect(f'empty_{field}' if defect == 'empty' else 'empty_instruction_input', replace_field(field, text))
    if defect == 'no_answers':
        return Defect('missing_answers', replace_field('answers', draw(BLANK)))
    if defect == 'answers_format':
        answers = ('yes', 'high|!+yes', '1.0|!+a|!+b', '1.0|!+yes&&', '&&1.0|!+yes', '|!+yes')[number % 6]
        return Defect('malformed_record', replace_field('answers', answers))
    if defect == 'confidence':
        answers = f'1.0|!+yes&&{draw(BAD_CONFIDENCES)!r}|!+{WORDS[number % 10]}'
        return Defect('bad_answers', replace_field('answers', answers))
    if defect == 'empty_answer':
        return Defect('empty_target', replace_field('answers', f'1.0|!+{draw(BLANK)}'))
    if defect == 'region':
        problem = draw(BOX_DEFECTS)
        box = spoil_box(draw, boxes[0], width, height, problem)
        return Defect(region_reason(problem), replace_field('region', coordinates(box)))
    if defect == 'region_format':
        text = ('1,2,3', '1,2,3,4,5', '1,2,,4', '1,2,x,4', '1,2,0x3,4', '')[number % 6]
        return Defect('malformed_record', replace_field('region', text))
    if defect in ('bad_box', 'boxes_gone', 'clipped_box'):
        problems = {'bad_box': ('non_finite', 'inverted'), 'clipped_box': ('negative', 'beyond')}.get(defect, ('gone',))
        spoiled = [
            spoil_box(draw, box, width, height, problems[number % len(problems)])
            if i == number % len(boxes) or defect == 'boxes_gone'
            else box
            for i, box in enumerate(boxes)
        ]

        def spoil(fields):
            items = [item.split(',', 4)[4] for item in fields['boxes'].split('&&')]  # category id and label
            return {**fields, 'boxes': '&&'.join(f'{coordinates(box)},{item}' for box, item in zip(spoiled, items))}

        # A box sticking out of the image is clipped to it: the record stays good. Boxes wholly off it are lost.
        return Defect({'bad_box': 'bad_boxes', 'boxes_gone': 'no_boxes', 'clipped_box': None}[defect], spoil)
    if defect == 'no_boxes':
        return Defect('no_boxes', replace_field('boxes', draw(BLANK)))
    if defect == 'boxes_format':  # (an item of whitespace alone is skipped by the parser: none is drawn)
        item = ('1,2,3,4,cat', '1,2,x,4,0,cat', '1,2,3', ',,,,,', '1,2,3,4', '1,2,3,4,0')[number % 6]
        return Defect('malformed_record', lambda fields: {**fields, 'boxes': f'{fields["boxes"]}&&{item}'})
    if defect == 'empty_label':
        label = draw(BLANK) if number % 2 else draw(PUNCTUATION)
        return Defect('empty_label', lambda fields: {**fields, 'boxes': f'{fields["boxes"]}&&0,0,1,1,0,{label}'})
    if defect == 'codes_format':
        junk = ('x', '1.5', '0x10', '1e3', str(2**31 + number), str(-(2**31) - 1 - number))[number % 6]
        return Defect('malformed_record', lambda fields: {**fields, 'codes': f'{fields["codes"]} {junk}'})
    if defect == 'codes_range':
        code = 8192 + number % (2**31 - 8192) if number % 2 else -1 - number % 2**31
        return Defect('bad_codes', lambda fields: {**fields, 'codes': f'{fields["codes"]} {code}'})
    assert defect == 'no_codes', defect
    return Defect('missing_codes', replace_field('codes', draw(BLANK)))


@st.composite
def tsv_records(draw: st.DrawFn, layout: str) -> Make:
    data, width, height, _ = IMAGES[draw(IMAGE_INDEX)]
    good, boxes = tsv_good(draw, layout, width, height)
    defect = tsv_defect(draw, layout, width, height, boxes)
    spec = TSV_LAYOUTS[layout]
    free = [c for c in range(spec.num_columns) if c not in spec.columns]  # columns no field reads
    unused = [draw(UNUSED) for _ in free]

    def make(n: int) -> Rec:
        fields, key = good(n)
        fields = defect.fields({'id': str(n), 'image': base64.urlsafe_b64encode(data), **fields})
        fields = {field: value if isinstance(value, bytes) else value.encode() for field, value in fields.items()}
        columns = dict(zip(free, unused)) | {c: fields[f] for f, c in zip(spec.fields, spec.columns)}
        line = b'\t'.join(defect.line([columns[c] for c in range(spec.num_columns)]))
        if defect.reason:
            return Rec(line, drops=(defect.reason,))
        regions = (model_region(boxes[0], width, height),) if layout == 'refcoco' else ()
        return Rec(line, keys=(key,), regions=regions)

    return Make(make, f'{layout} row: {defect.reason or "good"}')


def tsv_task(layout: str, path: str, vocab: Vocabulary, image_size: int = SPEC.image_size) -> Task:
    """The task trained on the layout: a finetuning task from a config's data entry, or OFA's pretraining task."""
    kind = TSV_TASKS[layout]
    if layout in ('caption', 'vqa', 'refcoco'):
        source = mixtures.source_from_config({'format': 'tsv', 'path': path, 'tsv_kind': layout})
        return mixtures.finetune_task(f'fuzz_{layout}', kind, source, vocab, image_size, replace=True)
    # Registering the pretraining mixture needs a vision-language file; only the detection or image task is read.
    vl = os.path.join(os.path.dirname(path), 'vision_language.tsv')
    with open(vl, 'w') as f:
        f.write('1\t\t\t\t\t\t\tcaption\n')
    role = {'pretrain_detection': 'detection', 'pretrain_image': 'image'}[layout]
    mixtures.register_ofa_pretraining(vocab, {'vision_language': vl, role: path}, image_size, prefix='fuzz')
    return TaskRegistry.get(f'fuzz_{kind}')


@pytest.mark.parametrize('scale', SCALES)
@pytest.mark.parametrize('layout', list(TSV_TASKS))
def test_fuzzed_ofa_tsv(scale, layout, vocab):
    def check(makes: list[Make]) -> collections.Counter:
        with tempfile.TemporaryDirectory() as folder:

            def open_task(recs: Sequence[Rec], name: str) -> tuple[Task, Callable[[int], str]]:
                path = write_lines(folder, f'{name}.tsv', recs)
                return tsv_task(layout, path, vocab), lambda line: f'line {line + 1} of {path}'

            return check_pipeline(TSV_TASKS[layout], [make(n) for n, make in enumerate(makes)], open_task, vocab)

    run_fuzz(scale, tsv_records(layout), check)


# ---- JSON lines ------------------------------------------------------------------------------------------------------

JSONL_DEFECTS = (
    'truncated',
    'not_object',
    'deep',
    'non_utf8',
    'pipeline_field',
    'image_type',
    'image_path',
    'image',
    'no_image',
    'no_text',
    'null_text',
    'text_type',
    'empty',
    'punctuation',
)
KIND_DEFECTS = {
    'caption': ('references',),
    'vqa': (
        'no_answers',
        'answers_type',
        'confidence_type',
        'confidence',
        'confidence',
        'huge_confidence',
        'empty_answer',
    ),
    'grounding': ('no_region', 'region_type', 'region', 'region', 'huge_region'),
}
POOL = 'pool'  # the folder of the good images, beside the JSON lines file


def jsonl_defect(draw: st.DrawFn, kind: str, width: int, height: int, region: tuple) -> Defect:
    """One defect of a JSON line of the kind's task (or none), with the reason it is dropped for."""
    defect = pick(draw, JSONL_DEFECTS + KIND_DEFECTS[kind])
    number = draw(NUMBER) if defect != 'good' else 0
    field = TEXT_FIELD[kind]
    if defect == 'good':
        return GOOD
    if defect == 'truncated':  # no proper prefix of an object is JSON
        return Defect('malformed_record', line=lambda line: line[: number % len(line)])
    if defect == 'not_object':
        value = draw(NOT_OBJECTS)
        return Defect('malformed_record', line=lambda line: json.dumps(value).encode())
    if defect == 'deep':  # past any recursion limit: json raises RecursionError
        depth = 50_000 + number % 50_000
        nested = b'[' * depth + b']' * depth
        return Defect('malformed_record', line=lambda line: line[:-1] + b', "nested": ' + nested + b'}')
    if defect == 'non_utf8':
        return Defect('malformed_record', line=spoil_utf8(draw))
    if defect == 'pipeline_field':  # a field that would steer the batch row past the preprocessors
        name, value = PIPELINE_FIELDS[number % len(PIPELINE_FIELDS)], draw(st.one_of(WRONG_TYPES, st.none()))
        return Defect('malformed_record', replace_field(name, value))
    if defect == 'image_type':
        return Defect('malformed_record', replace_field('image', draw(st.one_of(WRONG_TYPES, st.none()))))
    if defect == 'image_path':  # NUL and unpaired surrogates included
        return Defect('malformed_record', replace_field('image', 'no such folder/' + draw(st.text(max_size=8))))
    if defect == 'image':
        data, reason = bad_image(draw)
        return Defect(reason, image_file=data)
    if defect == 'no_image':
        return Defect('missing_image', without('image'))
    if defect == 'no_text':
        return Defect(f'missing_{field}', without(field))
    if defect == 'null_text':
        return Defect(f'missing_{field}', replace_field(field, None))
    if defect == 'text_type':
        return Defect(f'bad_{field}', replace_field(field, draw(WRONG_TYPES)))
    if defect == 'empty':
        return Defect(f'empty_{field}', replace_field(field, draw(BLANK)))
    if defect == 'punctuation':
        reason = 'empty_target' if kind == 'caption' else 'empty_instruction_input'
        return Defect(reason, replace_field(field, draw(PUNCTUATION)))
    if defect == 'references':
        return Defect('malformed_record', replace_field('references', draw(st.one_of(WRONG_TYPES, st.none()))))
    if defect == 'no_answers':
        return Defect('missing_answers', without('answers') if number % 2 else replace_field('answers', {}))
    if defect == 'answers_type':
        return Defect('malformed_record', replace_field('answers', draw(NOT_OBJECTS)))
    if defect == 'confidence_type':
        value = ('high', '', [], {}, None, 'one')[number % 6]
        return Defect('malformed_record', replace_field('answers', {'yes': 1.0, WORDS[number % 10]: value}))
    if defect == 'confidence':
        return Defect('bad_answers', replace_field('answers', {'yes': 1.0, WORDS[number % 10]: draw(BAD_CONFIDENCES)}))
    if defect == 'huge_confidence':
        return Defect('malformed_record', replace_field('answers', {'yes': 1.0, 'no': draw(PAST_FLOAT)}))
    if defect == 'empty_answer':
        return Defect('empty_target', replace_field('answers', {draw(BLANK): 1.0}))
    if defect == 'no_region':
        return Defect('bad_region', without('region'))
    if defect == 'region_type':
        value = ('1,2,3,4', 'abc', [1, 2, 3], [1, 2, 3, 4, 5], [[1, 2], [3]], None, True, {'x0': 1}, [[]])[number % 9]
        return Defect('malformed_record', replace_field('region', value))
    if defect == 'region':
        problem = draw(BOX_DEFECTS)
        return Defect(region_reason(problem), replace_field('region', spoil_box(draw, region, width, height, problem)))
    assert defect == 'huge_region', defect
    huge = list(region)
    huge[number % 4] = draw(PAST_FLOAT)
    return Defect('malformed_record', replace_field('region', huge))


@st.composite
def jsonl_records(draw: st.DrawFn, kind: str) -> Make:
    index = draw(IMAGE_INDEX)
    _, width, height, _ = IMAGES[index]
    extra, region = draw(words), draw_box(draw, width, height)
    others = {draw(WORD): draw(NUMBER) % 10 / 10 for _ in range(draw(NUMBER) % 3)} if kind == 'vqa' else {}
    defect = jsonl_defect(draw, kind, width, height, region)

    def make(n: int) -> Rec:
        if kind == 'caption':
            fields, key = (
                {'caption': numbered(n, extra), 'references': [numbered(n, extra), 'a cat']},
                numbered(n, extra),
            )
        elif kind == 'vqa':
            question = numbered(n, 'what is', extra)
            fields, key = (
                {'question': question, 'answers': {**others, f'answer {n}': 1.0}},
                vqa_key(question, f'answer {n}'),
            )
        else:
            fields, key = {'text': numbered(n, extra), 'region': list(region)}, numbered(n, extra)
        files = () if defect.image_file is None else ((f'bad_{n}', defect.image_file),)
        image = files[0][0] if files else f'{POOL}/{index}'
        fields = defect.fields({'id': n, 'image': image, **fields})
        line = defect.line(json.dumps(fields).encode())
        if defect.reason:
            return Rec(line, drops=(defect.reason,), files=files)
        regions = (model_region(region, width, height),) if kind == 'grounding' else ()
        return Rec(line, keys=(key,), regions=regions)

    return Make(make, f'{kind} line: {defect.reason or "good"}')


@pytest.mark.parametrize('scale', SCALES)
@pytest.mark.parametrize('kind', list(KIND_DEFECTS))
def test_fuzzed_json_lines(scale, kind, vocab):
    def check(makes: list[Make]) -> collections.Counter:
        recs = [make(n) for n, make in enumerate(makes)]
        with tempfile.TemporaryDirectory() as folder:
            os.mkdir(os.path.join(folder, POOL))
            for name, data in [(f'{POOL}/{i}', image[0]) for i, image in enumerate(IMAGES)] + [
                file for rec in recs for file in rec.files
            ]:
                with open(os.path.join(folder, name), 'wb') as f:
                    f.write(data)

            def open_task(recs: Sequence[Rec], name: str) -> tuple[Task, Callable[[int], str]]:
                path = write_lines(folder, f'{name}.jsonl', recs)
                source = mixtures.source_from_config({'format': 'jsonl', 'path': path})
                task = mixtures.finetune_task(f'fuzz_jsonl_{kind}', kind, source, vocab, SPEC.image_size, replace=True)
                return task, lambda line: f'line {line + 1} of {path}'

            return check_pipeline(kind, recs, open_task, vocab)

    run_fuzz(scale, jsonl_records(kind), check)


# ---- TFDS --------------------------------------------------------------------------------------------------------

# The images as TFDS decodes them: uint8 [H, W, 3].
ARRAYS = [np.asarray(Image.open(io.BytesIO(data)).convert('RGB')) for data, *_ in IMAGES]
LABEL_NAMES = [f'class {i}' for i in range(1000)]
TFDS_TASKS = {'ref_coco/refcoco_unc': 'grounding', 'clevr': 'vqa', 'imagenet2012': 'classification'}
ORDINALS = ('first', 'second')
TFDS_DEFECTS = ('missing_key', 'missing_key', 'image_dtype', 'image_shape', 'text_utf8')
DATASET_DEFECTS = {
    'ref_coco/refcoco_unc': ('empty', 'punctuation', 'bbox', 'bbox', 'refexp_id'),
    'clevr': ('empty', 'punctuation', 'no_answer', 'answer_empty', 'answer_blank', 'gray'),
    'imagenet2012': ('label_range', 'label_range', 'gray'),
}
# Per dataset: the key whose loss leaves no items to list (one bad record), and the keys each record reads.
ITEMS_KEY = {'ref_coco/refcoco_unc': 'objects', 'clevr': 'question_answer', 'imagenet2012': ''}
RECORD_KEYS = {
    'ref_coco/refcoco_unc': ('image', 'image/id'),
    'clevr': ('image', 'file_name'),
    'imagenet2012': ('image', 'label', 'file_name'),
}


def text_array(texts: Sequence[bytes]) -> np.ndarray:
    """Text features as TFDS decodes them without TensorFlow: an object array of UTF-8 bytes."""
    return np.array(list(texts), object)


def tfds_defect(draw: st.DrawFn, name: str, width: int, height: int, box: tuple) -> Defect:
    """One defect of an example of the dataset (or none), with the reason its records are dropped for. `line`
    changes each of the example's texts (bytes)."""
    defect = pick(draw, TFDS_DEFECTS + DATASET_DEFECTS[name])
    number = draw(NUMBER) if defect != 'good' else 0
    if defect == 'good':
        return GOOD
    if defect == 'gray':  # a 2-D grayscale image decodes to RGB: still good
        return Defect(None, lambda example: {**example, 'image': example['image'][..., 0]})
    if defect == 'missing_key':  # without the key its items are listed from, an example is one bad record
        keys = RECORD_KEYS[name] + ((ITEMS_KEY[name],) if ITEMS_KEY[name] else ())
        key = keys[number % len(keys)]
        return Defect('malformed_record', without(key), records=1 if key == ITEMS_KEY[name] else None)
    if defect == 'image_dtype':
        dtype = (np.float32, np.int64, np.bool_, np.uint16)[number % 4]
        return Defect('bad_image', lambda example: {**example, 'image': example['image'].astype(dtype)})
    if defect == 'image_shape':  # [H, W, 4], [H, W, 1], no rows, no columns
        shape = ((height, width, 4), (height, width, 1), (0, width, 3), (height, 0, 3))[number % 4]
        return Defect('bad_image', replace_field('image', np.zeros(shape, np.uint8)))
    if defect == 'text_utf8':
        return Defect('malformed_record', line=spoil_utf8(draw))
    if defect in ('empty', 'punctuation'):
        text = draw(BLANK if defect == 'empty' else PUNCTUATION).encode()
        field = {'ref_coco/refcoco_unc': 'text', 'clevr': 'question'}[name]
        return Defect(f'empty_{field}' if defect == 'empty' else 'empty_instruction_input', line=lambda _: text)
    if defect == 'bbox':
        problem = draw(BOX_DEFECTS)
        x0, y0, x1, y1 = spoil_box(draw, box, width, height, problem)
        bbox = np.array([[y0 / height, x0 / width, y1 / height, x1 / width]], np.float32)
        objects = lambda example: {**example, 'objects': {**example['objects'], 'bbox': bbox}}
        return Defect(region_reason(problem), objects)
    if defect == 'refexp_id':  # the ids of the expressions are missing

        def spoil(example):
            refexp = {**example['objects']['refexp'], 'refexp_id': [np.zeros(0, int)]}
            return {**example, 'objects': {**example['objects'], 'refexp': refexp}}

        return Defect('malformed_record', spoil)
    if defect in ('no_answer', 'answer_empty', 'answer_blank'):  # (the questions of clevr's test split have none)
        answer = {'no_answer': None, 'answer_empty': b'', 'answer_blank': draw(BLANK).encode() + b' '}[defect]

        def spoil(example):
            qa = example['question_answer']
            answers = text_array([answer] * (0 if answer is None else len(qa['question'])))
            return {**example, 'question_answer': {**qa, 'answer': answers}}

        return Defect('empty_target' if defect == 'answer_blank' else 'missing_answers', spoil)
    assert defect == 'label_range', defect  # -1 is how TFDS marks an unlabelled example
    label = -1 - number % 1000 if number % 2 else 1000 + number % 10**6
    return Defect('malformed_record', replace_field('label', np.int64(label)))


@st.composite
def tfds_records(draw: st.DrawFn, name: str) -> Make:
    """An example of the dataset: one or two records (expressions, questions), or one (imagenet2012)."""
    index = draw(IMAGE_INDEX)
    _, width, height, _ = IMAGES[index]
    extra, box = draw(words), draw_box(draw, width, height)
    items = 1 if name == 'imagenet2012' else 1 + draw(NUMBER) % 2
    defect = tfds_defect(draw, name, width, height, box)
    drops = (defect.reason,) * (defect.records or items) if defect.reason else ()
    texts = lambda values: text_array([defect.line(v.encode()) for v in values])

    def make(n: int) -> Rec:
        image = ARRAYS[index]
        if name == 'ref_coco/refcoco_unc':
            expressions = [numbered(n, extra, ORDINALS[k]) for k in range(items)]
            x0, y0, x1, y1 = box
            example = {
                'image': image,
                'image/id': np.int64(n),
                'objects': {
                    'bbox': np.array([[y0 / height, x0 / width, y1 / height, x1 / width]], np.float32),
                    'refexp': {'raw': [texts(expressions)], 'refexp_id': [np.arange(items)]},
                },
            }
            keys, regions = expressions, (model_region(box, width, height),) * items
        elif name == 'clevr':
            questions = [numbered(n, 'what is', extra, ORDINALS[k]) for k in range(items)]
            answers = [f'answer {n} {k}' for k in range(items)]
            example = {
                'image': image,
                'file_name': f'CLEVR_{n}.png'.encode(),
                'question_answer': {'question': texts(questions), 'answer': text_array([a.encode() for a in answers])},
            }
            keys, regions = [vqa_key(q, a) for q, a in zip(questions, answers)], ()
        else:
            example = {'image': image, 'label': np.int64(n % 1000), 'file_name': texts([f'n{n}.JPEG'])[0]}
            keys, regions = [LABEL_NAMES[n % 1000]], ()
        example = defect.fields(example)
        return Rec(example, drops=drops) if defect.reason else Rec(example, keys=tuple(keys), regions=regions)

    return Make(make, f'{name} example: {", ".join(drops) or "good"}')


@pytest.mark.parametrize('scale', SCALES)
@pytest.mark.parametrize('name', list(TFDS_TASKS))
def test_fuzzed_tfds_examples(scale, name, vocab):
    def open_task(recs: Sequence[Rec], _: str) -> tuple[Task, Callable[[int], str]]:
        split = lambda builder, split, **kwargs: FakeSplit([rec.data for rec in recs], builder.info.features)
        with tfds.testing.mock_data(as_data_source_fn=split):
            source = TfdsSource(name, 'train', label_names=LABEL_NAMES if name == 'imagenet2012' else None)
        task = mixtures.finetune_task('fuzz_tfds', TFDS_TASKS[name], source, vocab, SPEC.image_size, replace=True)
        return task, lambda example: f'example {example} of {name}:train'

    def check(makes: list[Make]) -> collections.Counter:
        return check_pipeline(TFDS_TASKS[name], [make(n) for n, make in enumerate(makes)], open_task, vocab)

    run_fuzz(scale, tfds_records(name), check)


# ---- the train step ----------------------------------------------------------------------------------------------


def test_fuzzed_batches_train_with_a_finite_loss():
    """Batches of TSV files of good and bad records mixed (caption, VQA and grounding, as a finetuning config reads
    them) train the demo's nano model with a finite loss, no update skipped, and count what they dropped."""
    config = small_config()
    vocab = vocabulary_from_spec(config.data.vocab)
    model, optimizer = model_from_config(config), train.make_optimizer(config)
    state = train.initial_state(model, optimizer, config, config.data.image_size)
    step = jax.jit(functools.partial(train.train_step, model, optimizer, config, 1))
    spec = train.batch_spec(config, config.batch_size)
    layouts = ('caption', 'vqa', 'refcoco')
    trained = collections.Counter()

    @fuzz_settings(3)
    @given(st.tuples(*(st.lists(tsv_records(layout), min_size=24, max_size=48) for layout in layouts)))
    def fuzz(files: tuple[list[Make], ...]) -> None:
        nonlocal state
        for layout, makes in zip(layouts, files):
            recs = [make(n) for n, make in enumerate(makes)]
            dropped = collections.Counter()
            with tempfile.TemporaryDirectory() as folder:
                task = tsv_task(layout, write_lines(folder, f'{layout}.tsv', recs), vocab, config.data.image_size)
                for batch in pipeline.batches([task], [1.0], spec, seed=0, repeat=False):
                    dropped.update(batch.pop('dropped'))
                    del batch['cut']
                    state, metrics = step(state, batch)
                    assert np.isfinite(metrics['loss']) and not metrics['skipped'], (layout, metrics)
                    trained['steps'] += 1
                    trained['examples'] += int(batch['example_mask'].sum())
            assert dropped == collections.Counter(f'{task.name}/{r}' for rec in recs for r in rec.drops)
            trained.update(reason.split('/')[1] for reason in dropped.elements())

    fuzz()
    assert trained['steps'] >= 6 and trained['examples'] > 0 and trained['bad_answers'] > 0, trained


def test_strict_mode_names_a_record_the_batching_drops(tmp_path):
    """A record whose example has no target is dropped when batched, after its preprocessors: strict mode stops there
    too, naming the record, its file and line."""
    path = tmp_path / 'texts.jsonl'
    path.write_text(''.join(json.dumps({'text': text}) + '\n' for text in ('ab', '', 'c')))
    to_example = lambda example, rng: {**example, 'source_ids': [5], 'target_ids': [7] * len(example['text'])}
    task = Task('fuzz_targets', JsonlSource(path), (to_example,))
    (batch,) = pipeline.batches([task], [1.0], SPEC, seed=0, repeat=False)
    assert batch['dropped'] == {'fuzz_targets/empty_target': 1} and batch['example_mask'].sum() == 2
    where = rf'record 1 \(id 1, line 2 of {re.escape(str(path))}\): fuzz_targets/empty_target'
    with pytest.raises(ValueError, match=where):
        list(pipeline.batches([task], [1.0], SPEC, seed=0, repeat=False, strict=True))
