"""Data sources: random access to raw records in OFA's TSV files, JSON lines and TFDS datasets.

A source implements `__len__` and `__getitem__(index) -> dict`, pickles into grain worker processes, and yields raw
records in the project-wide schema (a record has only the fields it has):

  'id': str                      'source': str (source name)     'record': int (index in the source)
  'image': bytes (encoded file as stored) or np.uint8 [H, W, 3]
  'caption': str                 'references': list[str] (every reference caption of the image)
  'question': str                'answers': dict[str, float] (answer -> confidence)
  'candidates': list[str]        'text': str (referring expression or plain text)
  'region': np.float32 [4]       x0, y0, x1, y1 in pixels
  'boxes': np.float32 [N, 4]     x0, y0, x1, y1 in pixels; 'labels': list[str], one per box
  'hypothesis', 'premise', 'label': str
  'objects': list[str]           object words of OFA's TSVs (VinVL predictions / ground-truth objects)
  'codes': np.int32 [K]          VQGAN codes of OFA's image-infilling TSV
  'dataset', 'type': str         the origin and task type of an OFA pretraining row

Images stay encoded and fields unvalidated: preprocessors decode and check them. A row that cannot be parsed (wrong
column count, an unparsable number, bad base64, bad JSON) comes back as {'id', 'source', 'record', '_error'} with
'_error' naming the field, so the pipeline counts and drops it; `__getitem__` raises only for an index out of range.
"""

import base64
import binascii
import io
import json
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import fsspec
import numpy as np
from absl import logging
from etils import epath

from ofa_jax.paths import is_remote, write_atomically

Record = dict[str, Any]
_URLSAFE_TO_STANDARD = bytes.maketrans(b'-_', b'+/')


class _FieldError(Exception):
    """A field of a row cannot be parsed; becomes the record's '_error'."""

    def __init__(self, field: str, problem: str):
        super().__init__(f'{field}: {problem}')


def _error_record(source: str, index: int, error: Exception, record_id: str | None = None) -> Record:
    return {
        'id': record_id if record_id is not None else str(index),
        'source': source,
        'record': index,
        '_error': str(error),
    }


def line_offsets(path: str | os.PathLike, chunk_bytes: int = 1 << 24) -> np.ndarray:
    """Byte offsets of a file's lines, int64 [rows + 1]: line i is bytes [offsets[i], offsets[i + 1]).

    Streams over the file (local or remote) in chunks, so files far larger than memory are indexed at disk speed. A
    last line without a newline counts; an empty file has no rows."""
    starts = [np.zeros(1, np.int64)]
    size = 0
    with epath.Path(path).open('rb') as f:
        while chunk := f.read(chunk_bytes):
            newlines = np.flatnonzero(np.frombuffer(chunk, np.uint8) == ord('\n'))
            starts.append(newlines.astype(np.int64) + (size + 1))
            size += len(chunk)
    offsets = np.concatenate(starts)
    return offsets if offsets[-1] == size else np.append(offsets, size)


INDEX_SUFFIX = '.index.npz'  # beside a data file: its line offsets, with the size and version of the file they index


def index_path(path: str | os.PathLike) -> epath.Path:
    path = epath.Path(path)
    return path.with_name(path.name + INDEX_SUFFIX)


def _size_and_version(path: str) -> tuple[int, str]:
    """A file's size and what changes whenever it is rewritten: a local file's modification time in nanoseconds, an
    object's generation (or its modification time where the store has none)."""
    if not is_remote(path):
        stat = os.stat(path)
        return stat.st_size, str(stat.st_mtime_ns)
    filesystem, inner = fsspec.core.url_to_fs(path)
    info = filesystem.info(inner)
    return int(info['size']), str(info.get('generation') or info.get('mtime') or info.get('updated') or '')


def cached_line_offsets(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """(`line_offsets(path)`, whether its index is kept): read from the index file beside it (PATH.index.npz) when
    that indexes the file as it is now (same size and version), else built and written there, so that a restart, or
    another host later, does not read a large file end to end again. The index is only a cache: one that cannot be
    read is rebuilt, one that cannot be written (a read-only bucket) is rebuilt at each start."""
    path, index = os.fspath(path), index_path(path)
    size, version = _size_and_version(path)
    try:
        with np.load(io.BytesIO(index.read_bytes())) as saved:
            if int(saved['size']) == size and str(saved['version']) == version:
                return saved['offsets'], True
    except Exception:  # noqa: BLE001 - none yet, or unreadable (truncated, not an index): build it
        pass
    offsets = line_offsets(path)
    buffer = io.BytesIO()
    np.savez(buffer, offsets=offsets, size=size, version=version)
    try:
        write_atomically(index, buffer.getvalue())
    except Exception as error:  # noqa: BLE001 - a read-only folder, or a store refusing writes: only the cache is lost
        logging.warning('the line index of %s cannot be kept (%s): it is rebuilt at each start', path, error)
        return offsets, False
    return offsets, True


class _LineFile:
    """Random access to the lines of a text file, local or remote (gs://), by an index of line offsets.

    A local file is opened lazily in each process (never pickled) and read with `os.pread`, a remote one read by
    byte-range requests; neither keeps a file position, so threads and forked workers can share a source."""

    def __init__(self, path: str | os.PathLike, name: str | None):
        self.path = os.fspath(path)
        self.name = name or epath.Path(self.path).stem
        self._remote = is_remote(self.path)
        self._offsets, _ = cached_line_offsets(self.path)
        self._fd: int | None = None
        self._filesystem: Any = None  # a remote file's fsspec filesystem, and the path within it
        self._inner_path = ''
        self._pid: int | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def location(self, index: int) -> str:
        """Where record `index` sits, for error messages: its line (1-based) and file."""
        return f'line {index + 1} of {self.path}'

    def _line(self, index: int) -> bytes:
        """Line `index` without its line ending."""
        if not 0 <= index < len(self):
            raise IndexError(f'record {index} outside {self.name!r} of {len(self)} rows')
        start, end = int(self._offsets[index]), int(self._offsets[index + 1])
        with self._lock:
            if self._pid != os.getpid():  # first read in this process: a descriptor (or filesystem) of its own
                if self._remote:
                    self._filesystem, self._inner_path = fsspec.core.url_to_fs(self.path)
                else:
                    self._fd = os.open(self.path, os.O_RDONLY)
                self._pid = os.getpid()
        if self._remote:
            data = self._filesystem.cat_file(self._inner_path, start=start, end=end)
        else:
            data = os.pread(self._fd, end - start, start)
        if len(data) != end - start:
            raise _FieldError('line', f'file shorter than when indexed ({self.path})')
        if index + 1 < len(self) and not data.endswith(b'\n'):
            raise _FieldError('line', f'file changed since it was indexed ({self.path})')
        return data.rstrip(b'\r\n')

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_fd=None, _filesystem=None, _pid=None, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self, _getpid=os.getpid, _close=os.close):  # bound now: `os` may be gone at interpreter exit
        if getattr(self, '_fd', None) is not None and self._pid == _getpid():
            _close(self._fd)


# ---- OFA's TSV files ---------------------------------------------------------------------------------------------


class TsvLayout(NamedTuple):
    """Where the fields of one OFA dataset kind sit in its TSV rows.

    `fields` are in the order OFA's dataset class unpacks them; `columns` are the `selected_cols` OFA's run scripts
    pass for its released files, whose rows have `num_columns` tab-separated columns."""

    fields: tuple[str, ...]
    columns: tuple[int, ...]
    num_columns: int


TSV_LAYOUTS: dict[str, TsvLayout] = {
    # uniq-id, image-id, caption ('&&'-joined references outside stage-1 training), VinVL objects, image base64
    'caption': TsvLayout(('id', 'image', 'caption'), (0, 4, 2), 5),
    # question-id, image-id, question, answers 'conf|!+ans&&...', VinVL objects '&&'-joined, image base64
    'vqa': TsvLayout(('id', 'image', 'question', 'answers', 'objects'), (0, 5, 2, 3, 4), 6),
    # uniq-id, image-id, referring expression, region 'x0,y0,x1,y1', image base64
    'refcoco': TsvLayout(('id', 'image', 'text', 'region'), (0, 4, 2, 3), 5),
    # uniq-id, image-id, image base64, hypothesis, caption (premise), label (entailment/neutral/contradiction)
    'snli_ve': TsvLayout(('id', 'image', 'hypothesis', 'premise', 'label'), (0, 2, 3, 4, 5), 6),
    # image base64, class index (1-based, Caffe's synset_words.txt order), class name
    'imagenet': TsvLayout(('image', 'label'), (0, 2), 3),
    # uniq-id, image base64, caption, question, refs (answers or region), gt objects, dataset name, type
    'pretrain_vl': TsvLayout(
        ('id', 'image', 'caption', 'question', 'refs', 'objects', 'dataset', 'type'), tuple(range(8)), 8
    ),
    # uniq-id, text
    'pretrain_text': TsvLayout(('id', 'text'), (0, 1), 2),
    # uniq-id, image base64 (256x256), VQGAN codes of the centre, space-separated
    'pretrain_image': TsvLayout(('id', 'image', 'codes'), (0, 1, 2), 3),
    # uniq-id, image base64, boxes 'x0,y0,x1,y1,cat_id,cat_name' joined by '&&'
    'pretrain_detection': TsvLayout(('id', 'image', 'boxes'), (0, 1, 2), 3),
}
PRETRAIN_TYPES = ('caption', 'qa', 'visual_grounding')


def decode_base64(data: bytes) -> bytes:
    """OFA's image column (standard or URL-safe base64, as `base64.urlsafe_b64decode` reads both) -> file bytes."""
    try:
        decoded = base64.b64decode(data.strip().translate(_URLSAFE_TO_STANDARD), validate=True)
    except (binascii.Error, ValueError) as error:
        raise _FieldError('image', f'bad base64 ({error})') from None
    if not decoded:
        raise _FieldError('image', 'empty')
    return decoded


def parse_answers(text: str) -> dict[str, float]:
    """'conf|!+answer&&conf|!+answer' -> {answer: conf}."""
    answers = {}
    for item in text.split('&&'):
        parts = item.split('|!+')
        if len(parts) != 2:
            raise _FieldError('answers', f'{item!r} is not "confidence|!+answer"')
        try:
            answers[parts[1]] = float(parts[0])
        except ValueError:
            raise _FieldError('answers', f'confidence {parts[0]!r} is not a number') from None
    return answers


def parse_numbers(text: str, field: str, count: int) -> np.ndarray:
    """'a,b,c,d' -> float32 [count]."""
    parts = text.strip().split(',')
    if len(parts) != count:
        raise _FieldError(field, f'{text!r} has {len(parts)} values, expected {count}')
    try:
        return np.array([float(p) for p in parts], np.float32)
    except ValueError:
        raise _FieldError(field, f'{text!r} has a value that is not a number') from None


def parse_detections(text: str) -> tuple[np.ndarray, list[str]]:
    """'x0,y0,x1,y1,cat_id,cat_name&&...' -> boxes float32 [N, 4], labels (names may contain commas)."""
    boxes, labels = [], []
    for item in filter(None, text.strip().split('&&')):
        parts = item.strip().split(',', 5)
        if len(parts) != 6:
            raise _FieldError('boxes', f'{item!r} is not "x0,y0,x1,y1,cat_id,cat_name"')
        boxes.append(parse_numbers(','.join(parts[:4]), 'boxes', 4))
        labels.append(parts[5])
    return np.array(boxes, np.float32).reshape(-1, 4), labels


def parse_codes(text: str) -> np.ndarray:
    """Space-separated VQGAN codes -> int32 [K]."""
    try:
        return np.array([int(c) for c in text.split()], np.int32)
    except ValueError:
        raise _FieldError('codes', 'a code is not an integer') from None
    except OverflowError:
        raise _FieldError('codes', 'a code is outside int32') from None


def _split_objects(text: str) -> list[str]:
    return [o.strip() for o in text.split('&&') if o.strip()]


class OFATsvSource(_LineFile):
    """Rows of one of OFA's TSV files (see TSV_LAYOUTS) as raw records, base64 images decoded to file bytes.

    `selected_cols` (a sequence or OFA's '0,4,2' string) gives, for each field of the kind's layout in order, its
    column; None marks a field the file lacks (a missing 'id' becomes the row index). Rows must have exactly
    `num_columns` columns: 'auto' means the count of OFA's released files when `selected_cols` is the default,
    otherwise (or with None) just enough for the selected columns."""

    def __init__(
        self,
        path: str | os.PathLike,
        kind: str,
        selected_cols: None | str | Sequence[int | None] = None,
        num_columns: int | None | Literal['auto'] = 'auto',
        name: str | None = None,
    ):
        if kind not in TSV_LAYOUTS:
            raise ValueError(f'unknown OFA TSV kind {kind!r}; choose one of {sorted(TSV_LAYOUTS)}')
        layout = TSV_LAYOUTS[kind]
        if selected_cols is None:
            columns: tuple[int | None, ...] = layout.columns
        elif isinstance(selected_cols, str):
            columns = tuple(None if c.strip().lower() in ('', 'none') else int(c) for c in selected_cols.split(','))
        else:
            columns = tuple(None if c is None else int(c) for c in selected_cols)
        if len(columns) != len(layout.fields):
            raise ValueError(
                f'{kind} rows hold {layout.fields}: selected_cols needs {len(layout.fields)} entries, got {columns}'
            )
        if num_columns == 'auto':
            num_columns = layout.num_columns if columns == layout.columns else None
        super().__init__(path, name)
        self.kind = kind
        self.selected_cols = columns
        self.num_columns = num_columns
        self._min_columns = max((c + 1 for c in columns if c is not None), default=0)

    def __repr__(self) -> str:
        return (
            f'OFATsvSource(path={self.path!r}, kind={self.kind!r}, rows={len(self)}, '
            f'selected_cols={self.selected_cols}, num_columns={self.num_columns})'
        )

    def __getitem__(self, index: int) -> Record:
        row_id = None
        try:
            columns = self._line(index).split(b'\t')
            if self.num_columns is not None and len(columns) != self.num_columns:
                raise _FieldError('row', f'{len(columns)} columns, expected {self.num_columns}')
            if len(columns) < self._min_columns:
                raise _FieldError('row', f'{len(columns)} columns, selected_cols need {self._min_columns}')
            raw = {
                field: columns[c]
                for field, c in zip(TSV_LAYOUTS[self.kind].fields, self.selected_cols)
                if c is not None
            }
            row_id = _utf8(raw.pop('id', str(index).encode()), 'id') or str(index)
            record = {'id': row_id, 'source': self.name, 'record': index}
            record.update(self._fields(raw))
            return record
        except _FieldError as error:
            return _error_record(self.name, index, error, row_id)

    def _fields(self, raw: dict[str, bytes]) -> Record:
        """Schema fields of one row's selected columns (bytes, image still base64)."""
        out: Record = {}
        if 'image' in raw:
            out['image'] = decode_base64(raw.pop('image'))
        text = dict.fromkeys(TSV_LAYOUTS[self.kind].fields, '')  # a field without a column reads as empty
        text.update((field, _utf8(value, field)) for field, value in raw.items())
        kind = self.kind
        if kind == 'caption':
            references = [c.strip() for c in text['caption'].split('&&')]
            out.update(caption=references[0], references=references)
        elif kind == 'vqa':
            out['question'] = text['question']
            if text['answers'].strip():  # unanswered test rows keep their question
                out['answers'] = parse_answers(text['answers'].strip())
        elif kind == 'refcoco':
            out.update(text=text['text'], region=parse_numbers(text['region'], 'region', 4))
        elif kind == 'snli_ve':
            out.update(hypothesis=text['hypothesis'], premise=text['premise'], label=text['label'])
        elif kind == 'imagenet':
            # The class name is both the label and the target of OFA's caption-prompted classification.
            out.update(label=text['label'].strip(), caption=text['label'].strip())
        elif kind == 'pretrain_vl':
            out.update(self._pretrain_vl(text))
        elif kind == 'pretrain_text':
            out['text'] = text['text']
        elif kind == 'pretrain_image':
            if text['codes'].strip():
                out['codes'] = parse_codes(text['codes'])
        elif kind == 'pretrain_detection':
            out['boxes'], out['labels'] = parse_detections(text['boxes'])
        if _split_objects(text.get('objects', '')):
            out['objects'] = _split_objects(text['objects'])
        return out

    @staticmethod
    def _pretrain_vl(text: dict[str, str]) -> Record:
        """A vision-language pretraining row; its 'type' says what 'caption' and 'refs' hold."""
        row_type = text['type'].strip()
        if row_type not in PRETRAIN_TYPES:
            raise _FieldError('type', f'{row_type!r} is not one of {PRETRAIN_TYPES}')
        out: Record = {'type': row_type}
        if text['dataset'].strip():
            out['dataset'] = text['dataset'].strip()
        if row_type == 'caption':
            out['caption'] = text['caption']
        elif row_type == 'qa':
            out.update(question=text['question'], answers=parse_answers(text['refs'].strip()))
        else:  # the caption column holds the referring expression of the region in refs
            out.update(text=text['caption'], region=parse_numbers(text['refs'], 'region', 4))
        return out


def _utf8(value: bytes, field: str) -> str:
    try:
        return value.decode('utf-8')
    except UnicodeDecodeError as error:
        raise _FieldError(field, f'not UTF-8 ({error})') from None


# ---- JSON lines --------------------------------------------------------------------------------------------------

# Example fields the preprocessors and the pipeline set and `pipeline.to_batch` reads: a JSON line holding one would
# steer its batch row (a loss weight, a constraint) past the preprocessors, so such a line is malformed.
PIPELINE_FIELDS = (
    '_error',
    'task',
    'source_ids',
    'target_ids',
    'loss_weight',
    'code_target',
    'constraint',
    'constraint_range',
    'prompt_type',
    'allowed_tokens',
)


class JsonlSource(_LineFile):
    """One JSON object a line, already in the record schema; converted where JSON cannot hold the type.

    'image' is a file path relative to `image_root` (default: the JSONL file's folder), read as bytes; 'region'
    becomes float32 [4], 'boxes' float32 [N, 4], 'answers' {str: float}; other fields pass through unchanged. 'source'
    and 'record' are set by the source; a missing 'id' becomes the line index. A line holding one of
    PIPELINE_FIELDS is malformed."""

    def __init__(self, path: str | os.PathLike, image_root: str | os.PathLike | None = None, name: str | None = None):
        super().__init__(path, name)
        self.image_root = (
            os.fspath(image_root)
            if image_root is not None
            else os.path.dirname(self.path if self._remote else os.path.abspath(self.path))
        )

    def __repr__(self) -> str:
        return f'JsonlSource(path={self.path!r}, image_root={self.image_root!r}, rows={len(self)})'

    def __getitem__(self, index: int) -> Record:
        row_id = None
        try:
            try:
                row = json.loads(self._line(index))
            except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, deep nesting
                raise _FieldError('json', str(error)) from None
            if not isinstance(row, dict):
                raise _FieldError('json', f'a line must hold an object, not {type(row).__name__}')
            row_id = str(row['id']) if row.get('id') is not None else str(index)
            for field in PIPELINE_FIELDS:
                if field in row:
                    raise _FieldError(field, 'is set by the preprocessors, not read from data')
            return {**row, **self._convert(row), 'id': row_id, 'source': self.name, 'record': index}
        except _FieldError as error:
            return _error_record(self.name, index, error, row_id)

    def _convert(self, row: Record) -> Record:
        out: Record = {}
        if 'image' in row:
            if not isinstance(row['image'], str):
                raise _FieldError('image', f'expected a file path, got {type(row["image"]).__name__}')
            path = os.path.join(self.image_root, row['image'])
            try:
                out['image'] = epath.Path(path).read_bytes()
            except (OSError, ValueError) as error:  # ValueError: a NUL or an unencodable character in the path
                problem = getattr(error, 'strerror', None) or error
                raise _FieldError('image', f'cannot read {path!r}: {problem}') from None
        for field, shape in (('region', (4,)), ('boxes', (-1, 4))):
            if field in row:
                try:
                    out[field] = np.asarray(row[field], np.float32).reshape(shape)
                except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past float range
                    expected = '4 numbers' if field == 'region' else 'N x 4 numbers'
                    raise _FieldError(field, f'{row[field]!r} is not {expected}') from None
        if 'answers' in row:
            answers = row['answers']
            if not isinstance(answers, dict):
                raise _FieldError('answers', 'expected an object {answer: confidence}')
            try:
                out['answers'] = {str(a): float(c) for a, c in answers.items()}
            except (TypeError, ValueError, OverflowError):
                raise _FieldError('answers', 'a confidence is not a number') from None
        for field in ('labels', 'candidates', 'references', 'objects'):
            if field in row and not (isinstance(row[field], list) and all(isinstance(v, str) for v in row[field])):
                raise _FieldError(field, 'expected a list of strings')
        return out


# ---- TFDS --------------------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    """A TFDS text value (bytes from real data, str from mocks) as str."""
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def tfds_box_to_pixels(bbox: np.ndarray, height: int, width: int) -> np.ndarray:
    """TFDS boxes, normalized [..., 4] ymin, xmin, ymax, xmax -> float32 [..., 4] pixel x0, y0, x1, y1."""
    bbox = np.asarray(bbox, np.float32)
    return np.stack([bbox[..., 1] * width, bbox[..., 0] * height, bbox[..., 3] * width, bbox[..., 2] * height], -1)


def _image_size(example: dict) -> tuple[int, int]:
    image = example.get('image')
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        raise _FieldError('image', 'boxes need the decoded image for its size')
    return image.shape[0], image.shape[1]


def coco_captions_record(example: dict, caption: int) -> Record:
    """coco_captions: one record per caption, with every caption of its image as 'references'."""
    texts = [_text(t) for t in example['captions']['text']]
    if not 0 <= caption < len(texts):
        raise _FieldError('caption', f'caption {caption} of an image with {len(texts)}')
    return {
        'id': str(int(example['image/id'])),
        'image': example['image'],
        'caption': texts[caption],
        'references': texts,
    }


def ref_coco_record(example: dict, obj: int, expression: int) -> Record:
    """ref_coco: one record per referring expression of each referred object, its box as 'region'."""
    objects = example['objects']
    bbox = np.asarray(objects['bbox'], np.float32).reshape(-1, 4)
    rows = objects['refexp']['raw']
    if not (obj < len(bbox) and obj < len(rows) and expression < len(rows[obj])):
        raise _FieldError('region', f'object {obj} / expression {expression} missing')
    expressions = rows[obj]
    height, width = _image_size(example)
    refexp_id = int(objects['refexp']['refexp_id'][obj][expression])
    return {
        'id': f'{int(example["image/id"])}-{refexp_id}',
        'image': example['image'],
        'text': _text(expressions[expression]),
        'region': tfds_box_to_pixels(bbox[obj], height, width),
    }


def _check_label(label: int, label_names: Sequence[str]) -> int:
    """A class index that names a class: a negative one (TFDS marks unlabelled examples -1) would index from the end."""
    if not 0 <= label < len(label_names):
        raise _FieldError('label', f'class {label} outside the {len(label_names)} names')
    return label


def coco_detection_record(example: dict, label_names: Sequence[str]) -> Record:
    """coco (detection configs): every object's box and class name."""
    objects = example['objects']
    bbox = np.asarray(objects['bbox'], np.float32).reshape(-1, 4)
    labels = np.asarray(objects['label']).reshape(-1)
    if len(labels) != len(bbox):
        raise _FieldError('labels', f'{len(labels)} labels for {len(bbox)} boxes')
    height, width = _image_size(example)
    return {
        'id': str(int(example['image/id'])),
        'image': example['image'],
        'boxes': tfds_box_to_pixels(bbox, height, width),
        'labels': [label_names[_check_label(int(i), label_names)] for i in labels],
    }


def clevr_record(example: dict, question: int) -> Record:
    """clevr: one VQA record per question (test questions come without answers)."""
    qa = example['question_answer']
    answer = _text(qa['answer'][question]) if question < len(qa['answer']) else ''
    record = {
        'id': f'{_text(example["file_name"])}-{question}',
        'image': example['image'],
        'question': _text(qa['question'][question]),
    }
    if answer:
        record['answers'] = {answer: 1.0}
    return record


def imagenet_record(example: dict, label_names: Sequence[str]) -> Record:
    """imagenet2012: the class name as 'label' and as 'caption' (OFA asks the caption prompt for it)."""
    name = label_names[_check_label(int(example['label']), label_names)]
    return {'id': _text(example['file_name']), 'image': example['image'], 'label': name, 'caption': name}


class TfdsMapping(NamedTuple):
    """How one TFDS dataset becomes records.

    `items(example)` lists the records an example holds as (a, b) pairs (None: one record per example);
    `record(example, item, label_names)` builds one; `label` is the path of the ClassLabel feature naming labels;
    `skip` are features never decoded (unused), `skip_for_items` those the item count does not need."""

    record: Callable[[dict, tuple[int, int], Sequence[str]], Record]
    items: Callable[[dict], list[tuple[int, int]]] | None = None
    label: tuple[str, ...] = ()
    skip: tuple[tuple[str, ...], ...] = ()
    skip_for_items: tuple[tuple[str, ...], ...] = (('image',),)


TFDS_MAPPINGS: dict[str, TfdsMapping] = {
    'coco_captions': TfdsMapping(
        record=lambda ex, item, names: coco_captions_record(ex, item[0]),
        items=lambda ex: [(k, 0) for k in range(len(ex['captions']['text']))],
    ),
    'ref_coco': TfdsMapping(
        record=lambda ex, item, names: ref_coco_record(ex, *item),
        items=lambda ex: [(j, k) for j, row in enumerate(ex['objects']['refexp']['raw']) for k in range(len(row))],
        skip=(('objects', 'mask'),),
    ),
    'coco': TfdsMapping(record=lambda ex, item, names: coco_detection_record(ex, names), label=('objects', 'label')),
    'clevr': TfdsMapping(
        record=lambda ex, item, names: clevr_record(ex, item[0]),
        items=lambda ex: [(k, 0) for k in range(len(ex['question_answer']['question']))],
    ),
    'imagenet2012': TfdsMapping(record=lambda ex, item, names: imagenet_record(ex, names), label=('label',)),
}


def _decoders(paths: Sequence[tuple[str, ...]]) -> dict | None:
    """Nested TFDS decoders that leave the features at `paths` undecoded."""
    import tensorflow_datasets as tfds

    decoders: dict = {}
    for path in paths:
        node = decoders
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = tfds.decode.SkipDecoding()
    return decoders or None


class TfdsSource:
    """A prepared TFDS dataset (array_record, random access, no TensorFlow needed) as raw records.

    Supported: coco_captions, ref_coco, coco (detection configs, e.g. 'coco/2017'), clevr, imagenet2012 (see
    TFDS_MAPPINGS). Images come as TFDS decodes them (np.uint8 [H, W, 3]). Datasets with several items an example
    (captions, referring expressions, questions) give one record per item, found by one pass over the split on
    construction that skips image decoding (examples without items give none; `examples_without_items` counts
    them). `per_example=True` gives one record per example with its first item instead (e.g. caption evaluation,
    where 'references' holds all captions), without that pass.
    `label_names` replaces the ClassLabel names (imagenet2012's are WordNet ids such as 'n01440764').
    Builders whose code imports TensorFlow (coco, coco_captions) load from the prepared files when the name carries
    the version, e.g. 'coco/2017:1.1.0'. The dataset is never downloaded here: prepare it first."""

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | None = None,
        per_example: bool = False,
        label_names: Sequence[str] | None = None,
    ):
        import tensorflow_datasets as tfds

        self.dataset = name.split('/')[0].split(':')[0]
        if self.dataset not in TFDS_MAPPINGS:
            raise ValueError(f'no record mapping for TFDS dataset {self.dataset!r}; supported: {sorted(TFDS_MAPPINGS)}')
        self.tfds_name, self.split, self.data_dir, self.per_example = name, split, data_dir, per_example
        self.name = f'{name}:{split}'
        mapping = TFDS_MAPPINGS[self.dataset]  # looked up again when reading: its functions do not pickle

        def open_split(skip):
            try:
                return tfds.data_source(name, split=split, data_dir=data_dir, download=False, decoders=_decoders(skip))
            except ModuleNotFoundError as error:
                if 'tensorflow' in str(error) and ':' not in name:
                    raise ModuleNotFoundError(
                        f'the TFDS builder code of {name!r} needs TensorFlow; name the version prepared under '
                        f'data_dir to read its files instead, e.g. {name + ":1.1.0"!r}'
                    ) from error
                raise

        self._data = open_split(mapping.skip)
        self.label_names = list(label_names) if label_names is not None else self._feature_names(mapping.label)
        self.examples_without_items = 0
        self._items: np.ndarray | None = None  # int32 [records, 3]: example, item a, item b
        if mapping.items is not None and not per_example:
            self._items = self._index(open_split(mapping.skip + mapping.skip_for_items), mapping.items)

    def _feature_names(self, path: tuple[str, ...]) -> list[str]:
        if not path:
            return []
        feature = self._data.dataset_info.features
        for key in path:
            feature = feature[key]
        return list(feature.names)

    def _index(self, data: Sequence[dict], items: Callable[[dict], list[tuple[int, int]]]) -> np.ndarray:
        rows = []
        for i in range(len(data)):
            try:
                example_items = items(data[i])
            except Exception:  # noqa: BLE001 - kept as one record that reports the problem when read
                example_items = [(-1, -1)]
            if not example_items:
                self.examples_without_items += 1
            rows.extend((i, a, b) for a, b in example_items)
        return np.array(rows, np.int32).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self._data) if self._items is None else len(self._items)

    def location(self, index: int) -> str:
        """Where record `index` comes from, for error messages: its example in the split."""
        example = index if self._items is None else int(self._items[index, 0])
        return f'example {example} of {self.name}'

    def __repr__(self) -> str:
        return (
            f'TfdsSource(name={self.tfds_name!r}, split={self.split!r}, records={len(self)}, '
            f'examples={len(self._data)}, examples_without_items={self.examples_without_items}, '
            f'per_example={self.per_example})'
        )

    def __getitem__(self, index: int) -> Record:
        if not 0 <= index < len(self):
            raise IndexError(f'record {index} outside {self.name!r} of {len(self)} records')
        example_index, item = (
            (index, (0, 0))
            if self._items is None
            else (int(self._items[index, 0]), (int(self._items[index, 1]), int(self._items[index, 2])))
        )
        mapping = TFDS_MAPPINGS[self.dataset]
        try:
            example = self._data[example_index]
            if item[0] < 0:  # listing this example's items failed on construction: report why
                mapping.items(example)
                raise _FieldError('example', 'its items could not be listed on construction')
            record = mapping.record(example, item, self.label_names)
        except _FieldError as error:
            return _error_record(self.name, index, error)
        except Exception as error:  # noqa: BLE001 - a corrupt or misshapen example must not end a long run
            return _error_record(self.name, index, _FieldError('example', f'{type(error).__name__}: {error}'))
        return {**record, 'source': self.name, 'record': index}
