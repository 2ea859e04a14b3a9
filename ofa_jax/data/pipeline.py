"""The input pipeline: tasks -> shuffled, repeated, preprocessed streams -> a mixture -> fixed-shape batches.

Built on grain: deterministic by seed, sharded per process, optionally preprocessed in worker processes, and
resumable: `iterator.get_state()` goes into the training checkpoint and `set_state` continues exactly there.
Records a task cannot use are dropped and counted by reason in every batch (`batch['dropped']`), or, with
`strict=True`, stop the run with an error naming the task, source, record, where it sits (the file and line of a
line-based source) and reason. Examples longer than the batch's source or target are cut, as OFA cuts them, and
counted (`batch['cut']`).
"""

import collections
import dataclasses
import functools
import signal
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
import threadpoolctl
from absl import flags

from ofa_jax.data import transforms as T
from ofa_jax.data import vocab as V
from ofa_jax.data.registry import DropExample, Task

# The constraint range of an unconstrained target: every token id (preprocessors set 'constraint_range' from their
# vocabulary otherwise).
UNCONSTRAINED = (0, np.iinfo(np.int32).max)


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """Static shapes of a batch, so the train step compiles once."""

    batch_size: int  # examples per process
    image_size: int = 384
    max_source_length: int = 80
    max_target_length: int = 30  # decoder positions: a prompt's (see PROMPT_TYPES), the answer's and eos
    # > 0: batches carry 'allowed_tokens', per target position the tokens a trie-constrained answer may take, packed
    # over a vocabulary of this size (`ofa_jax.data.answers.AnswerTrie`); 0: no example is trie-constrained.
    trie_vocab_size: int = 0
    with_references: bool = False  # batches carry 'references': each row's reference captions (for SCST)
    # The lengths of the extra sub-batch (OFA's text, image and detection pretraining samples; see `batches`).
    extra_max_source_length: int = 0
    extra_max_target_length: int = 0
    extra_image_size: int = 0  # 0: image_size


# The model's inputs of a batch, besides the decoder's.
SOURCE_KEYS = ('src_tokens', 'patch_images', 'patch_masks')

# What precedes the answer in the decoder (OFA's --prompt-type): 'none' bos alone, 'src' the whole source (bos ...
# eos), 'prev_output' the source without its eos. The prompt's positions are not scored.
PROMPT_TYPES = ('none', 'src', 'prev_output')


def decoder_prompt(source: Sequence[int], prompt_type: str) -> list[int]:
    """The decoder's tokens before the answer, given the model's source [bos, ..., eos]."""
    if prompt_type == 'none':
        return [V.BOS]
    if prompt_type == 'src':
        return list(source)
    if prompt_type == 'prev_output':
        return list(source[:-1])
    raise ValueError(f'prompt_type must be one of {PROMPT_TYPES}, got {prompt_type!r}')


@dataclasses.dataclass(frozen=True)
class Dropped:
    """Stands in the stream for a record that was dropped, so the count travels with the data."""

    reason: str


def _describe(task: Task, record: dict) -> str:
    """Names a record (raw, or an example made from it) for an error: its task, source, index and id, and where it
    sits when the source can say (`location(index)`: the file and line of TSV and JSON lines)."""
    index = record.get('record', '?')
    where = ''
    if isinstance(index, int) and hasattr(task.source, 'location'):
        where = f', {task.source.location(index)}'
    return f'task {task.name!r}, source {task.source!r}, record {index} (id {record.get("id", "?")}{where})'


def _preprocess(
    task: Task, task_index: int, seed: int, strict: bool, keep_unlabeled: bool, index: int, record: dict
) -> Any:
    rng = np.random.default_rng([seed, task_index, index])
    try:
        return task.preprocess(record, rng, keep_unlabeled)
    except Exception as error:  # noqa: BLE001 - bad data must not end a long run; it is counted instead
        reason = error.reason if isinstance(error, DropExample) else f'error_{type(error).__name__}'
        if strict:
            raise ValueError(f'{_describe(task, record)}: {error}') from None
    return Dropped(f'{task.name}/{reason}')


def example_stream(
    tasks: Sequence[Task],
    rates: Sequence[float],
    *,
    seed: int,
    repeat: bool = True,
    shard_index: int = 0,
    shard_count: int = 1,
    strict: bool = False,
    keep_unlabeled: bool = False,
) -> grain.MapDataset:
    """Preprocessed examples (or Dropped markers) of the tasks mixed at `rates`; this process's shard. With
    keep_unlabeled (evaluation), a record without a reference is an example without 'target_ids'."""
    streams = []
    for i, task in enumerate(tasks):
        stream = grain.MapDataset.source(task.source)
        if repeat:
            # Shuffled again every epoch; each position gets its own preprocessing randomness.
            stream = stream.seed(seed + 7919 * i).shuffle().repeat()
        streams.append(stream.map_with_index(functools.partial(_preprocess, task, i, seed, strict, keep_unlabeled)))
    mixed = streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, weights=list(rates))
    return mixed[shard_index::shard_count]


def _source_and_prompt(example: dict, max_source_length: int) -> tuple[list[int], list[int]]:
    """The model's source [bos, ..., eos], cut to max_source_length, and the decoder's tokens before the answer."""
    source = [V.BOS, *example['source_ids'][: max_source_length - 2], V.EOS]
    return source, decoder_prompt(source, example.get('prompt_type', 'none'))


def to_batch(
    examples: Sequence[dict], spec: BatchSpec, task_names: Sequence[str], cut: collections.Counter | None = None
) -> dict[str, np.ndarray]:
    """Fixed-shape model inputs from preprocessed examples (fewer than batch_size: the rest is padding).

    A source past spec.max_source_length or a target past spec.max_target_length is cut, as OFA's datasets cut them
    (and count nowhere); `cut` counts each by '{task}/source_cut_to_max_source_length' or
    '{task}/target_cut_to_max_target_length'.

    Examples hold 'source_ids' and 'target_ids' (no bos/eos), optionally 'image' [S, S, 3]: uint8 pixels, normalized
    here (on the host that feeds the devices: the data workers send a quarter of float32's bytes), or float32 already
    in [-1, 1],
    'loss_weight', 'code_target', 'constraint_range' (the token ids [lo, hi) the target may take besides eos),
    'prompt_type' (PROMPT_TYPES: the decoder reads the prompt, then the answer; the prompt's targets are PAD, as in
    OFA's datasets), 'unscored_targets' (how many of the answer's first tokens are PAD targets, eos never),
    'decoder_input_ids' (what the decoder reads in place of target_ids: a noised copy) and
    'allowed_tokens' (uint8 [len(target_ids) + 1, ceil(V / 8)], see BatchSpec.trie_vocab_size).
    Returns src_tokens [B, Ls], patch_images [B, S, S, 3], patch_masks [B], prev_output_tokens / target_tokens [B, Lt],
    loss_weights [B], code_masks [B], constraint_ranges [B, 2], task_ids [B], example_mask [B], with
    spec.trie_vocab_size allowed_tokens [B, Lt, ceil(V / 8)] uint8 (every bit set where no trie constrains), and with
    spec.with_references 'references' (a list of B lists of reference captions, for the host)."""
    b, ls, lt, s = spec.batch_size, spec.max_source_length, spec.max_target_length, spec.image_size
    batch = {
        'src_tokens': np.full((b, ls), V.PAD, np.int32),
        'patch_images': np.zeros((b, s, s, 3), np.float32),
        'patch_masks': np.zeros((b,), bool),
        'prev_output_tokens': np.full((b, lt), V.PAD, np.int32),
        'target_tokens': np.full((b, lt), V.PAD, np.int32),
        'loss_weights': np.zeros((b,), np.float32),
        'code_masks': np.zeros((b,), bool),
        'constraint_ranges': np.tile(np.array(UNCONSTRAINED, np.int32), (b, 1)),
        'task_ids': np.zeros((b,), np.int32),
        'example_mask': np.zeros((b,), bool),
    }
    width = -(-spec.trie_vocab_size // 8)
    if width:
        batch['allowed_tokens'] = np.full((b, lt, width), 255, np.uint8)
    for row, example in enumerate(examples):
        source, prompt = _source_and_prompt(example, ls)
        answer = [*example['target_ids'][: lt - len(prompt)], V.EOS]
        if cut is not None and len(example['source_ids']) > ls - 2:
            cut[f'{example["task"]}/source_cut_to_max_source_length'] += 1
        if cut is not None and len(answer) <= len(example['target_ids']):
            cut[f'{example["task"]}/target_cut_to_max_target_length'] += 1
        batch['src_tokens'][row, : len(source)] = source
        decoder_input = [*prompt, *example.get('decoder_input_ids', answer)[: len(answer) - 1]]
        batch['prev_output_tokens'][row, : len(decoder_input)] = decoder_input
        batch['target_tokens'][row, len(prompt) - 1 : len(decoder_input)] = answer
        unscored = min(example.get('unscored_targets', 0), len(answer) - 1)  # the decoder still reads them
        batch['target_tokens'][row, len(prompt) - 1 : len(prompt) - 1 + unscored] = V.PAD
        if example.get('allowed_tokens') is not None:
            allowed = example['allowed_tokens']
            if allowed.shape != (len(example['target_ids']) + 1, width):
                raise ValueError(
                    f'task {example["task"]!r}: allowed_tokens {allowed.shape} does not fit {len(answer)} answer '
                    f'positions of a {spec.trie_vocab_size}-token vocabulary (BatchSpec.trie_vocab_size)'
                )
            batch['allowed_tokens'][row, len(prompt) - 1 : len(decoder_input)] = allowed[: len(answer)]
        if example.get('image') is not None:
            image = example['image']
            batch['patch_images'][row] = T.normalize(image) if image.dtype == np.uint8 else image
            batch['patch_masks'][row] = True
        batch['loss_weights'][row] = example.get('loss_weight', 1.0)
        batch['code_masks'][row] = example.get('code_target', False)
        if example.get('constraint') and 'constraint_range' not in example:
            raise ValueError(
                f'task {example["task"]!r}: an example constrained to {example["constraint"]!r} needs its '
                "'constraint_range' (Vocabulary.constraint_range)"
            )
        batch['constraint_ranges'][row] = example.get('constraint_range', UNCONSTRAINED)
        batch['task_ids'][row] = task_names.index(example['task'])
        batch['example_mask'][row] = True
    if spec.with_references:  # a host-side list, never placed on the devices
        batch['references'] = [list(e.get('references') or [e.get('caption', '')]) for e in examples]
        batch['references'] += [[] for _ in range(b - len(examples))]
    return batch


def to_source_batch(
    source_ids: Sequence[Sequence[int]],
    images: Sequence[np.ndarray | None],
    batch_size: int,
    image_size: int,
    max_source_length: int,
) -> dict[str, np.ndarray]:
    """The model's inputs alone, for inference: src_tokens [B, Ls], patch_images [B, S, S, 3], patch_masks [B];
    rows past len(source_ids) are padding."""
    examples = [
        {'source_ids': ids, 'target_ids': [], 'task': '', 'image': image} for ids, image in zip(source_ids, images)
    ]
    batch = to_batch(examples, BatchSpec(batch_size, image_size, max_source_length, 1), [''])
    return {k: batch[k] for k in SOURCE_KEYS}


def _check_shapes(example: dict, spec: BatchSpec) -> str | None:
    image = example.get('image')
    if image is not None and image.shape != (spec.image_size, spec.image_size, 3):
        return f'{example["task"]}/image_shape'
    if not len(example['target_ids']):
        return f'{example["task"]}/empty_target'
    if (
        example.get('prompt_type', 'none') != 'none'
        or example.get('allowed_tokens') is not None
        or example.get('code_target')
    ):
        # A prompted or trie-constrained answer, or a code image, is never cut: it would be trained as another.
        _, prompt = _source_and_prompt(example, spec.max_source_length)
        if len(prompt) + len(example['target_ids']) > spec.max_target_length:
            return f'{example["task"]}/answer_past_max_target_length'
    return None


# The counts a batch carries for the host (never placed on the devices): records dropped and examples cut, by
# reason, and each row's reference captions (with BatchSpec.with_references).
HOST_KEYS = ('dropped', 'cut', 'references')

# A stream that has yielded nothing usable for this many records in a row is broken (a wrong path, a corrupt copy of
# the data, a preprocessor that rejects everything): the run stops naming the reasons instead of reading forever.
MAX_DROPPED_IN_A_ROW = 10_000


class _BatchIterator(grain.DatasetIterator):
    """Batches from one stream of examples, or two: the second (OFA's extra pretraining tasks) becomes the sub-batch
    batch['extra'], shaped by its own spec."""

    def __init__(
        self,
        parents: Sequence[grain.DatasetIterator],
        specs: Sequence[BatchSpec],
        tasks: Sequence[Task],
        drop_remainder: bool,
        strict: bool,
    ):
        super().__init__(list(parents))
        self._streams, self._specs = list(parents), list(specs)
        self._tasks, self._drop_remainder, self._strict = list(tasks), drop_remainder, strict
        self._task_names = [t.name for t in tasks]
        self._dropped_in_a_row = [collections.Counter() for _ in parents]

    def _fill(self, part: int, dropped: collections.Counter) -> list[dict] | None:
        """The examples of one (sub-)batch of stream `part`, counting what it drops; None when a finite stream has
        ended before it."""
        spec, in_a_row, examples = self._specs[part], self._dropped_in_a_row[part], []
        while len(examples) < spec.batch_size:
            try:
                item = next(self._streams[part])
            except StopIteration:
                return examples or None
            reason = item.reason if isinstance(item, Dropped) else _check_shapes(item, spec)
            if reason and self._strict:  # a Dropped marker never comes in strict mode: preprocessing raised
                raise ValueError(f'{_describe(self._tasks[self._task_names.index(item["task"])], item)}: {reason}')
            if reason:
                dropped[reason] += 1
                in_a_row[reason] += 1
                if in_a_row.total() >= MAX_DROPPED_IN_A_ROW:
                    reasons = ', '.join(f'{r}: {n}' for r, n in in_a_row.most_common())
                    raise ValueError(
                        f'the last {in_a_row.total()} records were all dropped ({reasons}): fix the '
                        'data, or set data.strict=True to stop at the first bad record with its file and line'
                    )
            else:
                examples.append(item)
                in_a_row.clear()
        return examples

    def __next__(self) -> dict[str, Any]:
        dropped, cut = collections.Counter(), collections.Counter()
        parts = [self._fill(part, dropped) for part in range(len(self._streams))]
        # A finite stream's last batch is padded; one of padding alone still carries the counts of the records
        # dropped after the last example. The run ends with its main stream.
        short = parts[0] is None or len(parts[0]) < self._specs[0].batch_size
        if parts[0] is None and (self._drop_remainder or not dropped):
            raise StopIteration
        if short and self._drop_remainder:
            raise StopIteration
        batch = to_batch(parts[0] or [], self._specs[0], self._task_names, cut)
        if len(parts) > 1:
            batch['extra'] = to_batch(parts[1] or [], self._specs[1], self._task_names, cut)
        batch['dropped'], batch['cut'] = dict(dropped), dict(cut)
        return batch

    def get_state(self) -> dict[str, Any]:
        if len(self._streams) == 1:
            return self._streams[0].get_state()
        return {'main': self._streams[0].get_state(), 'extra': self._streams[1].get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        if len(self._streams) == 1:
            self._streams[0].set_state(state)
        else:
            self._streams[0].set_state(state['main'])
            self._streams[1].set_state(state['extra'])


class _BatchDataset(grain.IterDataset):
    def __init__(self, parents: Sequence[grain.IterDataset], *settings: Any):
        """settings: _BatchIterator's, after its parents (specs, tasks, drop_remainder, strict)."""
        super().__init__(list(parents))
        self._streams, self._settings = list(parents), settings

    def __iter__(self) -> _BatchIterator:
        return _BatchIterator([stream.__iter__() for stream in self._streams], *self._settings)


def limit_blas_threads() -> None:
    """Gives numpy's BLAS one thread in this process, for good. Preprocessing multiplies only small matrices (the
    world's patch codebook lookup: [16, 192] by [192, codes] an image), and BLAS's idle threads spin between them on
    the cores the train step computes on: the demo's step took 0.255 s with them and 0.20 s without (2 cores)."""
    threadpoolctl.threadpool_limits(1, user_api='blas')


def _init_worker(worker_index: int, num_workers: int) -> None:
    """Runs in each data worker: one BLAS thread (see limit_blas_threads), and SIGTERM ignored: a preemption notice,
    often sent to every process of the job, must not end a worker before the trainer has saved; the trainer stops
    its workers itself when it exits."""
    del worker_index, num_workers
    limit_blas_threads()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def in_extra_sub_batch(tasks: Sequence[Task]) -> list[bool]:
    """Which tasks `batches` puts in the extra sub-batch: those marked `extra`, when the mixture has others too."""
    mixed = not all(t.extra for t in tasks)
    return [t.extra and mixed for t in tasks]


def _normalized(element: Any) -> Any:
    """A stream element with its uint8 image normalized (a Dropped marker, or an example without one, as it is)."""
    if isinstance(element, dict) and getattr(element.get('image'), 'dtype', None) == np.uint8:
        return {**element, 'image': T.normalize(element['image'])}
    return element


def sub_batch_specs(spec: BatchSpec, extra_share: float, granule: int = 1) -> list[BatchSpec]:
    """The main and the extra sub-batch's specs when a share of the rates (extra_share, in (0, 1)) goes to the extra
    tasks: the extra sub-batch gets that share of spec.batch_size rows, as a multiple of `granule` (at least one),
    at spec.extra_max_source_length / extra_max_target_length and extra_image_size."""
    extra_rows = max(granule, round(spec.batch_size * extra_share / granule) * granule)
    if extra_rows >= spec.batch_size:
        raise ValueError(f'a batch of {spec.batch_size} rows has no room for {extra_rows} extra rows')
    return [
        dataclasses.replace(spec, batch_size=spec.batch_size - extra_rows),
        dataclasses.replace(
            spec,
            batch_size=extra_rows,
            image_size=spec.extra_image_size or spec.image_size,
            max_source_length=spec.extra_max_source_length,
            max_target_length=spec.extra_max_target_length,
        ),
    ]


def batches(
    tasks: Sequence[Task],
    rates: Sequence[float],
    spec: BatchSpec,
    *,
    seed: int,
    repeat: bool = True,
    shard_index: int = 0,
    shard_count: int = 1,
    workers: int = 0,
    strict: bool = False,
    granule: int = 1,
) -> grain.IterDataset:
    """Batches of the mixture for one process; iterate it, and save/restore its iterator's state to resume.

    workers > 0 preprocesses in that many processes (the output is identical to workers=0). A finite pipeline
    (repeat=False) pads its last batch (which holds only padding when the records after the last example were all
    dropped, so that their counts arrive); `example_mask` marks the real rows.

    Tasks marked `extra` (OFA's extra pretraining tasks: text, image and detection) are drawn from a stream of their
    own into batch['extra'], a sub-batch with spec.extra_max_source_length / extra_max_target_length, of as many of
    the spec.batch_size rows as their share of the rates (a multiple of `granule`: the rows each sub-batch must
    divide into, the process's batch shards times the accumulation steps); the main batch has the rest."""
    extra = in_extra_sub_batch(tasks)
    groups = [[i for i in range(len(tasks)) if not extra[i]], [i for i in range(len(tasks)) if extra[i]]]
    specs = [spec]
    if groups[1]:
        if not spec.extra_max_target_length:
            raise ValueError(
                f'tasks {[tasks[i].name for i in groups[1]]} form an extra sub-batch: their BatchSpec needs '
                'extra_max_source_length and extra_max_target_length'
            )
        specs = sub_batch_specs(spec, sum(rates[i] for i in groups[1]) / sum(rates), granule)
    streams = []
    for part, members in enumerate(g for g in groups if g):
        stream = example_stream(
            [tasks[i] for i in members],
            [rates[i] for i in members],
            seed=seed + part,  # the extra stream's shuffles and randomness are its own
            repeat=repeat,
            shard_index=shard_index,
            shard_count=shard_count,
            strict=strict,
        )
        # Pixels become the model's floats in this process, off the thread that builds batches (numpy leaves the GIL
        # while it computes): without workers in the threads that preprocess, with workers after them, in a thread
        # of its own, so that they send uint8 (a quarter of float32's bytes).
        if not workers:
            # Two batches ahead, as with workers: grain's default of 500 examples has every next() poll up to 500
            # pending futures, 20 ms of the training thread per batch of 32 (a tenth of the demo's step).
            ahead = 2 * spec.batch_size
            threads = min(grain.ReadOptions().num_threads, ahead)  # grain warns of threads it cannot keep busy
            stream = stream.map(_normalized).to_iter_dataset(
                grain.ReadOptions(num_threads=threads, prefetch_buffer_size=ahead)
            )
        else:
            if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside an absl app, use their defaults
                flags.FLAGS.mark_as_parsed()
            stream = stream.to_iter_dataset().mp_prefetch(
                grain.MultiprocessingOptions(num_workers=workers), worker_init_fn=_init_worker
            )
            stream = grain.experimental.ThreadPrefetchIterDataset(
                stream.map(_normalized), prefetch_buffer_size=2 * spec.batch_size
            )
        streams.append(stream)
    return _BatchDataset(streams, specs, tasks, repeat, strict)
