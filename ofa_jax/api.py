"""OFA's tasks as Python calls on batches of images and texts.

    predictor = Predictor.load('checkpoints/ofa_base')   # a save_model directory or a training workdir
    predictor.caption(['cat.jpg', pil_image, uint8_array])  -> [{'caption': 'a cat on a mat', 'score': -0.31}, ...]
    predictor.vqa(images, questions, answers=['yes', 'no', '2'])
    predictor.grounding(images, ['the left dog'])          -> [{'box': [x0, y0, x1, y1], 'score': ...}]  (pixels)
    predictor.run('mnli', premise=[...], hypothesis=[...])  # any task of ofa_jax.data.tasks.TASKS by name

Each task is the declaration of the same name in `ofa_jax.data.tasks.TASKS`, the one training reads: its
instruction, answer constraint, decoding settings and output. Each input is answered on its own: an image that cannot
be read or an empty question gives that item {'error': '...'} naming what was wrong, and the rest of the batch is
still answered. Images are prepared as OFA's finetuning evaluation prepares them (bicubic square resize,
normalization to [-1, 1]). Batches are padded to a power-of-two size so each task compiles once per size.
"""

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from etils import epath
from PIL import Image

from ofa_jax import decode, sharding
from ofa_jax.checkpoint import load_checkpoint
from ofa_jax.data import mixtures, pipeline
from ofa_jax.data import tasks as task_declarations
from ofa_jax.data import transforms as T
from ofa_jax.data.answers import AnswerTrie
from ofa_jax.data.image_codes import ImageTokenizer, images_from_code_tokens
from ofa_jax.data.registry import DropExample
from ofa_jax.data.tasks import TASKS, TaskKind, task_kind
from ofa_jax.data.vocab import Vocabulary, default_vocabulary, vocabulary_from_spec
from ofa_jax.model import OFA, PATCH_SIZE, OFAConfig, abstract_variables

ImageInput = str | os.PathLike | Image.Image | np.ndarray | bytes
Result = dict[str, Any]

# OFA's finetuning image sides: 480 for caption, VQA, SNLI-VE and ImageNet; 512 for RefCOCO.
IMAGE_SIZES = {'grounding': 512}
DEFAULT_IMAGE_SIZE = 480
DEFAULT_MAX_SOURCE_LENGTH = 80


def read_image(image: ImageInput) -> np.ndarray:
    """uint8 [H, W, 3] from a path, encoded bytes, a PIL image or an array ([H, W] gray or [H, W, 3] uint8).

    ValueError says what was wrong with the image."""
    if isinstance(image, (str, os.PathLike)):
        try:
            image = epath.Path(image).read_bytes()  # a local or a remote (gs://) file
        except OSError as error:
            raise ValueError(f'image {os.fspath(image)!r} cannot be read: {error.strerror or error}') from None
    elif isinstance(image, Image.Image):
        image = np.asarray(image.convert('RGB'))
    elif not isinstance(image, (bytes, bytearray, np.ndarray)):
        raise ValueError(f'image must be a path, bytes, a PIL image or a uint8 array, got {type(image).__name__}')
    try:
        return task_declarations.decode_image({'image': image}, np.random.default_rng(0))['image']
    except DropExample as error:
        what = {
            'undecodable_image': 'is not a readable image file',
            'image_too_large': f'is too large: at most {task_declarations.MAX_IMAGE_PIXELS:,} pixels',
        }.get(error.reason, 'must be uint8 [H, W, 3] or [H, W]')
        raise ValueError(f'image {what} ({error.detail})') from None


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """One prepared input: instruction ids (no bos/eos) and, for vision tasks, the image as the model sees it
    (float32 [S, S, 3] in [-1, 1]) with the resize ratio (sx, sy) that maps boxes back to the original pixels."""

    source_ids: Sequence[int]
    image: np.ndarray | None = None
    scale: tuple[float, float] = (1.0, 1.0)


def _bucket(count: int, batch_size: int, shards: int) -> int:
    """The padded batch size: the next power of two, at most batch_size, a multiple of the mesh's batch shards."""
    size = min(1 << max(count - 1, 0).bit_length(), batch_size)
    return int(math.ceil(size / shards) * shards)


def _candidates(candidates: Sequence[str], name: str) -> list[str]:
    if isinstance(candidates, str) or not len(candidates):
        raise ValueError(f'{name} must be a non-empty list of strings')
    for candidate in candidates:
        if not isinstance(candidate, str) or not candidate.strip():
            raise ValueError(f'{name} must be non-empty strings, got {candidate!r}')
    return [c.strip() for c in candidates]


def _check_lengths(**sequences: Sequence[Any] | None) -> int:
    lengths = {name: len(values) for name, values in sequences.items() if values is not None}
    if len(set(lengths.values())) > 1:
        raise ValueError(f'inputs must have one entry per item, got lengths {lengths}')
    return next(iter(lengths.values()), 0)


def prepare_image(image: ImageInput, task: str, size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """The image as the model sees it for `task`, float32 [size, size, 3] in [-1, 1], and the resize ratio (sx, sy)."""
    sample = T.finetune_transform(size)(T.Sample.from_image(read_image(image)), np.random.default_rng(0))
    if task == 'image_infill':  # the centre half (per side) is what the model fills in, as in training
        return task_declarations.blank_centre(sample.image), sample.scale
    return T.normalize(sample.image), sample.scale


def prepare_input(
    kind: TaskKind, vocab: Vocabulary, image: ImageInput | None, inputs: dict[str, Any], image_size: int
) -> ModelInput:
    """One item of a task as the model takes it: the declared instruction of `inputs` and, for vision tasks, the
    prepared image. A region is given in the original image's pixels. ValueError says what was wrong."""
    if not kind.image:
        return ModelInput(kind.source_ids(vocab, **inputs))
    pixels, scale = prepare_image(image, kind.name, image_size)
    if 'region' in inputs:  # the instruction takes it in the model image's pixels
        region = np.asarray(inputs['region'], np.float64)
        if region.shape != (4,):
            raise ValueError(f'region must be [x0, y0, x1, y1], got {inputs["region"]!r}')
        inputs = {**inputs, 'region': region * np.array([*scale, *scale])}
    return ModelInput(kind.source_ids(vocab, **inputs), pixels, scale)


class Predictor:
    """A loaded OFA model answering its tasks on batches; see the module docstring."""

    def __init__(
        self,
        config: OFAConfig,
        variables: dict[str, Any],
        *,
        image_size: int | None = None,
        max_source_length: int = DEFAULT_MAX_SOURCE_LENGTH,
        batch_size: int = 16,
        vocab: Vocabulary | None = None,
        mesh: jax.sharding.Mesh | None = None,
        logical_axis_rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES,
        prompt_type: str | Mapping[str, str] | None = None,
    ):
        """image_size: the square side images are resized to (None: OFA's per-task sides, 480 or 512).
        mesh: where the model runs (default: every device, data parallel); batches split over its batch axes.
        prompt_type: what precedes the answer in the decoder, as the model was finetuned (OFA's --prompt-type):
        'none' (bos only), 'src' (the whole instruction) or 'prev_output' (the instruction without its eos), for
        every task or per task {task: prompt type}; tasks not named take their declared one."""
        if batch_size < 1:
            raise ValueError(f'batch_size must be positive, got {batch_size}')
        if isinstance(prompt_type, str):
            prompt_type = dict.fromkeys(TASKS, prompt_type)
        self.prompt_types = dict(prompt_type or {})
        for task, value in self.prompt_types.items():
            if value not in decode.PROMPT_TYPES:
                raise ValueError(f'prompt_type of {task} must be one of {decode.PROMPT_TYPES}, got {value!r}')
        self.config = config
        self.model = OFA(config)
        self.vocab = vocab or default_vocabulary()
        self.image_size, self.max_source_length, self.batch_size = image_size, max_source_length, batch_size
        self.mesh = mesh or sharding.make_mesh()
        self.rules = tuple(logical_axis_rules)
        self.variables = jax.device_put(
            {'params': variables['params'], 'batch_stats': variables['batch_stats']},
            sharding.variable_shardings(abstract_variables(config), self.mesh, self.rules),
        )

    @classmethod
    def load(cls, path: str | os.PathLike, step: int | None = None, **kwargs: Any) -> 'Predictor':
        """A predictor of the checkpoint at `path` (see `ofa_jax.checkpoint.load_checkpoint`; a training workdir's
        `step`, by default its latest); a training workdir's image size, source length and vocabulary are the
        defaults, keyword arguments go to the constructor."""
        checkpoint = load_checkpoint(path, step)
        defaults = {}
        if checkpoint.train_config is not None:
            data = checkpoint.train_config.data
            defaults = {
                'image_size': data.image_size,
                'max_source_length': data.max_source_length,
                # Workdirs from before data.vocab named a BPE directory in data.bpe_dir.
                'vocab': vocabulary_from_spec(
                    data.get('vocab') or (f'bpe:{data.bpe_dir}' if data.get('bpe_dir') else 'ofa')
                ),
                'prompt_type': mixtures.prompt_types(data),
            }
        return cls(checkpoint.config, checkpoint.variables, **{**defaults, **kwargs})

    # ---- the tasks, by their declared names ------------------------------------------------------------------------

    def caption(self, images: Sequence[ImageInput], **settings: Any) -> list[Result]:
        """[{'caption', 'score'}] per image (beam 5, at most 16 tokens before eos, no repeated trigram)."""
        return self.run('caption', images, **settings)

    def vqa(
        self,
        images: Sequence[ImageInput],
        questions: Sequence[str],
        answers: Sequence[str] | None = None,
        mode: str = 'all',
        **settings: Any,
    ) -> list[Result]:
        """[{'answer', 'score'}] per (image, question).

        Without `answers`: free beam search. With them, mode 'all' scores every candidate answer, each token's
        log-prob renormalized over the tokens that continue some candidate, and takes the best (OFA's allcand), mode
        'trie' runs beam search restricted to the candidates."""
        return self.run('vqa', images, candidates=answers, mode=mode, question=questions, **settings)

    def grounding(self, images: Sequence[ImageInput], texts: Sequence[str], **settings: Any) -> list[Result]:
        """[{'box': [x0, y0, x1, y1] in the original image's pixels, 'score'}] per (image, referring text)."""
        return self.run('grounding', images, text=texts, **settings)

    def grounded_caption(
        self, images: Sequence[ImageInput], regions: Sequence[Sequence[float]], **settings: Any
    ) -> list[Result]:
        """[{'caption', 'score'}] per (image, region [x0, y0, x1, y1] in the original image's pixels)."""
        return self.run('grounded_caption', images, region=regions, **settings)

    def itm(self, images: Sequence[ImageInput], texts: Sequence[str]) -> list[Result]:
        """Image-text matching: [{'answer': 'yes' | 'no', 'score'}] per (image, text)."""
        return self.run('itm', images, text=texts)

    def snli_ve(
        self, images: Sequence[ImageInput], hypotheses: Sequence[str], premises: Sequence[str] | None = None
    ) -> list[Result]:
        """SNLI-VE: [{'answer': 'yes' | 'no' | 'maybe', 'score'}] per (image, hypothesis), optionally with a text
        premise."""
        inputs = {'hypothesis': hypotheses} | ({} if premises is None else {'premise': premises})
        return self.run('snli_ve', images, **inputs)

    def classification(self, images: Sequence[ImageInput], labels: Sequence[str]) -> list[Result]:
        """ImageNet-style: [{'label', 'score'}] per image, the best of `labels` for the caption instruction."""
        return self.run('classification', images, candidates=labels)

    def detection(self, images: Sequence[ImageInput], **settings: Any) -> list[Result]:
        """[{'boxes': [[x0, y0, x1, y1], ...] in original pixels, 'labels': [...], 'score'}] per image."""
        return self.run('detection', images, **settings)

    def image_infill(self, images: Sequence[ImageInput], **settings: Any) -> list[Result]:
        """The codes of each image's centre half (the centre is blanked for the model, as in training):
        [{'codes': [side * side] code indices, 'score'}]."""
        return self.run('image_infill', images, **settings)

    def text_infill(self, texts: Sequence[str], **settings: Any) -> list[Result]:
        """Text infilling: each '<mask>' in a text stands for a missing span; [{'text', 'score'}] per text."""
        return self.run('text_infill', text=texts, **settings)

    def summarization(self, texts: Sequence[str], **settings: Any) -> list[Result]:
        """Gigaword-style summaries: [{'summary', 'score'}] per text (beam 6, length penalty 0.7, 32 tokens)."""
        return self.run('summarization', text=texts, **settings)

    def text_to_image(
        self, texts: Sequence[str], tokenizer: ImageTokenizer, samples: int = 1, seed: int = 0, **settings: Any
    ) -> list[Result]:
        """OFA's text-to-image: [{'images': uint8 [samples, S, S, 3], 'scores': [samples]}] per text. Each sample is
        exactly (code_image_size / 8)^2 code tokens drawn by top-k sampling (k 256 unless overridden), constrained
        to the tokenizer's codes, and drawn by `tokenizer` (OFA's VQGAN, `ofa_jax.vqgan.VQGANTokenizer.load(...)`)."""
        return self.run('text_to_image', text=texts, tokenizer=tokenizer, samples=samples, seed=seed, **settings)

    def run(
        self,
        task: str,
        images: Sequence[ImageInput] | None = None,
        *,
        candidates: Sequence[str] | None = None,
        mode: str = 'all',
        **inputs_and_settings: Any,
    ) -> list[Result]:
        """Any declared task by name: `images` for vision tasks and one list per instruction input (the task's
        `inputs`, e.g. question=[...]); other keywords are decoding settings. One result per item."""
        kind = task_kind(task)
        inputs = {k: v for k, v in inputs_and_settings.items() if k in kind.inputs}
        settings = {k: v for k, v in inputs_and_settings.items() if k not in kind.inputs}
        if kind.image and images is None:
            raise ValueError(f'task {task} needs images')
        if not kind.image and images is not None:
            raise ValueError(f'task {task} takes no images')
        count = _check_lengths(images=images, **inputs)
        preparers = [
            functools.partial(
                self._prepare,
                kind,
                None if images is None else images[i],
                {name: values[i] for name, values in inputs.items()},
            )
            for i in range(count)
        ]
        return self._answer_each(kind, preparers, candidates=candidates, mode=mode, **settings)

    # ---- inputs --------------------------------------------------------------------------------------------------

    def task_image_size(self, task: str) -> int:
        if self.image_size:
            return self.image_size
        if task == 'image_infill':  # the blanked centre half is the model's code image
            return 2 * self.config.code_image_size
        return IMAGE_SIZES.get(task, DEFAULT_IMAGE_SIZE)

    def prepare_image(self, image: ImageInput, task: str) -> tuple[np.ndarray, tuple[float, float]]:
        """The image as the model sees it for `task`, float32 [S, S, 3] in [-1, 1], and the resize ratio (sx, sy)."""
        return prepare_image(image, task, self.task_image_size(task))

    def _prepare(self, kind: TaskKind, image: ImageInput | None, inputs: dict[str, Any]) -> ModelInput:
        return prepare_input(kind, self.vocab, image, inputs, self.task_image_size(kind.name))

    def _answer_each(
        self, kind: TaskKind, preparers: Sequence[Callable[[], ModelInput]], **kwargs: Any
    ) -> list[Result]:
        results: list[Result | None] = [None] * len(preparers)
        ready, inputs = [], []
        for i, prepare in enumerate(preparers):
            try:
                inputs.append(prepare())
                ready.append(i)
            except ValueError as error:
                results[i] = {'error': str(error)}
        for i, result in zip(ready, self.answer(kind.name, inputs, **kwargs)):
            results[i] = result
        return results

    def answer(
        self,
        task: str,
        inputs: Sequence[ModelInput],
        candidates: Sequence[str] | None = None,
        mode: str = 'all',
        **settings: Any,
    ) -> list[Result]:
        """Runs `task` on prepared inputs, one result per input.

        Tasks with a closed answer set (snli_ve, itm, the text classifications), classification and vqa with
        candidates in mode 'all' score every candidate; the others decode (vqa with candidates in mode 'trie': beam
        search inside a trie of the candidates)."""
        kind = task_kind(task)
        if mode not in ('all', 'trie'):
            raise ValueError(f"mode must be 'all' or 'trie', got {mode!r}")
        if kind.candidates:
            candidates = kind.candidates
        if kind.choose and candidates is None:
            raise ValueError(f'{task} needs candidate labels')
        if candidates is not None:
            candidates = _candidates(candidates, 'answers' if task == 'vqa' else 'labels')
        if not inputs:
            return []
        if task == 'text_to_image':
            return self._draw_images(inputs, **settings)
        key = kind.result_key
        if candidates is not None and (task != 'vqa' or mode == 'all'):
            return [
                {key: candidates[int(np.argmax(s))], 'score': float(np.max(s))}
                for s in self._score(kind, inputs, candidates)
            ]
        trie = None if candidates is None else decode.Trie.from_sequences([self._answer_ids(c) for c in candidates])
        if task == 'image_infill':
            return [
                {key: (tokens[:-1] - self.vocab.code_id(0)).tolist(), 'score': score}
                for tokens, score in self._generate(kind, inputs, settings, codes=True)
            ]
        outputs = self._generate(kind, inputs, settings, trie=trie)
        return [
            {**kind.output(tokens, self.vocab, model_input.scale), 'score': score}
            for model_input, (tokens, score) in zip(inputs, outputs)
        ]

    def _answer_ids(self, answer: str) -> list[int]:
        return self.vocab.encode_spaced(answer)

    # ---- running the model: every decode goes through _generate, every candidate scoring through _score -----------

    def _batches(self, inputs: Sequence[ModelInput]) -> Iterator[tuple[int, dict[str, jax.Array | None]]]:
        """(rows, batch) per chunk of at most batch_size inputs, padded to a bucket size: src_tokens [B, Ls],
        patch_images [B, S, S, 3] and patch_masks [B] (both None for text-only inputs), placed on the mesh."""
        shards = sharding.batch_shards(self.mesh)
        for start in range(0, len(inputs), self.batch_size):
            chunk = inputs[start : start + self.batch_size]
            size = PATCH_SIZE if chunk[0].image is None else chunk[0].image.shape[0]
            batch = pipeline.to_source_batch(
                [list(x.source_ids) for x in chunk],
                [x.image for x in chunk],
                _bucket(len(chunk), self.batch_size, shards),
                size,
                self.max_source_length,
            )
            placed = jax.device_put(batch, sharding.batch_sharding(self.mesh))
            if chunk[0].image is None:  # text-only rows: no image trunk at all
                placed['patch_images'] = placed['patch_masks'] = None
            yield len(chunk), placed

    def _settings(self, kind: TaskKind, overrides: dict[str, Any]) -> decode.DecodeSettings:
        return decode.DecodeSettings(**{**kind.decode, **overrides})

    def _prefix(self, kind: TaskKind, batch: dict[str, Any]) -> np.ndarray | None:
        return decode.prompt_prefix(np.asarray(batch['src_tokens']), self.prompt_types.get(kind.name, kind.prompt_type))

    def _generate(
        self,
        kind: TaskKind,
        inputs: Sequence[ModelInput],
        overrides: dict[str, Any],
        trie: Any = None,
        codes: bool = False,
    ) -> list[tuple[np.ndarray, float]]:
        """Beam search with the task's settings: the best (tokens [max_length], score) per input. codes: the answer
        is exactly the model's code grid (image infilling)."""
        if codes:
            count = (self.config.code_image_size // 8) ** 2
            overrides = {**overrides, 'min_length': count, 'max_length': count + 1}
        settings = self._settings(kind, overrides)
        outputs = []
        for rows, batch in self._batches(inputs):
            size = len(batch['src_tokens'])
            ranges = None
            if kind.constraint:
                ranges = np.tile(np.array(self.vocab.constraint_range(kind.constraint), np.int32), (size, 1))
            with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
                tokens, scores = decode.generate(
                    self.model,
                    self.variables,
                    batch['src_tokens'],
                    batch['patch_images'],
                    batch['patch_masks'],
                    settings,
                    constraint_ranges=ranges,
                    trie=trie,
                    prefix_tokens=self._prefix(kind, batch),
                    code_masks=np.ones((size,), bool) if codes else None,
                )
            tokens, scores = np.asarray(tokens), np.asarray(scores)
            outputs += [(tokens[row, 0], float(scores[row, 0])) for row in range(rows)]
        return outputs

    def _draw_images(
        self, inputs: Sequence[ModelInput], tokenizer: ImageTokenizer, samples: int = 1, seed: int = 0, **overrides: Any
    ) -> list[Result]:
        kind = TASKS['text_to_image']
        code_range = self.vocab.code_range(tokenizer.num_codes)
        results = []
        for index, (rows, batch) in enumerate(self._batches(inputs)):
            with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
                tokens, scores = decode.sample_codes(
                    self.model,
                    self.variables,
                    batch['src_tokens'],
                    code_range,
                    samples,
                    jax.random.key(seed + index),
                    prefix_tokens=self._prefix(kind, batch),
                    **{**kind.decode, **overrides},
                )
            tokens = np.asarray(tokens)[:rows]
            images = images_from_code_tokens(self.vocab, tokenizer, tokens.reshape(rows * samples, -1))
            images = images.reshape(rows, samples, *images.shape[1:])
            results += [{'images': images[row], 'scores': np.asarray(scores)[row].tolist()} for row in range(rows)]
        return results

    def _score(self, kind: TaskKind, inputs: Sequence[ModelInput], candidates: Sequence[str]) -> list[np.ndarray]:
        """Log-probability [n_candidates] of every candidate answer per input (teacher-forced, summed, each token's
        renormalized over the candidates' trie)."""
        candidate_ids = [self._answer_ids(c) for c in candidates]
        trie = AnswerTrie(candidate_ids, self.config.vocab_size)  # once: its masks serve every batch
        outputs = []
        for rows, batch in self._batches(inputs):
            with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
                scores = decode.score_candidates(
                    self.model,
                    self.variables,
                    batch['src_tokens'],
                    batch['patch_images'],
                    batch['patch_masks'],
                    candidate_ids,
                    prefix_tokens=self._prefix(kind, batch),
                    trie=trie,
                )
            outputs += list(np.asarray(scores)[:rows])
        return outputs
