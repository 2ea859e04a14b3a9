"""OFA's tasks as data: instruction templates, small pure preprocessors, and task/mixture registration.

Every preprocessor takes an example dict and a numpy Generator and returns the next example (or raises DropExample);
a task is its source plus a chain of them, ending in 'source_ids' / 'target_ids' (no bos/eos) and, where it has one,
'image' (float32 [S, S, 3] in [-1, 1]). Templates are OFA's, leading spaces included.
"""
import io
import os
import re
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image

from ofa_jax.data import boxes as B
from ofa_jax.data import sources
from ofa_jax.data import transforms as T
from ofa_jax.data.image_codes import ImageTokenizer, PatchCodebook
from ofa_jax.data.registry import DropExample, Mixture, MixtureRegistry, Task, TaskRegistry, get_tasks
from ofa_jax.data.vocab import OFAVocabulary, Vocabulary, default_vocabulary
from ofa_jax.data.world import COLORS, SHAPES, World, WorldText

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
TEXT_TO_IMAGE = ' what is the complete image? caption: {}'
SST2 = ' is the sentiment of text " {} " positive or negative?'
TEXT_PAIR_ENTAILMENT = ' can text1 " {} " imply text2 " {} "?'  # MNLI, RTE
QQP = ' is question " {} " and question " {} " equivalent?'
GIGAWORD = ' what is the summary of article " {} "?'

MAX_IMAGE_SIZE = 512  # box coordinates are quantized relative to this side, as OFA does
SNLI_ANSWERS = {'entailment': 'yes', 'contradiction': 'no', 'neutral': 'maybe'}

Preprocessor = Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]
# (uint8 image [H, W, 3], boxes [N, 4], rng) -> (float32 image [S, S, 3] in [-1, 1], boxes [N, 4], keep [N] bool)
ImageTransform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray, np.ndarray]]


def clean_text(text: str, max_words: Optional[int] = None) -> str:
    """OFA's caption/question normalization: lower case, leading punctuation off, '-' and '/' as spaces, single
    spaces, at most max_words words."""
    text = text.lower().lstrip(',.!?*#:;~').replace('-', ' ').replace('/', ' ').replace('<person>', 'person')
    words = text.split()
    return ' '.join(words[:max_words] if max_words else words)


def image_transform(pipeline: T.Compose) -> ImageTransform:
    """An ImageTransform from a transforms pipeline (which must end in Normalize)."""
    def transform(image, boxes, rng):
        sample = pipeline(T.Sample.from_image(image, boxes), rng)
        return sample.image, sample.boxes, sample.keep
    return transform


def resize_transform(size: int) -> ImageTransform:
    """Bicubic resize to size x size and normalization to [-1, 1] (finetuning and evaluation)."""
    return image_transform(T.finetune_transform(size))


# ---- generic preprocessors -------------------------------------------------------------------------------------

def decode_image(example: dict, rng: np.random.Generator) -> dict:
    """'image' as stored (encoded bytes or an array) -> uint8 [H, W, 3]."""
    image = example.get('image')
    if image is None:
        raise DropExample('missing_image')
    if isinstance(image, (bytes, bytearray)):
        try:
            image = np.asarray(Image.open(io.BytesIO(image)).convert('RGB'))
        except Exception as error:  # noqa: BLE001 - PIL raises many kinds for corrupt files
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


def transform_image(transform: ImageTransform, with_region: bool = False, with_boxes: bool = False) -> Preprocessor:
    """Applies the image transform; 'region' / 'boxes' follow it (a region the transform loses drops the example)."""
    def preprocess(example, rng):
        region = _region(example)[None] if with_region else np.zeros((0, 4), np.float32)
        boxes = np.asarray(example.get('boxes', np.zeros((0, 4))), np.float32).reshape(-1, 4) if with_boxes \
            else np.zeros((0, 4), np.float32)
        image, moved, keep = transform(example['image'], np.concatenate([region, boxes]), rng)
        out = {**example, 'image': image}
        if with_region:
            if not keep[0]:
                raise DropExample('region_lost_in_transform')
            out['region'] = moved[0]
        if with_boxes:
            labels = list(example.get('labels', []))
            kept = keep[len(region):]
            out['boxes'] = moved[len(region):][kept]
            out['labels'] = [label for label, k in zip(labels, kept) if k]
        return out
    return preprocess


# ---- the eight pretraining tasks and the finetuning tasks --------------------------------------------------------

def caption(vocab: Vocabulary, max_words: int = 30) -> Preprocessor:
    def preprocess(example, rng):
        return {**example, 'source_ids': vocab.encode(CAPTION),
                'target_ids': vocab.encode(' ' + clean_text(example['caption'], max_words))}
    return preprocess


def visual_grounding(vocab: Vocabulary, max_words: int = 30) -> Preprocessor:
    def preprocess(example, rng):
        return {**example, 'source_ids': vocab.encode(GROUNDING.format(clean_text(example['text'], max_words))),
                'target_ids': B.box_to_tokens(example['region'], vocab, MAX_IMAGE_SIZE), 'constraint': 'bins'}
    return preprocess


def grounded_caption(vocab: Vocabulary, max_words: int = 30) -> Preprocessor:
    def preprocess(example, rng):
        source = vocab.encode(GROUNDED_CAPTION) + B.box_to_tokens(example['region'], vocab, MAX_IMAGE_SIZE)
        return {**example, 'source_ids': source,
                'target_ids': vocab.encode(' ' + clean_text(example['text'], max_words))}
    return preprocess


def _other_value(records: Any, rng: np.random.Generator, value: Callable[[dict], str], current: str,
                 reason: str, scan: int = 64) -> str:
    """A non-empty value(record) other than `current`, from the records after a random one (records without a
    value, such as other row types, are passed over); DropExample(reason) when `scan` records have none."""
    start = int(rng.integers(len(records)))
    for offset in range(min(scan, len(records))):
        other = value(records[(start + offset) % len(records)])
        if other and other != current:
            return other
    raise DropExample(reason)


def image_text_match(vocab: Vocabulary, negatives: Any, object_words: tuple[str, ...] = (),
                     max_words: int = 30) -> Preprocessor:
    """Half the examples keep their caption (' yes'); the others (' no') get a caption with one object word swapped
    (with probability 0.4, when object words are known and present) or the caption of another record."""
    def preprocess(example, rng):
        text = clean_text(example['caption'], max_words)
        answer = ' yes'
        if rng.random() < 0.5:
            answer = ' no'
            words = text.split()
            present = [i for i, w in enumerate(words) if w in object_words]
            if present and rng.random() < 0.4:
                i = present[rng.integers(len(present))]
                words[i] = rng.choice([w for w in object_words if w != words[i]])
                text = ' '.join(words)
            else:
                text = _other_value(negatives, rng, lambda r: clean_text(r.get('caption') or '', max_words), text,
                                    'no_negative_caption')
        return {**example, 'source_ids': vocab.encode(IMAGE_TEXT_MATCH.format(text)),
                'target_ids': vocab.encode(answer)}
    return preprocess


def vqa(vocab: Vocabulary, add_question_mark: bool = False, max_words: int = 30) -> Preprocessor:
    """Target: the most confident answer; its confidence weights the loss."""
    def preprocess(example, rng):
        answers = example.get('answers')
        if not isinstance(answers, dict) or not answers:
            raise DropExample('missing_answers')
        answer, confidence = max(answers.items(), key=lambda item: item[1])
        question = clean_text(example['question'], max_words)
        if add_question_mark and not question.endswith('?'):
            question += '?'
        return {**example, 'source_ids': vocab.encode(' ' + question),
                'target_ids': vocab.encode(' ' + answer.strip()), 'loss_weight': float(confidence)}
    return preprocess


def answer_match(vocab: Vocabulary, negatives: Any, max_words: int = 30) -> Preprocessor:
    """OFA's second sample of a VQA row: is the best answer (' yes', half the time) or another record's best answer
    (' no') the answer to the question?"""
    def best(example):
        answers = example.get('answers')
        return max(answers, key=answers.get).strip() if isinstance(answers, dict) and answers else ''

    def preprocess(example, rng):
        answer = best(example)
        if not answer:
            raise DropExample('missing_answers')
        target = ' yes'
        if rng.random() < 0.5:
            target = ' no'
            answer = _other_value(negatives, rng, best, answer, 'no_negative_answer')
        question = clean_text(example['question'], max_words)
        return {**example, 'source_ids': vocab.encode(ANSWER_MATCH.format(question, answer)),
                'target_ids': vocab.encode(target)}
    return preprocess


def detection(vocab: Vocabulary) -> Preprocessor:
    """Target: for each box, four bins then the label's tokens."""
    def preprocess(example, rng):
        if not len(example['labels']):
            raise DropExample('no_boxes')
        target = []
        for box, label in zip(example['boxes'], example['labels']):
            target += B.box_to_tokens(box, vocab, MAX_IMAGE_SIZE) + vocab.encode(' ' + clean_text(label))
        return {**example, 'source_ids': vocab.encode(DETECTION), 'target_ids': target}
    return preprocess


def image_infill(vocab: Vocabulary, tokenizer: Optional[ImageTokenizer]) -> Preprocessor:
    """Source: the image with its centre half (per side) blanked; target: the image codes of that centre, from the
    record's 'codes' (OFA's image TSV) or else from `tokenizer`.

    Runs on the uint8 image of the model's input size; leaves the normalized image in 'image'."""
    def preprocess(example, rng):
        image = example['image']
        size = image.shape[0]
        lo, hi = size // 4, size - size // 4
        if 'codes' in example:
            codes = np.asarray(example['codes']).reshape(-1)
        elif tokenizer is not None:
            codes = tokenizer.encode(image[None, lo:hi, lo:hi])[0].reshape(-1)
        else:
            raise DropExample('missing_codes')
        masked = image.astype(np.float32) / 127.5 - 1.0
        masked[lo:hi, lo:hi] = 0.0
        return {**example, 'image': masked, 'source_ids': vocab.encode(IMAGE_INFILL),
                'target_ids': [vocab.code_id(int(c)) for c in codes], 'code_target': True, 'constraint': 'codes'}
    return preprocess


def text_to_image(vocab: Vocabulary, tokenizer: ImageTokenizer, max_words: int = 30) -> Preprocessor:
    """Source: the caption in OFA's text-to-image instruction, no image; target: the codes of the whole uint8 image
    (a grid of side image / downsample, as the model's code_image_size must match)."""
    def preprocess(example, rng):
        codes = tokenizer.encode(example['image'][None])[0].reshape(-1)
        out = {k: v for k, v in example.items() if k != 'image'}
        return {**out, 'source_ids': vocab.encode(TEXT_TO_IMAGE.format(clean_text(example['caption'], max_words))),
                'target_ids': [vocab.code_id(int(c)) for c in codes], 'code_target': True, 'constraint': 'codes'}
    return preprocess


def text_infill(vocab: Vocabulary, mask_ratio: float = 0.3, poisson_lambda: float = 3.0,
                max_tokens: int = 64) -> Preprocessor:
    """BART span masking over whole words: spans of Poisson(3) words replace 30% of the words, each by one <mask>."""
    def preprocess(example, rng):
        words = clean_text(example['text']).split()
        word_tokens = [vocab.encode(' ' + w) for w in words]
        while sum(map(len, word_tokens)) > max_tokens and len(word_tokens) > 1:
            word_tokens.pop()
        masked = np.zeros(len(word_tokens), bool)
        budget = int(round(len(word_tokens) * mask_ratio))
        while masked.sum() < budget:
            length = max(1, int(rng.poisson(poisson_lambda)))
            start = int(rng.integers(len(word_tokens)))
            masked[start:start + min(length, budget - int(masked.sum()))] = True
        source = []
        for i, tokens in enumerate(word_tokens):
            if not masked[i]:
                source += tokens
            elif i == 0 or not masked[i - 1]:
                source.append(vocab.mask_id)
        prefix, suffix = TEXT_INFILL.split('{}')
        return {**example, 'source_ids': vocab.encode(prefix.rstrip()) + source + vocab.encode(suffix),
                'target_ids': [t for tokens in word_tokens for t in tokens]}
    return preprocess


def snli_ve(vocab: Vocabulary, max_words: int = 30) -> Preprocessor:
    def preprocess(example, rng):
        if example.get('label') not in SNLI_ANSWERS:
            raise DropExample('bad_label', repr(example.get('label')))
        return {**example, 'source_ids': vocab.encode(SNLI_VE.format(clean_text(example['hypothesis'], max_words))),
                'target_ids': vocab.encode(' ' + SNLI_ANSWERS[example['label']])}
    return preprocess


def text_classification(vocab: Vocabulary, template: str, fields: tuple[str, ...],
                        answers: Optional[dict[str, str]] = None, max_words: int = 100) -> Preprocessor:
    """GLUE-style text-only tasks and summarization: the template filled with `fields`, target the label (mapped
    through `answers` when given) or the 'target' text."""
    def preprocess(example, rng):
        source = template.format(*(clean_text(example[f], max_words) for f in fields))
        target = example['label'] if 'label' in example else example['target']
        if answers is not None:
            if target not in answers:
                raise DropExample('bad_label', repr(target))
            target = answers[target]
        return {**example, 'source_ids': vocab.encode(source),
                'target_ids': vocab.encode(' ' + clean_text(str(target)))}
    return preprocess


# ---- registration ----------------------------------------------------------------------------------------------

def register_world(vocab: Vocabulary, world: Any, tokenizer: ImageTokenizer, prefix: str = 'world',
                   replace: bool = True) -> Mixture:
    """Registers the eight pretraining tasks on a synthetic world, and their mixture `{prefix}_pretrain`; also
    `{prefix}_text_to_image` (captions to the codes of the whole scene), outside the mixture.

    Rates follow OFA's recipe: each image-text record gives two vision-language samples, and every 8th record adds two
    text-infilling, one image-infilling and one detection sample."""
    size = world.image_size
    to_model = resize_transform(size)
    image = (decode_image, require_text('caption'))
    vl = {
        'caption': (*image, transform_image(to_model), caption(vocab)),
        'vqa': (*image, require_text('question'), transform_image(to_model), vqa(vocab)),
        'grounding': (*image, require_text('text'), transform_image(to_model, with_region=True),
                      visual_grounding(vocab)),
        'grounded_caption': (*image, require_text('text'), transform_image(to_model, with_region=True),
                             grounded_caption(vocab)),
        'itm': (*image, transform_image(to_model),
                image_text_match(vocab, world, tuple(COLORS) + SHAPES)),
        'detection': (decode_image, transform_image(to_model, with_boxes=True), detection(vocab)),
        'image_infill': (decode_image, image_infill(vocab, tokenizer)),
    }
    rates = {'caption': 4, 'vqa': 4, 'grounding': 4, 'grounded_caption': 2, 'itm': 2, 'detection': 1,
             'image_infill': 1, 'text_infill': 2}
    for name, steps in vl.items():
        TaskRegistry.add(Task(f'{prefix}_{name}', world, steps), replace=replace)
    TaskRegistry.add(Task(f'{prefix}_text_infill', WorldText(world), (require_text('text'), text_infill(vocab))),
                     replace=replace)
    # Not in the pretraining mixture (nor in OFA's): a finetuning task, configs/demo_text2image.py.
    TaskRegistry.add(Task(f'{prefix}_text_to_image', world, (decode_image, require_text('caption'),
                                                             text_to_image(vocab, tokenizer))), replace=replace)
    return MixtureRegistry.add(Mixture(f'{prefix}_pretrain', {f'{prefix}_{k}': v for k, v in rates.items()}),
                               replace=replace)


def per_type(chains: dict[str, tuple[Preprocessor, ...]]) -> Preprocessor:
    """Runs the chain named by the record's 'type' (the rows of OFA's vision-language pretraining file)."""
    def preprocess(example, rng):
        chain = chains.get(example.get('type'))
        if chain is None:
            raise DropExample('bad_type', repr(example.get('type')))
        for step in chain:
            example = step(example, rng)
        return example
    return preprocess


def square_image(size: int) -> Preprocessor:
    """uint8 'image' -> uint8 [size, size, 3] (bicubic), for preprocessors that work on pixels."""
    def preprocess(example, rng):
        return {**example, 'image': T.resize_image(example['image'], size, size)[0]}
    return preprocess


PRETRAIN_FILES = ('vision_language', 'text', 'image', 'detection')


def register_ofa_pretraining(vocab: Vocabulary, paths: dict[str, str], image_size: int = 384,
                             prefix: str = 'ofa') -> Mixture:
    """OFA's pretraining over its released TSV files, as the mixture `{prefix}_pretrain`.

    paths: 'vision_language' (required; rows typed caption / qa / visual_grounding), and optionally 'text', 'image'
    (with the centre's VQGAN codes) and 'detection'. As in OFA's unify dataset, each vision-language row gives two
    samples (caption + image-text match; VQA weighted by answer confidence + answer match; grounding + grounded
    caption) and every 8 rows add 2 text-infilling, 1 image-infilling and 1 detection sample. Unlike OFA, the
    negatives of image-text matching are other rows' captions only (OFA also swaps object words from a global list),
    and every sample has the same image size (OFA gives image infilling and detection a 256-pixel sub-batch)."""
    unknown = set(paths) - set(PRETRAIN_FILES)
    if unknown or 'vision_language' not in paths:
        raise ValueError(f'pretraining files {sorted(paths)}: need vision_language, may have {PRETRAIN_FILES[1:]}')
    for role, path in paths.items():
        if not os.path.exists(path):
            raise ValueError(f'pretraining {role} file {path!r} does not exist')
    vl = sources.OFATsvSource(paths['vision_language'], 'pretrain_vl')
    image_text = transform_image(image_transform(T.pretrain_image_text_transform(image_size)))
    region = transform_image(image_transform(T.pretrain_grounding_transform(image_size)), with_region=True)
    first = per_type({'caption': (require_text('caption'), image_text, caption(vocab)),
                      'qa': (require_text('question'), image_text, vqa(vocab)),
                      'visual_grounding': (require_text('text'), region, visual_grounding(vocab))})
    second = per_type({'caption': (require_text('caption'), image_text, image_text_match(vocab, vl)),
                       'qa': (require_text('question'), image_text, answer_match(vocab, vl)),
                       'visual_grounding': (require_text('text'), region, grounded_caption(vocab))})
    tasks = {'vl_first': (vl, (decode_image, first), 8), 'vl_second': (vl, (decode_image, second), 8)}
    if 'text' in paths:
        tasks['text_infill'] = (sources.OFATsvSource(paths['text'], 'pretrain_text'),
                                (require_text('text'), text_infill(vocab)), 2)
    if 'image' in paths:
        tasks['image_infill'] = (sources.OFATsvSource(paths['image'], 'pretrain_image'),
                                 (decode_image, square_image(image_size), image_infill(vocab, None)), 1)
    if 'detection' in paths:
        boxes = image_transform(T.Compose([T.RandomHorizontalFlip(), T.Resize(image_size), T.Normalize()]))
        tasks['detection'] = (sources.OFATsvSource(paths['detection'], 'pretrain_detection'),
                              (decode_image, transform_image(boxes, with_boxes=True), detection(vocab)), 1)
    for name, (source, steps, _) in tasks.items():
        TaskRegistry.add(Task(f'{prefix}_{name}', source, steps), replace=True)
    return MixtureRegistry.add(Mixture(f'{prefix}_pretrain', {f'{prefix}_{k}': v[2] for k, v in tasks.items()}),
                               replace=True)


def finetune_task(name: str, kind: str, source: Any, vocab: Vocabulary, image_size: int = 480,
                  transform: Optional[ImageTransform] = None, replace: bool = False) -> Task:
    """Registers a finetuning task of `kind` (caption, vqa, refcoco, snli_ve, imagenet, sst2, mnli, rte, qqp,
    gigaword) on a source of raw records (OFA TSV, TFDS, JSONL, or the world)."""
    to_model = transform or resize_transform(image_size)
    image = (decode_image, )
    steps = {
        'caption': lambda: (*image, require_text('caption'), transform_image(to_model), caption(vocab)),
        'imagenet': lambda: (*image, require_text('caption'), transform_image(to_model), caption(vocab)),
        'vqa': lambda: (*image, require_text('question'), transform_image(to_model), vqa(vocab, True)),
        'refcoco': lambda: (*image, require_text('text'), transform_image(to_model, with_region=True),
                            visual_grounding(vocab)),
        'snli_ve': lambda: (*image, require_text('hypothesis'), transform_image(to_model), snli_ve(vocab)),
        'sst2': lambda: (require_text('text'), text_classification(
            vocab, SST2, ('text',), {'0': 'negative', '1': 'positive', 'negative': 'negative',
                                     'positive': 'positive'})),
        'mnli': lambda: (require_text('premise', 'hypothesis'), text_classification(
            vocab, TEXT_PAIR_ENTAILMENT, ('premise', 'hypothesis'), SNLI_ANSWERS)),
        'rte': lambda: (require_text('premise', 'hypothesis'), text_classification(
            vocab, TEXT_PAIR_ENTAILMENT, ('premise', 'hypothesis'),
            {'entailment': 'yes', 'not_entailment': 'no'})),
        'qqp': lambda: (require_text('premise', 'hypothesis'), text_classification(
            vocab, QQP, ('premise', 'hypothesis'), {'0': 'no', '1': 'yes'})),
        'gigaword': lambda: (require_text('text'), text_classification(vocab, GIGAWORD, ('text',))),
    }
    if kind not in steps:
        raise ValueError(f'unknown finetuning task kind {kind!r}; choose one of {sorted(steps)}')
    return TaskRegistry.add(Task(name, source, steps[kind]()), replace=replace)


def world_codebook(world: Any, num_codes: int = 256, num_images: int = 64) -> PatchCodebook:
    """The world's image tokenizer, fitted on its first scenes (deterministic)."""
    return PatchCodebook.fit(np.stack([world[i]['image'] for i in range(min(num_images, len(world)))]),
                             num_codes=num_codes)


def source_from_config(spec: Any) -> Any:
    """A source from a config entry: format 'tsv' (path, tsv_kind), 'jsonl' (path, image_root) or 'tfds'
    (dataset, split, data_dir)."""
    if spec['format'] in ('tsv', 'jsonl') and not spec.get('path'):
        raise ValueError(f'data task {spec.get("name")!r} has no path: set its file, e.g. '
                         f'--config.data.tasks.{spec.get("kind")}.path=FILE')
    if spec['format'] == 'tsv':
        return sources.OFATsvSource(spec['path'], spec['tsv_kind'])
    if spec['format'] == 'jsonl':
        return sources.JsonlSource(spec['path'], spec.get('image_root'))
    if spec['format'] == 'tfds':
        return sources.TfdsSource(spec['dataset'], spec['split'], spec.get('data_dir'))
    raise ValueError(f'data task {spec.get("name")!r}: format {spec["format"]!r} is not tsv, jsonl or tfds')


def register_from_config(data: Any) -> tuple[list[Task], list[float]]:
    """Registers what a training config's `data` section names and returns its tasks and rates.

    data.source 'world': the synthetic world (data.world_size scenes of data.image_size pixels, data.world_seed),
    with mixture 'world_pretrain' and tasks 'world_<task>'; data.mixture names the mixture or task to train on.
    data.source 'ofa_pretrain': OFA's pretraining TSV files data.{vision_language,text,image,detection}_path (see
    register_ofa_pretraining).
    data.source 'tasks': data.tasks lists (or maps by name) finetuning tasks, each {name, kind, rate, format, ...}
    (see source_from_config), mixed at their rates."""
    vocab = OFAVocabulary(data.bpe_dir) if data.get('bpe_dir') else default_vocabulary()
    if data.source == 'world':
        world = World(size=data.world_size, seed=data.world_seed, image_size=data.image_size)
        register_world(vocab, world, world_codebook(world))
        return get_tasks(data.mixture)
    if data.source == 'ofa_pretrain':
        if not data.get('vision_language_path'):
            raise ValueError('data.vision_language_path is empty: point it at OFA\'s vision-language pretraining TSV '
                             '(--config.data.vision_language_path=FILE)')
        paths = {role: data[f'{role}_path'] for role in PRETRAIN_FILES if data.get(f'{role}_path')}
        return get_tasks(register_ofa_pretraining(vocab, paths, data.image_size).name)
    if data.source == 'tasks':
        specs = list(data.tasks.values()) if hasattr(data.tasks, 'values') else list(data.tasks)
        registered = [finetune_task(spec['name'], spec['kind'], source_from_config(spec), vocab, data.image_size,
                                    replace=True) for spec in specs]
        return registered, [float(spec.get('rate', 1.0)) for spec in specs]
    raise ValueError(f'data.source {data.source!r}: expected "world", "ofa_pretrain" or "tasks"')
