"""OFA's tasks, each declared once: its instruction, preprocessing, output constraint, decoding, postprocessing and
metrics. Training (through these preprocessors), `ofa_jax.evaluate`, `ofa_jax.predict` and the Python API
(`ofa_jax.api.Predictor`) all read the declarations in `TASKS`, so a prompt cannot differ between training and
inference.

Every preprocessor takes an example dict and a numpy Generator and returns the next example (or raises DropExample);
a task's chain ends in 'source_ids' / 'target_ids' (no bos/eos) and, where it has one, 'image' ([S, S, 3] uint8 pixels,
normalized when batched; image infilling's float32 in [-1, 1]). Templates are OFA's, leading spaces included. Source
mixtures and registration from a config live in `ofa_jax.data.mixtures`.
"""

import dataclasses
import functools
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from ofa_jax import metrics
from ofa_jax.data import boxes as B
from ofa_jax.data import transforms as T
from ofa_jax.data.answers import AnswerTrie
from ofa_jax.data.image_codes import ImageTokenizer
from ofa_jax.data.registry import DropExample, Unlabeled
from ofa_jax.data.vocab import Vocabulary

# Pretraining instructions (OFA's unify dataset).
GROUNDING = ' which region does the text " {} " describe?'
GROUNDED_CAPTION = '  what does the region describe? region:'
IMAGE_TEXT_MATCH = ' does the image describe " {} "?'
ANSWER_MATCH = ' what is the answer to question " {} ". is " {} "?'
CAPTION = ' what does the image describe?'
DETECTION = ' what are the objects in the image?'
IMAGE_INFILL = ' what is the image in the middle part?'
TEXT_INFILL = ' what is the complete text of " {} "?'
# Finetuning instructions.
SNLI_VE = ' does the image describe " {} "?'
SNLI_VE_WITH_PREMISE = ' can image and text1 " {} " imply text2 " {} "?'  # OFA's snli_ve with add_caption
TEXT_TO_IMAGE = ' what is the complete image? caption: {}'
SST2 = ' is the sentiment of text " {} " positive or negative?'
TEXT_PAIR_ENTAILMENT = ' can text1 " {} " imply text2 " {} "?'  # MNLI, RTE
QQP = ' is question " {} " and question " {} " equivalent?'
GIGAWORD = ' what is the summary of article " {} "?'

MAX_IMAGE_SIZE = B.MAX_IMAGE_SIZE
SNLI_ANSWERS = {'entailment': 'yes', 'contradiction': 'no', 'neutral': 'maybe'}
MASK = '<mask>'  # marks a missing span in text infilling's input
MAX_OBJECTS = 30  # object words added to a VQA question (OFA's max_object_length)

Preprocessor = Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]
# (uint8 image [H, W, 3], boxes [N, 4], rng) -> (uint8 image [S, S, 3], boxes [N, 4], keep [N] bool)
ImageTransform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray, np.ndarray]]


def clean_text(text: str, max_words: int | None = None) -> str:
    """OFA's caption/question normalization: lower case, leading punctuation off, '-' and '/' as spaces, single
    spaces, at most max_words words."""
    text = text.lower().lstrip(',.!?*#:;~').replace('-', ' ').replace('/', ' ').replace('<person>', 'person')
    words = text.split()
    return ' '.join(words[:max_words] if max_words else words)


def finetune_caption_text(text: str, max_words: int | None = 20) -> str:
    """OFA's caption finetuning target (caption_dataset.py): every `string.punctuation` character deleted ("t-shirt"
    -> "tshirt", "man's" -> "mans"), case kept, single spaces, the first max_words words."""
    words = metrics.strip_punctuation(text).split()
    return ' '.join(words[:max_words] if max_words else words)


def glue_text(text: str, max_words: int | None = 512) -> str:
    """A GLUE sentence as OFA's NLU datasets take it (sst2_dataset.py, mnli_dataset.py, ...): lowercased, spaces
    collapsed, the first max_words words (their max_src_length, 512)."""
    return ' '.join(text.lower().split()[:max_words])


def _as_written(text: str, max_words: int | None) -> str:
    # Spaces collapsed, case and punctuation kept.
    return ' '.join(text.split()[:max_words])


def _text(
    value: Any, name: str, max_words: int | None = 80, clean: Callable[[str, int | None], str] = clean_text
) -> str:
    """`value` cleaned for an instruction by `clean`; ValueError names an input that is not a non-empty string. OFA
    cuts a question, expression or hypothesis at max_src_length words: 80 in its pretraining and finetuning
    scripts."""
    if not isinstance(value, str):
        raise ValueError(f'{name} must be a string, got {type(value).__name__}')
    text = clean(value, max_words)
    if not text:
        raise ValueError(f'{name} is empty')
    return text


# ---- instructions: raw inputs -> source ids, shared by the training preprocessors and the API ------------------


def caption_instruction(vocab: Vocabulary) -> list[int]:
    return vocab.encode(CAPTION)


def vqa_instruction(vocab: Vocabulary, question: str, add_question_mark: bool = True) -> list[int]:
    """The cleaned question itself; OFA's finetuning ends it in a question mark, its pretraining does not."""
    text = _text(question, 'question')
    if add_question_mark and not text.endswith('?'):
        text += '?'
    return vocab.encode_spaced(text)


def grounding_instruction(vocab: Vocabulary, text: str) -> list[int]:
    return vocab.encode(GROUNDING.format(_text(text, 'text')))


def grounded_caption_instruction(vocab: Vocabulary, region: Sequence[float]) -> list[int]:
    """region: [4] (x0, y0, x1, y1) in the pixels of the model's input image."""
    return vocab.encode(GROUNDED_CAPTION) + B.box_to_tokens(region, vocab, MAX_IMAGE_SIZE)


def itm_instruction(vocab: Vocabulary, text: str) -> list[int]:
    return vocab.encode(IMAGE_TEXT_MATCH.format(_text(text, 'text')))


def answer_match_instruction(vocab: Vocabulary, question: str, answer: str) -> list[int]:
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError('answer must be a non-empty string')
    return vocab.encode(ANSWER_MATCH.format(_text(question, 'question'), answer.strip()))


def detection_instruction(vocab: Vocabulary) -> list[int]:
    return vocab.encode(DETECTION)


def image_infill_instruction(vocab: Vocabulary) -> list[int]:
    return vocab.encode(IMAGE_INFILL)


def text_infill_instruction(vocab: Vocabulary, text: str) -> list[int]:
    """`text` with each missing span marked by '<mask>' (one mask token per span)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            'text is empty' if isinstance(text, str) else f'text must be a string, got {type(text).__name__}'
        )
    prefix, suffix = TEXT_INFILL.split('{}')
    body = []
    for i, part in enumerate(clean_text(text).split(MASK)):
        # Word by word, as the target is encoded.
        body += ([vocab.mask_id] if i else []) + [t for word in part.split() for t in vocab.encode_spaced(word)]
    return vocab.encode(prefix.rstrip()) + body + vocab.encode(suffix)


def text_to_image_instruction(vocab: Vocabulary, text: str) -> list[int]:
    """The caption as OFA's image_gen_dataset.py puts it: its first 64 words (the scripts' max_src_length), spaces
    collapsed, case and punctuation kept."""
    return vocab.encode(TEXT_TO_IMAGE.format(_text(text, 'text', 64, _as_written)))


def snli_ve_instruction(vocab: Vocabulary, hypothesis: str, premise: str | None = None) -> list[int]:
    """Does the image (and the text premise, when given) imply the hypothesis?"""
    if premise is None:
        return vocab.encode(SNLI_VE.format(_text(hypothesis, 'hypothesis')))
    return vocab.encode(SNLI_VE_WITH_PREMISE.format(_text(premise, 'premise'), _text(hypothesis, 'hypothesis')))


def sst2_instruction(vocab: Vocabulary, text: str) -> list[int]:
    return vocab.encode(SST2.format(_text(text, 'text', 512, glue_text)))


def text_pair_instruction(template: str) -> Callable[..., list[int]]:
    def instruction(vocab: Vocabulary, premise: str, hypothesis: str) -> list[int]:
        return vocab.encode(
            template.format(_text(premise, 'premise', 512, glue_text), _text(hypothesis, 'hypothesis', 512, glue_text))
        )

    return instruction


def summarization_instruction(vocab: Vocabulary, text: str) -> list[int]:
    """OFA's summary_dataset.py: the article's first 512 words, Gigaword's '<unk>' written 'unk'."""
    return vocab.encode(GIGAWORD.format(_text(text, 'text', 512, summary_text)))


# ---- outputs: answer tokens -> result fields ---------------------------------------------------------------------


def _until_eos(tokens: Sequence[int], vocab: Vocabulary) -> list[int]:
    ids = [int(t) for t in tokens]
    return ids[: ids.index(vocab.eos_id)] if vocab.eos_id in ids else ids


def text_output(key: str) -> Callable[[Sequence[int], Vocabulary, B.Scale], dict[str, Any]]:
    def output(tokens, vocab, scale):
        return {key: vocab.decode(_until_eos(tokens, vocab)).strip()}

    return output


def box_output(tokens: Sequence[int], vocab: Vocabulary, scale: B.Scale) -> dict[str, Any]:
    return {'box': B.tokens_to_box(list(tokens)[:4], vocab, MAX_IMAGE_SIZE, scale).tolist()}


def objects_output(tokens: Sequence[int], vocab: Vocabulary, scale: B.Scale) -> dict[str, Any]:
    found, labels = B.tokens_to_objects(tokens, vocab, scale)
    return {'boxes': found.tolist(), 'labels': labels}


# ---- references: what a prediction of a preprocessed example is scored against ----------------------------------


def _target_text(example: dict, vocab: Vocabulary) -> str:
    return vocab.decode(example['target_ids']).strip()


def caption_references(example: dict, vocab: Vocabulary) -> list[str]:
    return [r.strip() for r in example.get('references', [])] or [_target_text(example, vocab)]


def vqa_references(example: dict, vocab: Vocabulary) -> dict[str, float]:
    return dict(example['answers'])


def box_reference(example: dict, vocab: Vocabulary) -> list[float]:
    return np.asarray(example['region'], np.float64).tolist()


def objects_reference(example: dict, vocab: Vocabulary) -> tuple[list, list[str]]:
    return np.asarray(example['boxes'], np.float64).tolist(), [clean_text(label) for label in example['labels']]


def text_reference(example: dict, vocab: Vocabulary) -> list[str]:
    return [_target_text(example, vocab)]


def label_reference(example: dict, vocab: Vocabulary) -> str:
    return _target_text(example, vocab)


def codes_reference(example: dict, vocab: Vocabulary) -> list[int]:
    return [int(t) - vocab.code_id(0) for t in example['target_ids']]


# ---- metrics: {id: prediction}, {id: reference} -> {name: value} ------------------------------------------------


def caption_metrics(predictions: Mapping[Any, str], references: Mapping[Any, list[str]]) -> dict[str, float]:
    """OFA's caption scores: punctuation deleted from the generated captions (OFA's eval_caption), then both sides
    through the COCO evaluation's PTB tokenizer; the references as the dataset gives them."""
    predictions = {k: metrics.ptb_tokenize(metrics.strip_punctuation(p)) for k, p in predictions.items()}
    references = {k: [metrics.ptb_tokenize(r) for r in refs] for k, refs in references.items()}
    return {
        'cider': metrics.cider(references, predictions),
        'bleu4': metrics.bleu4(references, predictions),
        'exact_match': metrics.exact_match(predictions, references),
    }


def exact_match_metrics(predictions: Mapping[Any, str], references: Mapping[Any, list[str]]) -> dict[str, float]:
    return {'exact_match': metrics.exact_match(predictions, references)}


def vqa_metrics(predictions: Mapping[Any, str], references: Mapping[Any, dict[str, float]]) -> dict[str, float]:
    return {'accuracy': metrics.vqa_score(predictions, references)}


def grounding_metrics(predictions: Mapping[Any, list], references: Mapping[Any, list]) -> dict[str, float]:
    keys = list(predictions)
    return {
        'accuracy': metrics.grounding_accuracy(
            np.array([predictions[k] for k in keys]), np.array([references[k] for k in keys])
        )
    }


def detection_metrics(predictions: Mapping[Any, tuple], references: Mapping[Any, tuple]) -> dict[str, float]:
    return {'f1': metrics.detection_f1(predictions, references)}


def code_metrics(predictions: Mapping[Any, list[int]], references: Mapping[Any, list[int]]) -> dict[str, float]:
    """The fraction of codes predicted right, per image, averaged over images."""
    for key in predictions:
        if len(predictions[key]) != len(references[key]):
            raise ValueError(
                f'{key}: {len(predictions[key])} codes predicted for a target of {len(references[key])}; '
                "the model's code_image_size must give the target's code grid"
            )
    return {
        'code_accuracy': float(
            np.mean([np.mean(np.asarray(predictions[k]) == np.asarray(references[k])) for k in predictions])
        )
    }


def accuracy_metrics(predictions: Mapping[Any, str], references: Mapping[Any, str]) -> dict[str, float]:
    return {'accuracy': metrics.accuracy(predictions, references)}


def vqa_results_file(lines: list[dict]) -> list[dict] | None:
    """VQA predictions (predictions.jsonl's lines) as the result file the VQA v2 evaluation server (EvalAI) takes
    for test-dev and test-std, and OFA writes: [{'question_id': int, 'answer': str}]; None where an id is not a
    question id (an integer)."""
    if not all(line['id'].isdigit() for line in lines):
        return None
    return [{'question_id': int(line['id']), 'answer': line['prediction']} for line in lines]


# ---- the declarations ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskKind:
    """One of OFA's tasks, declared once. Its `name` is the one name used everywhere: the world's task
    (`world_<name>`), the finetuning kind (`configs/finetune.py:<name>`), `predict --task`, the Predictor method,
    the decoding settings and the metric keys (`<name>_<metric>`)."""

    name: str
    instruction: Callable[..., list[int]]  # (vocab, **inputs) -> source ids, no bos/eos
    inputs: tuple[str, ...] = ()  # the raw text (or region) inputs of the instruction, besides the image
    image: bool = True  # whether the model sees an image
    constraint: str | None = None  # answer tokens limited to 'bins' or 'codes' (and eos) in decoding ...
    # ... and in training's loss too: OFA limits the loss only where its script passes --constraint-range (image
    # generation), so grounding and image infilling learn over the whole vocabulary.
    train_constraint: bool = False
    candidates: tuple[str, ...] = ()  # a closed answer set, scored rather than decoded
    choose: bool = False  # answers are chosen among caller-given candidates (classification)
    decode: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # DecodeSettings, as OFA's evaluation sets
    prompt_type: str = 'none'  # what precedes the answer in the decoder: 'none', 'src' or 'prev_output'
    output: Callable[[Sequence[int], Vocabulary, B.Scale], dict[str, Any]] | None = None  # tokens -> result
    optional_inputs: tuple[str, ...] = ()  # inputs that may be left out
    result_key: str = 'answer'  # the result field holding the answer
    scored_keys: tuple[str, ...] = ()  # the result fields its metrics score (default: result_key)
    reference: Callable[[dict, Vocabulary], Any] | None = None  # a preprocessed example -> what is scored
    metrics: Callable[[Mapping, Mapping], dict[str, float]] | None = None  # None: no automatic evaluation
    # predictions.jsonl's lines -> the result file its evaluation server takes (None where the ids are not its)
    results_file: Callable[[list[dict]], list[dict] | None] | None = None

    def source_ids(self, vocab: Vocabulary, **inputs: Any) -> list[int]:
        """The instruction's token ids for these inputs; ValueError names a missing, unknown or empty one."""
        missing = [name for name in self.inputs if name not in inputs and name not in self.optional_inputs]
        unknown = sorted(set(inputs) - set(self.inputs))
        if missing or unknown:
            raise ValueError(f'task {self.name} takes inputs {list(self.inputs)}; missing {missing}, unknown {unknown}')
        return self.instruction(vocab, **inputs)

    def prediction(self, result: dict[str, Any]) -> Any:
        """The part of a result its metrics score."""
        if self.scored_keys:
            return tuple(result[key] for key in self.scored_keys)
        return result[self.result_key]


_TEXT_ANSWER = dict(output=text_output('answer'), reference=label_reference, metrics=accuracy_metrics)
TASKS: dict[str, TaskKind] = {
    kind.name: kind
    for kind in (
        TaskKind(
            'caption',
            caption_instruction,
            decode=dict(beam_size=5, min_length=1, max_length=17, no_repeat_ngram_size=3),
            output=text_output('caption'),
            result_key='caption',
            reference=caption_references,
            metrics=caption_metrics,
        ),
        TaskKind(
            'vqa',
            vqa_instruction,
            ('question',),
            # OFA's beam evaluation (evaluate_vqa_beam.sh): --unnormalized scores.
            decode=dict(beam_size=5, min_length=1, max_length=17, length_penalty=0.0),
            output=text_output('answer'),
            reference=vqa_references,
            metrics=vqa_metrics,
            results_file=vqa_results_file,
        ),
        # A box is exactly the four bins, then eos.
        TaskKind(
            'grounding',
            grounding_instruction,
            ('text',),
            constraint='bins',
            decode=dict(beam_size=5, min_length=4, max_length=5, no_repeat_ngram_size=3),
            output=box_output,
            result_key='box',
            reference=box_reference,
            metrics=grounding_metrics,
        ),
        TaskKind(
            'grounded_caption',
            grounded_caption_instruction,
            ('region',),
            decode=dict(beam_size=5, min_length=1, max_length=17, no_repeat_ngram_size=3),
            output=text_output('caption'),
            result_key='caption',
            reference=text_reference,
            metrics=exact_match_metrics,
        ),
        TaskKind('itm', itm_instruction, ('text',), candidates=('yes', 'no'), **_TEXT_ANSWER),
        TaskKind(
            'answer_match', answer_match_instruction, ('question', 'answer'), candidates=('yes', 'no'), **_TEXT_ANSWER
        ),
        # Pretraining's detection targets are cut at 30 tokens.
        TaskKind(
            'detection',
            detection_instruction,
            decode=dict(beam_size=5, min_length=1, max_length=31),
            output=objects_output,
            result_key='boxes',
            scored_keys=('boxes', 'labels'),
            reference=objects_reference,
            metrics=detection_metrics,
        ),
        # Exactly the model's code grid (code_image_size / 8 squared), then eos.
        TaskKind(
            'image_infill',
            image_infill_instruction,
            constraint='codes',
            decode=dict(beam_size=5),
            result_key='codes',
            reference=codes_reference,
            metrics=code_metrics,
        ),
        TaskKind(
            'text_infill',
            text_infill_instruction,
            ('text',),
            image=False,
            decode=dict(beam_size=5, min_length=1, max_length=65),
            output=text_output('text'),
            result_key='text',
            reference=text_reference,
            metrics=exact_match_metrics,
        ),
        TaskKind(
            'text_to_image',
            text_to_image_instruction,
            ('text',),
            image=False,
            constraint='codes',
            train_constraint=True,
            decode=dict(top_k=256),
            result_key='images',
        ),
        TaskKind(
            'snli_ve',
            snli_ve_instruction,
            ('hypothesis', 'premise'),
            optional_inputs=('premise',),
            candidates=('yes', 'no', 'maybe'),
            **_TEXT_ANSWER,
        ),
        TaskKind(
            'classification',
            caption_instruction,
            choose=True,
            output=text_output('label'),
            result_key='label',
            reference=label_reference,
            metrics=accuracy_metrics,
        ),
        TaskKind('sst2', sst2_instruction, ('text',), image=False, candidates=('positive', 'negative'), **_TEXT_ANSWER),
        TaskKind(
            'mnli',
            text_pair_instruction(TEXT_PAIR_ENTAILMENT),
            ('premise', 'hypothesis'),
            image=False,
            candidates=('yes', 'no', 'maybe'),
            **_TEXT_ANSWER,
        ),
        TaskKind(
            'rte',
            text_pair_instruction(TEXT_PAIR_ENTAILMENT),
            ('premise', 'hypothesis'),
            image=False,
            candidates=('yes', 'no'),
            **_TEXT_ANSWER,
        ),
        TaskKind(
            'qqp',
            text_pair_instruction(QQP),
            ('premise', 'hypothesis'),
            image=False,
            candidates=('yes', 'no'),
            **_TEXT_ANSWER,
        ),
        TaskKind(
            'summarization',
            summarization_instruction,
            ('text',),
            image=False,
            decode=dict(beam_size=6, min_length=1, max_length=33, length_penalty=0.7, no_repeat_ngram_size=3),
            output=text_output('summary'),
            result_key='summary',
        ),
    )
}


def task_kind(name: str) -> TaskKind:
    if name not in TASKS:
        raise ValueError(f'unknown task {name!r}; the tasks are {", ".join(TASKS)}')
    return TASKS[name]


def _source(
    kind: str, vocab: Vocabulary, instruction: Callable[..., list[int]] | None = None, **inputs: Any
) -> dict[str, Any]:
    """The example fields a task's instruction (the declared one unless given) sets: its source ids and, when the
    task trains under it, its answer constraint. An input the instruction refuses (empty once cleaned) drops the
    record."""
    spec = TASKS[kind]
    try:
        ids = instruction(vocab, **inputs) if instruction else spec.source_ids(vocab, **inputs)
    except ValueError as error:
        raise DropExample('empty_instruction_input', str(error)) from None
    return {'source_ids': ids, **(trained_constraint(kind, vocab) if spec.train_constraint else {})}


def trained_constraint(kind: str, vocab: Vocabulary) -> dict[str, Any]:
    """The example fields that limit a task's training loss to its declared constraint's tokens."""
    constraint = TASKS[kind].constraint
    return {'constraint': constraint, 'constraint_range': vocab.constraint_range(constraint)} if constraint else {}


# ---- image helpers -----------------------------------------------------------------------------------------------


def image_transform(pipeline: T.Compose) -> ImageTransform:
    """An ImageTransform from a transforms pipeline (uint8 in and out: batches normalize)."""

    def transform(image, boxes, rng):
        sample = pipeline(T.Sample.from_image(image, boxes), rng)
        return sample.image, sample.boxes, sample.keep

    return transform


def resize_transform(size: int) -> ImageTransform:
    """Bicubic resize to size x size (finetuning and evaluation)."""
    return image_transform(T.finetune_transform(size))


# ---- generic preprocessors -------------------------------------------------------------------------------------

# An encoded image declaring more pixels is dropped unread: a small file can declare a huge image (a decompression
# bomb), and each worker decodes one image at a time, so this bounds its memory (3 bytes a pixel, 120 MB).
MAX_IMAGE_PIXELS = 40_000_000


def decode_image(example: dict, rng: np.random.Generator) -> dict:
    """'image' as stored (encoded bytes or an array) -> uint8 [H, W, 3]."""
    image = example.get('image')
    if image is None:
        raise DropExample('missing_image')
    if isinstance(image, (bytes, bytearray)):
        try:  # the header alone: a declared size is checked before any pixel is decoded
            opened = Image.open(io.BytesIO(image))
            width, height = opened.size
        except Image.DecompressionBombError as error:
            raise DropExample('image_too_large', str(error)) from None
        except Exception as error:  # noqa: BLE001 - PIL raises many kinds for corrupt files
            raise DropExample('undecodable_image', str(error)) from None
        if width * height > MAX_IMAGE_PIXELS:
            raise DropExample('image_too_large', f'{width}x{height} pixels declared')
        try:
            image = np.asarray(opened.convert('RGB'))
        except Exception as error:  # noqa: BLE001
            raise DropExample('undecodable_image', str(error)) from None
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        raise DropExample('bad_image', f'shape {image.shape} dtype {image.dtype}')
    return {**example, 'image': image}


def require_text(*fields: str) -> Preprocessor:
    def preprocess(example, rng):
        for field in fields:
            value = example.get(field)
            if not isinstance(value, str):
                raise DropExample(f'missing_{field}' if value is None else f'bad_{field}')
            if not value.strip():
                raise DropExample(f'empty_{field}')
        return example

    return preprocess


def _region(example: dict) -> np.ndarray:
    region = np.asarray(example.get('region', ()), np.float32)
    if region.shape != (4,) or not np.all(np.isfinite(region)):
        raise DropExample('bad_region', f'{region!r}')
    h, w = example['image'].shape[:2]
    x0, y0, x1, y1 = region
    if not (0 <= x0 < x1 <= w + 1e-3 and 0 <= y0 < y1 <= h + 1e-3):
        raise DropExample('region_outside_image', f'{region.tolist()} in {w}x{h}')
    return region


def _boxes(example: dict) -> np.ndarray:
    """'boxes' as float32 [N, 4], one a label; a NaN, infinite or inverted box (the transforms would refuse it) or
    labels that do not pair with the boxes drop the record."""
    boxes = np.asarray(example.get('boxes', np.zeros((0, 4))), np.float32).reshape(-1, 4)
    if not np.all(np.isfinite(boxes)) or np.any(boxes[:, 2:] < boxes[:, :2]):
        raise DropExample('bad_boxes', f'{boxes.tolist()}')
    if len(example.get('labels', [])) != len(boxes):
        raise DropExample('bad_boxes', f'{len(example.get("labels", []))} labels for {len(boxes)} boxes')
    return boxes


def transform_image(transform: ImageTransform, with_region: bool = False, with_boxes: bool = False) -> Preprocessor:
    """Applies the image transform; 'region' / 'boxes' follow it (a region the transform loses drops the example)."""

    def preprocess(example, rng):
        region = _region(example)[None] if with_region else np.zeros((0, 4), np.float32)
        boxes = _boxes(example) if with_boxes else np.zeros((0, 4), np.float32)
        image, moved, keep = transform(example['image'], np.concatenate([region, boxes]), rng)
        out = {**example, 'image': image}
        if with_region:
            if not keep[0]:
                raise DropExample('region_lost_in_transform')
            out['region'] = moved[0]
        if with_boxes:
            labels = list(example.get('labels', []))
            kept = keep[len(region) :]
            out['boxes'] = moved[len(region) :][kept]
            out['labels'] = [label for label, k in zip(labels, kept) if k]
        return out

    return preprocess


# ---- the tasks' preprocessors: each builds its instruction through its declaration ------------------------------


def _target(vocab: Vocabulary, text: str, reason: str = 'empty_target') -> list[int]:
    """Token ids of a cleaned target text; one with no words left (a caption of punctuation, an empty answer) drops
    the record, as its lone space token would teach the model to say nothing."""
    if not text.split():
        raise DropExample(reason)
    return vocab.encode_spaced(text)


def _answers(example: dict) -> dict[str, float]:
    """The record's answers {answer: confidence}; confidences are VQA's soft scores in [0, 1] (a NaN or negative one
    would poison the batch's loss through the loss weight)."""
    answers = example.get('answers')
    if not isinstance(answers, dict) or not answers:
        raise DropExample('missing_answers')
    confidences = np.array(list(answers.values()), np.float64)
    if not np.all((confidences >= 0) & (confidences <= 1)):  # False for NaN too
        raise DropExample('bad_answers', repr(answers))
    return answers


def caption(
    vocab: Vocabulary, max_words: int = 30, clean: Callable[[str, int | None], str] = clean_text
) -> Preprocessor:
    """The caption instruction; target: the caption cleaned by `clean` (pretraining: OFA's pre_caption, at most 30
    words; finetuning: `finetune_caption_text`, 20 words)."""

    def preprocess(example, rng):
        return {
            **example,
            **_source('caption', vocab),
            'target_ids': _target(vocab, clean(example['caption'], max_words)),
        }

    return preprocess


def classification(vocab: Vocabulary) -> Preprocessor:
    """ImageNet-style: the caption instruction, the class name ('label') as the target."""

    def preprocess(example, rng):
        return {
            **example,
            **_source('classification', vocab),
            'target_ids': _target(vocab, clean_text(example['label'])),
        }

    return preprocess


def grounding(vocab: Vocabulary, train_constraint: bool = False) -> Preprocessor:
    """Target: the region's four bins. train_constraint: the loss over bins (and eos) only, not OFA's whole
    vocabulary (the synthetic world's choice: a model trained from scratch learns boxes far sooner)."""

    def preprocess(example, rng):
        return {
            **example,
            **_source('grounding', vocab, text=example['text']),
            **(trained_constraint('grounding', vocab) if train_constraint else {}),
            'target_ids': B.box_to_tokens(example['region'], vocab, MAX_IMAGE_SIZE),
        }

    return preprocess


def grounded_caption(vocab: Vocabulary, max_words: int = 30) -> Preprocessor:
    def preprocess(example, rng):
        return {
            **example,
            **_source('grounded_caption', vocab, region=example['region']),
            'target_ids': _target(vocab, clean_text(example['text'], max_words)),
        }

    return preprocess


def _other_value(
    records: Any, rng: np.random.Generator, value: Callable[[dict], str], current: str, reason: str, scan: int = 64
) -> str:
    """A non-empty value(record) other than `current`, from the records after a random one (records without a
    value, such as other row types, are passed over); DropExample(reason) when `scan` records have none."""
    start = int(rng.integers(len(records)))
    for offset in range(min(scan, len(records))):
        other = value(records[(start + offset) % len(records)])
        if other and other != current:
            return other
    raise DropExample(reason)


def _one_other(rng: np.random.Generator, choices: Sequence[str], current: str) -> str:
    # OFA's draw of a negative: any choice but the last, the last in place of the current one.
    choice = choices[rng.integers(len(choices) - 1)] if len(choices) > 1 else choices[-1]
    return choices[-1] if choice == current else choice


def itm(
    vocab: Vocabulary,
    negatives: Any,
    object_words: tuple[str, ...] = (),
    max_words: int = 30,
    captions: Sequence[str] = (),
) -> Preprocessor:
    """Image-text matching. Half the examples keep their caption (answer 'yes'); the others ('no') get a caption with
    an object swapped (with probability 0.4) or another caption: one of `captions` (OFA's all_captions.txt) or else
    another record's. A record with its objects ('objects', OFA's gt objects) has one of them replaced in its caption
    by another of object_words (OFA's object.txt), as OFA's get_negative_caption does; without objects or captions
    (the synthetic world), one of the object words its cleaned caption holds is swapped for another."""

    def preprocess(example, rng):
        text = example['caption']  # the instruction cleans it
        answer = 'yes'
        if rng.random() < 0.5:
            answer = 'no'
            words = clean_text(text, max_words).split()
            present = [i for i, w in enumerate(words) if w in object_words]
            objects = example.get('objects')
            if objects and object_words and rng.random() < 0.4:
                gt_object = objects[rng.integers(len(objects))]
                text = text.replace(gt_object, _one_other(rng, object_words, gt_object))
            elif not (objects or captions) and present and rng.random() < 0.4:  # the synthetic world's
                i = present[rng.integers(len(present))]
                words[i] = rng.choice([w for w in object_words if w != words[i]])
                text = ' '.join(words)
            elif captions:
                text = captions[rng.integers(len(captions))]
            else:
                text = _other_value(
                    negatives,
                    rng,
                    lambda r: clean_text(r.get('caption') or '', max_words),
                    clean_text(text, max_words),
                    'no_negative_caption',
                )
        return {
            **example,
            **_source('itm', vocab, text=text),
            'itm_text': text,
            'target_ids': vocab.encode_spaced(answer),
        }

    return preprocess


def vqa(
    vocab: Vocabulary, add_question_mark: bool = False, add_object: bool = False, trie: AnswerTrie | None = None
) -> Preprocessor:
    """Target: the most confident answer; its confidence weights the loss. add_object: the record's object words
    (at most 30) follow the question, as OFA's --add-object does; trie: the answer's tokens are constrained to the
    trie's answers ('allowed_tokens'), and an answer outside them drops the record. A record with no answers at all
    (absent, null or {}: a test-dev question) is Unlabeled."""

    def preprocess(example, rng):
        source = _source(
            'vqa',
            vocab,
            functools.partial(vqa_instruction, add_question_mark=add_question_mark),
            question=example['question'],
        )
        if add_object and example.get('objects'):
            # data/mm_data/vqa_gen_dataset.py: ' object: ' and the first 30 object words, as they are.
            source['source_ids'] = source['source_ids'] + vocab.encode(
                ' object: ' + ' '.join(str(o) for o in example['objects'][:MAX_OBJECTS])
            )
        if example.get('answers') in (None, {}):
            raise Unlabeled('missing_answers', {**example, **source})
        answer, confidence = max(_answers(example).items(), key=lambda item: item[1])
        target = _target(vocab, answer.strip())
        out = {**example, **source, 'target_ids': target, 'loss_weight': float(confidence)}
        if trie is not None:
            out['allowed_tokens'] = trie.allowed_tokens(target)
        return out

    return preprocess


def answer_match(
    vocab: Vocabulary, negatives: Any, type2ans: Mapping[str, Sequence[str]] | None = None
) -> Preprocessor:
    """OFA's second sample of a VQA row: is the best answer ('yes', half the time) or another answer ('no') the
    answer to the question? Weighted by the best answer's confidence, as OFA's copy of the VQA sample. The other
    answer is, with `type2ans` (OFA's type2ans.json, {question type: answers}), drawn as OFA's get_negative_answer
    draws it (an answer of the same type when the best one is confident; a count one off for 'how many'), and
    otherwise another record's best answer."""
    ans2type = {a: kind for kind, answers in (type2ans or {}).items() if kind != 'other' for a in answers}

    def typed_negative(answer: str, confidence: float, rng: np.random.Generator) -> str:
        chance = rng.random()
        if confidence > chance + 0.1 and answer in ans2type:
            kind = ans2type[answer]
            if kind == 'how many' and answer.isdigit() and chance > 0.5:
                return str(int(answer) + int(rng.choice([-1, 1])))
            return _one_other(rng, type2ans[kind], answer)
        return _one_other(rng, type2ans['other'], answer)

    def best(example):
        answers = example.get('answers')
        return max(answers, key=answers.get).strip() if isinstance(answers, dict) and answers else ''

    def preprocess(example, rng):
        _answers(example)
        answer = best(example)
        if not answer:
            raise DropExample('empty_target')
        target = 'yes'
        if rng.random() < 0.5:
            target = 'no'
            if type2ans:
                answer = typed_negative(answer, max(example['answers'].values()), rng)
            else:
                answer = _other_value(negatives, rng, best, answer, 'no_negative_answer')
        return {
            **example,
            **_source('answer_match', vocab, question=example['question'], answer=answer),
            'target_ids': vocab.encode_spaced(target),
            'loss_weight': float(max(example['answers'].values())),
        }

    return preprocess


def detection(vocab: Vocabulary, max_tokens: int | None = None) -> Preprocessor:
    """Target: for each box, four bins then the label's tokens; at most max_tokens of them, whole objects only (OFA
    does not cut; a fixed batch shape must)."""

    def preprocess(example, rng):
        if not len(example['labels']):
            raise DropExample('no_boxes')
        target = []
        for box, label in zip(example['boxes'], example['labels']):
            tokens = B.box_to_tokens(box, vocab, MAX_IMAGE_SIZE) + _target(vocab, clean_text(label), 'empty_label')
            if max_tokens is not None and len(target) + len(tokens) > max_tokens:
                break
            target += tokens
        return {**example, **_source('detection', vocab), 'target_ids': target}

    return preprocess


def centre(size: int) -> slice:
    """The centre half of a side of `size` pixels: what image infilling blanks and predicts."""
    return slice(size // 4, size - size // 4)


def blank_centre(image: np.ndarray) -> np.ndarray:
    """uint8 [S, S, 3] -> the model's float32 [S, S, 3] with its centre half (per side) blanked to 0, as OFA's image
    infilling blanks the normalized image."""
    blanked = T.normalize(image)
    middle = centre(image.shape[0])
    blanked[middle, middle] = 0.0
    return blanked


def image_infill(vocab: Vocabulary, tokenizer: ImageTokenizer | None, train_constraint: bool = False) -> Preprocessor:
    """Source: the image with its centre half (per side) blanked; target: the image codes of that centre, from the
    record's 'codes' (OFA's image TSV) or else from `tokenizer`; train_constraint: the loss over codes only (as
    `grounding`'s).

    Runs on the uint8 image of the model's input size; leaves the normalized, blanked image in 'image' (float32:
    no pixel value normalizes to the blank's 0)."""

    def preprocess(example, rng):
        image = example['image']
        middle = centre(image.shape[0])
        if 'codes' in example:
            codes = np.asarray(example['codes']).reshape(-1)
        elif tokenizer is not None:
            codes = tokenizer.encode(image[None, middle, middle])[0].reshape(-1)
        else:
            raise DropExample('missing_codes')
        try:
            target = [vocab.code_id(int(c)) for c in codes]
        except ValueError as error:  # a code outside the codebook
            raise DropExample('bad_codes', str(error)) from None
        masked = blank_centre(image)
        return {
            **example,
            **_source('image_infill', vocab),
            **(trained_constraint('image_infill', vocab) if train_constraint else {}),
            'image': masked,
            'target_ids': target,
            'code_target': True,
        }

    return preprocess


def text_to_image(vocab: Vocabulary, tokenizer: ImageTokenizer) -> Preprocessor:
    """Source: the caption in OFA's text-to-image instruction, no image; target: the codes of the whole uint8 image
    (a grid of side image / downsample, as the model's code_image_size must match)."""

    def preprocess(example, rng):
        codes = tokenizer.encode(example['image'][None])[0].reshape(-1)
        out = {k: v for k, v in example.items() if k != 'image'}
        return {
            **out,
            **_source('text_to_image', vocab, text=example['caption']),
            'target_ids': [vocab.code_id(int(c)) for c in codes],
            'code_target': True,
        }

    return preprocess


def span_mask(
    num_words: int, rng: np.random.Generator, mask_ratio: float = 0.3, poisson_lambda: float = 3.0
) -> np.ndarray:
    """BART's span masking: bool [num_words], True for the round(num_words * mask_ratio) words that spans of
    Poisson(poisson_lambda) words (at least one) starting at random words cover."""
    masked = np.zeros(num_words, bool)
    budget = int(round(num_words * mask_ratio))
    while masked.sum() < budget:
        length = max(1, int(rng.poisson(poisson_lambda)))
        start = int(rng.integers(num_words))
        masked[start : start + min(length, budget - int(masked.sum()))] = True
    return masked


def text_infill(
    vocab: Vocabulary,
    mask_ratio: float = 0.3,
    poisson_lambda: float = 3.0,
    max_tokens: int = 64,
    keep_last: bool = False,
) -> Preprocessor:
    """BART span masking over whole words: spans of Poisson(3) words replace 30% of the words, each by one <mask>.
    The masked text (spans as '<mask>') is kept in 'masked_text'. The text is cut to whole words of at most
    max_tokens tokens: its first ones, or with keep_last the last ones of its first 2 * max_tokens (as OFA's
    pretraining keeps tokens [-256:] of the first 512)."""

    def preprocess(example, rng):
        words = clean_text(example['text']).split()
        word_tokens = [vocab.encode_spaced(w) for w in words]
        if keep_last:
            while sum(map(len, word_tokens)) > 2 * max_tokens and len(word_tokens) > 1:
                word_tokens.pop()
            while sum(map(len, word_tokens)) > max_tokens and len(word_tokens) > 1:
                word_tokens.pop(0)
                words.pop(0)
        while sum(map(len, word_tokens)) > max_tokens and len(word_tokens) > 1:
            word_tokens.pop()
        masked = span_mask(len(word_tokens), rng, mask_ratio, poisson_lambda)
        shown = [
            MASK if masked[i] else words[i] for i in range(len(word_tokens)) if not (masked[i] and i and masked[i - 1])
        ]
        masked_text = ' '.join(shown)
        return {
            **example,
            **_source('text_infill', vocab, text=masked_text),
            'masked_text': masked_text,
            'target_ids': [t for tokens in word_tokens for t in tokens],
        }

    return preprocess


def snli_ve(vocab: Vocabulary, add_caption: bool = False, trie: AnswerTrie | None = None) -> Preprocessor:
    """Target: yes (entailment), no (contradiction) or maybe (neutral). add_caption: the premise joins the
    hypothesis in the instruction (OFA's --add-caption); trie: the answer is constrained to yes / no / maybe."""

    def preprocess(example, rng):
        if example.get('label') not in SNLI_ANSWERS:
            raise DropExample('bad_label', repr(example.get('label')))
        premise = example['premise'] if add_caption else None  # require_text('premise') ran before
        target = vocab.encode_spaced(SNLI_ANSWERS[example['label']])
        source = _source('snli_ve', vocab, hypothesis=example['hypothesis'], premise=premise)
        out = {**example, **source, 'target_ids': target}
        if trie is not None:
            out['allowed_tokens'] = trie.allowed_tokens(target)
        return out

    return preprocess


def summary_text(text: str, max_words: int | None = 64) -> str:
    """Gigaword text as OFA's summary_dataset.py cleans it: the first max_words words (the target's 64, the
    script's --max-tgt-length; the article's 512), '<unk>' written 'unk'."""
    return clean_text(text, max_words).replace('<unk>', 'unk')


def text_task(
    vocab: Vocabulary,
    kind: str,
    answers: dict[str, str] | None = None,
    clean: Callable[[str], str] = clean_text,
) -> Preprocessor:
    """GLUE-style text-only tasks and summarization: the task's instruction of the record's fields, target the
    label (mapped through `answers` when given) or the 'target' text, cleaned by `clean`."""
    fields = TASKS[kind].inputs

    def preprocess(example, rng):
        target = str(example['label'] if 'label' in example else example['target'])
        if answers is not None:
            if target not in answers:
                raise DropExample('bad_label', repr(target))
            target = answers[target]
        return {
            **example,
            **_source(kind, vocab, **{f: example[f] for f in fields}),
            'target_ids': _target(vocab, clean(target)),
        }

    return preprocess


def decoder_noise(vocab: Vocabulary, ratio: float) -> Preprocessor:
    """OFA's --noise-ratio (summary_dataset.py, add_noise_to_tgt): the decoder reads the target with each token
    replaced, with probability `ratio`, by a random text token (ids 4 up to the first image code); the target it
    learns stays the true one."""

    def preprocess(example, rng):
        target = np.asarray(example['target_ids'], np.int64)
        noisy = np.where(rng.random(len(target)) < ratio, rng.integers(4, vocab.code_id(0), len(target)), target)
        return {**example, 'decoder_input_ids': noisy.tolist()}

    return preprocess
