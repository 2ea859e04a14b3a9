"""OFA's finetuned tasks as Python calls on batches of images and texts.

    predictor = Predictor.load('checkpoints/ofa_base')   # a save_model directory or a training workdir
    predictor.caption(['cat.jpg', pil_image, uint8_array])  -> [{'caption': 'a cat on a mat', 'score': -0.31}, ...]
    predictor.vqa(images, questions, answers=['yes', 'no', '2'])
    predictor.ground(images, ['the left dog'])             -> [{'box': [x0, y0, x1, y1], 'score': ...}]  (pixels)

Each input is answered on its own: an image that cannot be read or an empty question gives that item
{'error': '...'} naming what was wrong, and the rest of the batch is still answered. Images are prepared as OFA's
finetuning evaluation prepares them (bicubic square resize, normalization to [-1, 1]); instructions come from
`ofa_jax.data.tasks`. Batches are padded to a power-of-two size so each task compiles once per size.
"""
import dataclasses
import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image

from ofa_jax import decode, sharding, train
from ofa_jax.checkpoint import CONFIG_FILE, load_model
from ofa_jax.data import boxes as B
from ofa_jax.data import pipeline
from ofa_jax.data import tasks as data_tasks
from ofa_jax.data import transforms as T
from ofa_jax.data.image_codes import ImageTokenizer, images_from_code_tokens
from ofa_jax.data.registry import DropExample
from ofa_jax.data.vocab import Vocabulary, default_vocabulary
from ofa_jax.model import OFA, PATCH_SIZE, OFAConfig, abstract_variables, model_config

ImageInput = str | os.PathLike | Image.Image | np.ndarray | bytes
Result = dict[str, Any]

# SNLI-VE with the premise given as text (OFA's snli_ve_dataset with add_caption).
SNLI_VE_WITH_PREMISE = ' can image and text1 " {} " imply text2 " {} "?'
ENTAIL_ANSWERS = ('yes', 'no', 'maybe')
# Decoding per task (OFA's evaluation scripts); any field can be overridden per call. max_length counts eos, so it is
# OFA's max_len_b + 1.
DECODE_SETTINGS: dict[str, dict[str, Any]] = {
    'caption': dict(beam_size=5, max_length=17, no_repeat_ngram_size=3),
    'vqa': dict(beam_size=5, max_length=17),
    'ground': dict(beam_size=5, min_length=4, max_length=5),  # exactly the four bins of one box, then eos
    'detect': dict(beam_size=5, max_length=31),  # pretraining's detection targets are cut at 30 tokens
    'infill': dict(beam_size=5, max_length=65),
    'summarize': dict(beam_size=6, max_length=33, length_penalty=0.7),
}
# The field each task's result carries its answer in.
RESULT_KEYS = {'caption': 'caption', 'vqa': 'answer', 'ground': 'box', 'entail': 'answer', 'classify': 'label',
               'detect': 'boxes', 'infill': 'text', 'summarize': 'summary', 'text2image': 'images'}
# OFA's finetuning image sides: 480 for caption, VQA, SNLI-VE and ImageNet; 512 for RefCOCO.
IMAGE_SIZES = {'ground': 512}
DEFAULT_IMAGE_SIZE = 480
DEFAULT_MAX_SOURCE_LENGTH = 80


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint directory holds for inference; image_size and max_source_length only when a training
    config says what the model was trained with."""
    config: OFAConfig
    variables: dict[str, Any]  # {'params', 'batch_stats'}, unboxed
    image_size: Optional[int] = None
    max_source_length: Optional[int] = None
    step: Optional[int] = None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Reads a model directory written by `checkpoint.save_model` (or `python -m ofa_jax.convert`), or a training
    workdir (its latest step, with the EMA parameters when the run kept them)."""
    path = os.path.abspath(path)
    if os.path.exists(os.path.join(path, CONFIG_FILE)) and os.path.isdir(os.path.join(path, 'variables')):
        config, variables = load_model(path)
        return Checkpoint(config, variables)
    checkpoints = os.path.join(path, 'checkpoints')
    if not os.path.isdir(checkpoints):
        raise ValueError(f'checkpoint {path!r} is neither a model directory ({CONFIG_FILE} + variables/) nor a '
                         f'training workdir (checkpoints/)')
    manager = ocp.CheckpointManager(checkpoints, item_names=('state', 'config'))
    step = manager.latest_step()
    if step is None:
        raise ValueError(f'checkpoint {path!r}: the training workdir has no saved step yet')
    train_config = ml_collections.ConfigDict(
        manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config)
    model = OFA(model_config(train_config.model, **train_config.model_overrides))
    # The saved TrainState's shapes, placed on one device: restoring needs no knowledge of the training mesh.
    abstract = jax.eval_shape(functools.partial(train.initial_state, model, train.make_optimizer(train_config),
                                                train_config, train_config.data.image_size))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
    manager.close()
    params = state.ema_params if state.ema_params is not None else state.params
    return Checkpoint(model.config, {'params': params, 'batch_stats': state.batch_stats},
                      train_config.data.image_size, train_config.data.max_source_length, step)


def read_image(image: ImageInput) -> np.ndarray:
    """uint8 [H, W, 3] from a path, encoded bytes, a PIL image or an array ([H, W] gray or [H, W, 3] uint8).

    ValueError says what was wrong with the image."""
    if isinstance(image, (str, os.PathLike)):
        try:
            with open(image, 'rb') as f:
                image = f.read()
        except OSError as error:
            raise ValueError(f'image {os.fspath(image)!r} cannot be read: {error.strerror}') from None
    elif isinstance(image, Image.Image):
        image = np.asarray(image.convert('RGB'))
    elif not isinstance(image, (bytes, bytearray, np.ndarray)):
        raise ValueError(f'image must be a path, bytes, a PIL image or a uint8 array, got {type(image).__name__}')
    try:
        return data_tasks.decode_image({'image': image}, np.random.default_rng(0))['image']
    except DropExample as error:
        what = 'is not a readable image file' if error.reason == 'undecodable_image' else \
            'must be uint8 [H, W, 3] or [H, W]'
        raise ValueError(f'image {what} ({error.detail})') from None


def parse_detection(token_ids: Sequence[int], vocab: Vocabulary, scale: B.Scale = 1.0
                    ) -> tuple[np.ndarray, list[str]]:
    """OFA's detection output, per object four bin tokens then the label's text tokens, as boxes [N, 4] (original
    pixels, through the resize ratio `scale`) and N labels. Pieces that do not fit the pattern (fewer than four bins,
    a box with no label) are skipped; decoding stops at eos."""
    ids = [int(t) for t in token_ids]
    if vocab.eos_id in ids:
        ids = ids[:ids.index(vocab.eos_id)]
    found_boxes, labels = [], []
    i = 0
    while i < len(ids):
        if not all(vocab.is_bin(t) for t in ids[i:i + 4]) or len(ids) < i + 4:
            i += 1
            continue
        end = i + 4
        while end < len(ids) and not vocab.is_bin(ids[end]):
            end += 1
        label = vocab.decode(ids[i + 4:end]).strip()
        if label:
            found_boxes.append(B.tokens_to_box(ids[i:i + 4], vocab, data_tasks.MAX_IMAGE_SIZE, scale))
            labels.append(label)
        i = end
    return np.array(found_boxes, np.float64).reshape(-1, 4), labels


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """One prepared input: instruction ids (no bos/eos) and, for vision tasks, the image as the model sees it
    (float32 [S, S, 3] in [-1, 1]) with the resize ratio (sx, sy) that maps boxes back to the original pixels."""
    source_ids: Sequence[int]
    image: Optional[np.ndarray] = None
    scale: tuple[float, float] = (1.0, 1.0)


def _bucket(count: int, batch_size: int, shards: int) -> int:
    """The padded batch size: the next power of two, at most batch_size, a multiple of the mesh's batch shards."""
    size = min(1 << max(count - 1, 0).bit_length(), batch_size)
    return int(math.ceil(size / shards) * shards)


def _nonempty(text: Any, name: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f'{name} must be a string, got {type(text).__name__}')
    if not text.strip():
        raise ValueError(f'{name} is empty')
    return text


def _fill(template: str, *names_and_texts: Any, max_words: int = 30) -> str:
    """`template` filled with cleaned texts, given as name, text, name, text...; ValueError names an empty one."""
    return template.format(*(data_tasks.clean_text(_nonempty(text, name), max_words)
                             for name, text in zip(names_and_texts[::2], names_and_texts[1::2])))


def _question(question: Any) -> str:
    """OFA's finetuning VQA instruction: the cleaned question, ending in a question mark."""
    text = data_tasks.clean_text(_nonempty(question, 'question'), 30)
    return ' ' + (text if text.endswith('?') else text + '?')


def _candidates(candidates: Sequence[str], name: str) -> list[str]:
    if isinstance(candidates, str) or not len(candidates):
        raise ValueError(f'{name} must be a non-empty list of strings')
    return [_nonempty(c, name).strip() for c in candidates]


def _check_lengths(**sequences: Sequence[Any]) -> None:
    lengths = {name: len(values) for name, values in sequences.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f'inputs must have one entry per item, got lengths {lengths}')


class Predictor:
    """A loaded OFA model answering its tasks on batches; see the module docstring."""

    def __init__(self, config: OFAConfig, variables: dict[str, Any], *, image_size: Optional[int] = None,
                 max_source_length: int = DEFAULT_MAX_SOURCE_LENGTH, batch_size: int = 16,
                 vocab: Optional[Vocabulary] = None, mesh: Optional[jax.sharding.Mesh] = None,
                 logical_axis_rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES, prompt_type: str = 'none'):
        """image_size: the square side images are resized to (None: OFA's per-task sides, 480 or 512).
        mesh: where the model runs (default: every device, data parallel); batches split over its batch axes.
        prompt_type: what precedes the answer in the decoder, as the model was finetuned (OFA's --prompt-type):
        'none' (bos only), 'src' (the whole instruction) or 'prev_output' (the instruction without its eos)."""
        if batch_size < 1:
            raise ValueError(f'batch_size must be positive, got {batch_size}')
        if prompt_type not in decode.PROMPT_TYPES:
            raise ValueError(f'prompt_type must be one of {decode.PROMPT_TYPES}, got {prompt_type!r}')
        self.prompt_type = prompt_type
        self.model = OFA(config)
        self.vocab = vocab or default_vocabulary()
        self.image_size, self.max_source_length, self.batch_size = image_size, max_source_length, batch_size
        self.mesh = mesh or sharding.make_mesh()
        self.rules = tuple(logical_axis_rules)
        boxed = abstract_variables(config)
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.variables = jax.device_put(
            {'params': variables['params'], 'batch_stats': variables['batch_stats']},
            {'params': sharding.tree_shardings(boxed['params'], self.mesh, self.rules),
             'batch_stats': jax.tree_util.tree_map(lambda _: replicated, boxed['batch_stats'])})

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs: Any) -> 'Predictor':
        """A predictor of the checkpoint at `path` (see load_checkpoint); a training workdir's image size and source
        length are the defaults, keyword arguments go to the constructor."""
        checkpoint = load_checkpoint(path)
        defaults = {'image_size': checkpoint.image_size,
                    'max_source_length': checkpoint.max_source_length or DEFAULT_MAX_SOURCE_LENGTH}
        return cls(checkpoint.config, checkpoint.variables, **{**defaults, **kwargs})

    # ---- the tasks -----------------------------------------------------------------------------------------------

    def caption(self, images: Sequence[ImageInput], **settings: Any) -> list[Result]:
        """[{'caption', 'score'}] per image (beam 5, at most 16 tokens before eos, no repeated trigram)."""
        return self._vision('caption', images, [lambda: data_tasks.CAPTION] * len(images), **settings)

    def vqa(self, images: Sequence[ImageInput], questions: Sequence[str], answers: Optional[Sequence[str]] = None,
            mode: str = 'all', **settings: Any) -> list[Result]:
        """[{'answer', 'score'}] per (image, question).

        Without `answers`: free beam search. With them, mode 'all' scores every candidate answer and takes the best
        (OFA's allcand), mode 'trie' runs beam search restricted to the candidates."""
        _check_lengths(images=images, questions=questions)
        return self._vision('vqa', images, [functools.partial(_question, q) for q in questions],
                            candidates=answers, mode=mode, **settings)

    def ground(self, images: Sequence[ImageInput], texts: Sequence[str], **settings: Any) -> list[Result]:
        """[{'box': [x0, y0, x1, y1] in the original image's pixels, 'score'}] per (image, referring text)."""
        _check_lengths(images=images, texts=texts)
        return self._vision('ground', images, [functools.partial(_fill, data_tasks.GROUNDING, 'text', t)
                                               for t in texts], **settings)

    def entail(self, images: Sequence[ImageInput], hypotheses: Sequence[str],
               premises: Optional[Sequence[str]] = None) -> list[Result]:
        """SNLI-VE: [{'answer': 'yes' | 'no' | 'maybe', 'score'}] per (image, hypothesis), optionally with a text
        premise."""
        _check_lengths(images=images, hypotheses=hypotheses, **({} if premises is None else {'premises': premises}))
        prompts = [functools.partial(_fill, data_tasks.SNLI_VE, 'hypothesis', h) if premises is None else
                   functools.partial(_fill, SNLI_VE_WITH_PREMISE, 'premise', p, 'hypothesis', h)
                   for h, p in zip(hypotheses, premises or hypotheses)]
        return self._vision('entail', images, prompts)

    def classify(self, images: Sequence[ImageInput], labels: Sequence[str]) -> list[Result]:
        """ImageNet-style: [{'label', 'score'}] per image, the best of `labels` for the caption instruction."""
        return self._vision('classify', images, [lambda: data_tasks.CAPTION] * len(images), candidates=labels)

    def detect(self, images: Sequence[ImageInput], **settings: Any) -> list[Result]:
        """[{'boxes': [[x0, y0, x1, y1], ...] in original pixels, 'labels': [...], 'score'}] per image."""
        return self._vision('detect', images, [lambda: data_tasks.DETECTION] * len(images), **settings)

    def infill(self, texts: Sequence[str], **settings: Any) -> list[Result]:
        """Text infilling: each '<mask>' in a text stands for a missing span; [{'text', 'score'}] per text."""
        prefix, suffix = data_tasks.TEXT_INFILL.split('{}')

        def prompt(text):
            body = []
            for i, part in enumerate(_nonempty(text, 'text').split('<mask>')):
                part = data_tasks.clean_text(part)
                body += ([self.vocab.mask_id] if i else []) + (self.vocab.encode(' ' + part) if part else [])
            return self.vocab.encode(prefix.rstrip()) + body + self.vocab.encode(suffix)
        return self._text_only('infill', [functools.partial(prompt, t) for t in texts], **settings)

    def summarize(self, texts: Sequence[str], **settings: Any) -> list[Result]:
        """Gigaword-style summaries: [{'summary', 'score'}] per text (beam 6, length penalty 0.7, 32 tokens)."""
        return self._text_only('summarize', [
            lambda t=t: self.vocab.encode(_fill(data_tasks.GIGAWORD, 'text', t, max_words=100)) for t in texts],
            **settings)

    def text_to_image(self, texts: Sequence[str], tokenizer: ImageTokenizer, samples: int = 1, seed: int = 0,
                      **settings: Any) -> list[Result]:
        """OFA's text-to-image: [{'images': uint8 [samples, S, S, 3], 'scores': [samples]}] per text. Each sample is
        exactly (code_image_size / 8)^2 code tokens drawn by top-k sampling (k 256 unless overridden), constrained
        to the tokenizer's codes, and drawn by `tokenizer` (OFA's VQGAN, `ofa_jax.vqgan.VQGANTokenizer.load(...)`)."""
        return self._text_only('text2image', [
            lambda t=t: self.vocab.encode(_fill(data_tasks.TEXT_TO_IMAGE, 'text', t)) for t in texts],
            tokenizer=tokenizer, samples=samples, seed=seed, **settings)

    def answer(self, task: str, inputs: Sequence[ModelInput], candidates: Optional[Sequence[str]] = None,
               mode: str = 'all', **settings: Any) -> list[Result]:
        """Runs `task` on prepared inputs, one result per input.

        Entail always, classify always and vqa with candidates in mode 'all' score every candidate; the other tasks
        decode (vqa with candidates in mode 'trie': beam search inside a trie of the candidates)."""
        if task not in RESULT_KEYS:
            raise ValueError(f'task must be one of {sorted(RESULT_KEYS)}, got {task!r}')
        if mode not in ('all', 'trie'):
            raise ValueError(f"mode must be 'all' or 'trie', got {mode!r}")
        if task == 'entail':
            candidates = ENTAIL_ANSWERS
        if task == 'classify' and candidates is None:
            raise ValueError('classify needs candidate labels')
        key = RESULT_KEYS[task]
        if candidates is not None:
            candidates = _candidates(candidates, 'answers' if task == 'vqa' else 'labels')
        if not inputs:
            return []
        if task == 'text2image':
            return self._draw_images(inputs, **settings)
        if candidates is not None:
            if task != 'vqa' or mode == 'all':
                return [{key: candidates[int(np.argmax(s))], 'score': float(np.max(s))}
                        for s in self._score(inputs, candidates)]
        trie = None if candidates is None else decode.Trie.from_sequences([self._answer_ids(c) for c in candidates])
        outputs = self._generate(task, inputs, settings, constraint='bins' if task == 'ground' else None, trie=trie)
        results = []
        for model_input, (tokens, score) in zip(inputs, outputs):
            if task == 'ground':
                result = {key: B.tokens_to_box(tokens[:4], self.vocab, data_tasks.MAX_IMAGE_SIZE,
                                               model_input.scale).tolist()}
            elif task == 'detect':
                found, labels = parse_detection(tokens, self.vocab, model_input.scale)
                result = {key: found.tolist(), 'labels': labels}
            else:
                result = {key: self.vocab.decode(tokens).strip()}
            results.append({**result, 'score': score})
        return results

    # ---- inputs --------------------------------------------------------------------------------------------------

    def task_image_size(self, task: str) -> int:
        return self.image_size or IMAGE_SIZES.get(task, DEFAULT_IMAGE_SIZE)

    def prepare_image(self, image: ImageInput, task: str) -> tuple[np.ndarray, tuple[float, float]]:
        """The image as the model sees it for `task`, float32 [S, S, 3] in [-1, 1], and the resize ratio (sx, sy)."""
        sample = T.finetune_transform(self.task_image_size(task))(T.Sample.from_image(read_image(image)),
                                                                  np.random.default_rng(0))
        return sample.image, sample.scale

    def _vision(self, task: str, images: Sequence[ImageInput], prompts: Sequence[Callable[[], str]],
                **kwargs: Any) -> list[Result]:
        """Answers the items whose image and prompt can be prepared; each other item gets {'error': ...}."""
        def prepare(image, prompt):
            source_ids = self.vocab.encode(prompt())  # text first: its error is cheaper to find
            return ModelInput(source_ids, *self.prepare_image(image, task))
        return self._answer_each(task, [functools.partial(prepare, i, p) for i, p in zip(images, prompts)], **kwargs)

    def _text_only(self, task: str, prompts: Sequence[Callable[[], list[int]]], **kwargs: Any) -> list[Result]:
        return self._answer_each(task, [lambda p=p: ModelInput(p()) for p in prompts], **kwargs)

    def _answer_each(self, task: str, preparers: Sequence[Callable[[], ModelInput]], **kwargs: Any) -> list[Result]:
        results: list[Optional[Result]] = [None] * len(preparers)
        ready, inputs = [], []
        for i, prepare in enumerate(preparers):
            try:
                inputs.append(prepare())
                ready.append(i)
            except ValueError as error:
                results[i] = {'error': str(error)}
        for i, result in zip(ready, self.answer(task, inputs, **kwargs)):
            results[i] = result
        return results

    def _answer_ids(self, answer: str) -> list[int]:
        return self.vocab.encode(' ' + answer)

    # ---- running the model: every decode goes through _generate, every candidate scoring through _score -----------

    def _batches(self, inputs: Sequence[ModelInput]
                 ) -> Iterator[tuple[int, dict[str, Optional[jax.Array]]]]:
        """(rows, batch) per chunk of at most batch_size inputs, padded to a bucket size: src_tokens [B, Ls],
        patch_images [B, S, S, 3] and patch_masks [B] (both None for text-only inputs), placed on the mesh."""
        shards = sharding.batch_shards(self.mesh)
        for start in range(0, len(inputs), self.batch_size):
            chunk = inputs[start:start + self.batch_size]
            size = PATCH_SIZE if chunk[0].image is None else chunk[0].image.shape[0]
            spec = pipeline.BatchSpec(_bucket(len(chunk), self.batch_size, shards), size, self.max_source_length, 1)
            batch = pipeline.to_batch([{'source_ids': list(x.source_ids), 'target_ids': [], 'task': '',
                                        'image': x.image} for x in chunk], spec, [''])
            placed = jax.device_put({k: batch[k] for k in ('src_tokens', 'patch_images', 'patch_masks')},
                                    sharding.batch_sharding(self.mesh))
            if chunk[0].image is None:  # text-only rows: no image trunk at all
                placed['patch_images'] = placed['patch_masks'] = None
            yield len(chunk), placed

    def _generate(self, task: str, inputs: Sequence[ModelInput], overrides: dict[str, Any],
                  constraint: Optional[str] = None, trie: Any = None) -> list[tuple[np.ndarray, float]]:
        """Beam search (or sampling) with the task's settings: the best (tokens [max_length], score) per input."""
        settings = decode.DecodeSettings(**{**DECODE_SETTINGS[task], **overrides})
        outputs = []
        for rows, batch in self._batches(inputs):
            ranges = None
            if constraint is not None:
                ranges = np.tile(np.array(pipeline.CONSTRAINTS[constraint], np.int32), (len(batch['src_tokens']), 1))
            with self.mesh, nn.logical_axis_rules(self.rules):
                tokens, scores = decode.generate(self.model, self.variables, batch['src_tokens'],
                                                 batch['patch_images'], batch['patch_masks'], settings,
                                                 constraint_ranges=ranges, trie=trie, prefix_tokens=self._prefix(batch))
            tokens, scores = np.asarray(tokens), np.asarray(scores)
            outputs += [(tokens[row, 0], float(scores[row, 0])) for row in range(rows)]
        return outputs

    def _draw_images(self, inputs: Sequence[ModelInput], tokenizer: ImageTokenizer, samples: int = 1, seed: int = 0,
                     **overrides: Any) -> list[Result]:
        code_range = self.vocab.code_range(tokenizer.num_codes)
        results = []
        for index, (rows, batch) in enumerate(self._batches(inputs)):
            with self.mesh, nn.logical_axis_rules(self.rules):
                tokens, scores = decode.sample_codes(self.model, self.variables, batch['src_tokens'], code_range,
                                                     samples, jax.random.key(seed + index),
                                                     prefix_tokens=self._prefix(batch), **overrides)
            tokens = np.asarray(tokens)[:rows]
            images = images_from_code_tokens(self.vocab, tokenizer, tokens.reshape(rows * samples, -1))
            images = images.reshape(rows, samples, *images.shape[1:])
            results += [{'images': images[row], 'scores': np.asarray(scores)[row].tolist()} for row in range(rows)]
        return results

    def _prefix(self, batch: dict[str, Any]) -> Optional[np.ndarray]:
        return decode.prompt_prefix(np.asarray(batch['src_tokens']), self.prompt_type)

    def _score(self, inputs: Sequence[ModelInput], candidates: Sequence[str]) -> list[np.ndarray]:
        """Log-probability [n_candidates] of every candidate answer per input (teacher-forced, summed)."""
        candidate_ids = [self._answer_ids(c) for c in candidates]
        outputs = []
        for rows, batch in self._batches(inputs):
            with self.mesh, nn.logical_axis_rules(self.rules):
                scores = decode.score_candidates(self.model, self.variables, batch['src_tokens'],
                                                 batch['patch_images'], batch['patch_masks'], candidate_ids,
                                                 prefix_tokens=self._prefix(batch))
            outputs += list(np.asarray(scores)[:rows])
        return outputs
