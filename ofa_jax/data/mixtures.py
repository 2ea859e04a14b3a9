"""Tasks on sources and their mixtures: the synthetic world's, OFA's pretraining files', and finetuning tasks from a
training config's `data` section (`register_from_config`, the one place a config's data keys are read).

Each registered Task names its declaration in `ofa_jax.data.tasks.TASKS` (`Task.kind`), which says how it is
prompted, decoded and scored.
"""

import json
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import ml_collections
import numpy as np
from etils import epath

from ofa_jax.data import sources
from ofa_jax.data import transforms as T
from ofa_jax.data.answers import AnswerTrie, read_answers
from ofa_jax.data.image_codes import ImageTokenizer, PatchCodebook
from ofa_jax.data.pipeline import PROMPT_TYPES
from ofa_jax.data.registry import DropExample, Mixture, MixtureRegistry, Task, TaskRegistry, get_tasks
from ofa_jax.data.tasks import (
    SNLI_ANSWERS,
    TASKS,
    Preprocessor,
    answer_match,
    caption,
    classification,
    decode_image,
    decoder_noise,
    detection,
    finetune_caption_text,
    grounded_caption,
    grounding,
    image_infill,
    image_transform,
    itm,
    require_text,
    resize_transform,
    snli_ve,
    summary_text,
    text_infill,
    text_task,
    text_to_image,
    transform_image,
    vqa,
)
from ofa_jax.data.vocab import WORLD_NUM_CODES, Vocabulary, default_vocabulary, vocabulary_from_spec
from ofa_jax.data.world import COLORS, SHAPES, World, WorldText

WORLD_PREFIX = 'world'
# The world's pretraining mixture. OFA's ratio (each image-text record gives two vision-language samples, every 8th
# adds two text-infilling, one image-infilling and one detection sample: 4 4 4 2 2 1 1 2) left the demo short on the
# tasks that look up a named shape (grounding, ITM) and on detection; these rates gave, over two seeds at 3,500
# steps, grounding +0.05, grounded captions +0.09, ITM +0.06 and detection F1 +0.07, text infilling -0.07 (README,
# "What the demo learns").
WORLD_RATES = {
    'caption': 3,
    'vqa': 4,
    'grounding': 4,
    'grounded_caption': 3,
    'itm': 3,
    'detection': 2,
    'image_infill': 1,
    'text_infill': 1,
}


def world_task_name(kind: str) -> str:
    return f'{WORLD_PREFIX}_{kind}'


def world_tasks(vocab: Vocabulary, world: Any, tokenizer: ImageTokenizer) -> dict[str, Task]:
    """The synthetic world's tasks by kind: the eight of pretraining and `text_to_image` (captions to the codes of the
    whole scene)."""
    to_model = resize_transform(world.image_size)
    image = (decode_image, require_text('caption'))
    chains = {
        'caption': (*image, transform_image(to_model), caption(vocab)),
        'vqa': (*image, require_text('question'), transform_image(to_model), vqa(vocab)),
        # Trained under their decoding constraints, unlike OFA's recipes: from scratch, boxes come far sooner.
        'grounding': (
            *image,
            require_text('text'),
            transform_image(to_model, with_region=True),
            grounding(vocab, train_constraint=True),
        ),
        'grounded_caption': (
            *image,
            require_text('text'),
            transform_image(to_model, with_region=True),
            grounded_caption(vocab),
        ),
        'itm': (*image, transform_image(to_model), itm(vocab, world, tuple(COLORS) + SHAPES)),
        'detection': (decode_image, transform_image(to_model, with_boxes=True), detection(vocab)),
        'image_infill': (decode_image, image_infill(vocab, tokenizer, train_constraint=True)),
        # Not in the pretraining mixture (nor in OFA's): a finetuning task, configs/demo.py:text_to_image.
        'text_to_image': (*image, text_to_image(vocab, tokenizer)),
    }
    tasks = {kind: Task(world_task_name(kind), world, steps, kind) for kind, steps in chains.items()}
    tasks['text_infill'] = Task(
        world_task_name('text_infill'), WorldText(world), (require_text('text'), text_infill(vocab)), 'text_infill'
    )
    return tasks


def register_world(vocab: Vocabulary, world: Any, tokenizer: ImageTokenizer, replace: bool = True) -> Mixture:
    """Registers the world's tasks (`world_tasks`) as `world_<task>`, and the mixture of the eight of pretraining,
    `world_pretrain`."""
    for task in world_tasks(vocab, world, tokenizer).values():
        TaskRegistry.add(task, replace=replace)
    return MixtureRegistry.add(
        Mixture(f'{WORLD_PREFIX}_pretrain', {world_task_name(k): v for k, v in WORLD_RATES.items()}), replace=replace
    )


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


class Negatives(NamedTuple):
    """OFA's negative samples for image-text and answer matching (its --neg-sample-dir): object words, captions and
    answers by question type."""

    objects: tuple[str, ...]
    captions: tuple[str, ...]
    type2ans: dict[str, list[str]]


def read_negatives(directory: str) -> Negatives:
    """object.txt and all_captions.txt (a non-blank line each) and type2ans.json ({question type: [answers]},
    'other' among them) of `directory`, read as OFA's unify task reads them."""
    folder = epath.Path(directory)
    lines = {}
    for name in ('object.txt', 'all_captions.txt'):
        path = folder / name
        if not path.exists():
            raise ValueError(f'negative samples {directory!r}: {name} is missing')
        lines[name] = tuple(row.strip() for row in path.read_text(encoding='utf-8').splitlines() if row.strip())
        if len(lines[name]) < 2:
            raise ValueError(f'negative samples {path}: needs at least two non-blank lines')
    path = folder / 'type2ans.json'
    try:
        type2ans = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as error:
        raise ValueError(f'negative samples {path}: {error}') from None
    if not isinstance(type2ans, dict) or not all(
        isinstance(answers, list) and len(answers) >= 2 and all(isinstance(a, str) for a in answers)
        for answers in type2ans.values()
    ):
        raise ValueError(f'negative samples {path}: expected {{question type: [two or more answers]}}')
    if 'other' not in type2ans:
        raise ValueError(f"negative samples {path}: has no 'other' question type")
    return Negatives(lines['object.txt'], lines['all_captions.txt'], type2ans)


# OFA's unify dataset: every 8 vision-language rows give 8 + 8 samples and add 2 text-infilling, 1 image-infilling and
# 1 detection sample (the extra ones, a fifth of the batch).
OFA_PRETRAIN_RATES = {'vl_first': 8, 'vl_second': 8, 'text_infill': 2, 'image_infill': 1, 'detection': 1}


def register_ofa_pretraining(
    vocab: Vocabulary,
    paths: dict[str, str],
    image_size: int = 384,
    prefix: str = 'ofa',
    extra_max_target_length: int = 257,
    extra_image_size: int | None = None,
    negatives: Negatives | None = None,
) -> Mixture:
    """OFA's pretraining over its released TSV files, as the mixture `{prefix}_pretrain`.

    paths: 'vision_language' (required; rows typed caption / qa / visual_grounding), and optionally 'text', 'image'
    (with the centre's VQGAN codes) and 'detection'. As in OFA's unify dataset, each vision-language row gives two
    samples (caption + image-text match; VQA weighted by answer confidence + answer match; grounding + grounded
    caption) and every 8 rows add 2 text-infilling, 1 image-infilling and 1 detection sample. Those three are
    `extra` tasks, as OFA's second sample list: a sub-batch of their own whose targets hold up to
    extra_max_target_length tokens (eos included: the last 256 tokens of a text, all 256 codes of an image, the
    whole objects that fit), their loss normalized on its own and weighted 2 (OFA's conf 2.0); image infilling and
    detection take images of extra_image_size (OFA's 256 pixels; None: image_size), detection flipped and resized
    (not OFA's large-scale jitter, whose random crop drops boxes). The negatives of image-text and answer matching
    are OFA's (`negatives`, its negative-sample files) or, without them, other rows' captions and answers."""
    extra_image_size = extra_image_size or image_size
    unknown = set(paths) - set(PRETRAIN_FILES)
    if unknown or 'vision_language' not in paths:
        raise ValueError(f'pretraining files {sorted(paths)}: need vision_language, may have {PRETRAIN_FILES[1:]}')
    for role, path in paths.items():
        if not epath.Path(path).exists():
            raise ValueError(f'pretraining {role} file {path!r} does not exist')
    vl = sources.OFATsvSource(paths['vision_language'], 'pretrain_vl')

    def twice(example, rng):  # OFA's extra samples weigh 2 in the loss (conf 2.0)
        return {**example, 'loss_weight': 2.0}

    def cc12m_caption(example, rng):  # unify_dataset.py: a CC12M caption's first two tokens are not trained on
        return {**example, 'unscored_targets': 2} if example.get('dataset') == 'cc12m' else example

    image_text = transform_image(image_transform(T.pretrain_image_text_transform(image_size)))
    region = transform_image(image_transform(T.pretrain_grounding_transform(image_size)), with_region=True)
    first = per_type(
        {
            'caption': (require_text('caption'), image_text, caption(vocab), cc12m_caption),
            'qa': (require_text('question'), image_text, vqa(vocab)),
            'visual_grounding': (require_text('text'), region, grounding(vocab)),
        }
    )
    second = per_type(
        {
            'caption': (
                require_text('caption'),
                image_text,
                itm(vocab, vl, negatives.objects, captions=negatives.captions) if negatives else itm(vocab, vl),
            ),
            'qa': (
                require_text('question'),
                image_text,
                answer_match(vocab, vl, negatives.type2ans if negatives else None),
            ),
            'visual_grounding': (require_text('text'), region, grounded_caption(vocab)),
        }
    )
    # A vision-language task mixes row types; it has no single declaration to be evaluated by.
    rates = OFA_PRETRAIN_RATES
    tasks = {
        'vl_first': (vl, (decode_image, first), rates['vl_first'], ''),
        'vl_second': (vl, (decode_image, second), rates['vl_second'], ''),
    }
    if 'text' in paths:
        tasks['text_infill'] = (
            sources.OFATsvSource(paths['text'], 'pretrain_text'),
            (require_text('text'), text_infill(vocab, max_tokens=extra_max_target_length - 1, keep_last=True), twice),
            rates['text_infill'],
            'text_infill',
        )
    if 'image' in paths:
        tasks['image_infill'] = (
            sources.OFATsvSource(paths['image'], 'pretrain_image'),
            (decode_image, square_image(extra_image_size), image_infill(vocab, None), twice),
            rates['image_infill'],
            'image_infill',
        )
    if 'detection' in paths:
        boxes = image_transform(T.Compose([T.RandomHorizontalFlip(), T.Resize(extra_image_size)]))
        tasks['detection'] = (
            sources.OFATsvSource(paths['detection'], 'pretrain_detection'),
            (
                decode_image,
                transform_image(boxes, with_boxes=True),
                detection(vocab, max_tokens=extra_max_target_length - 1),
                twice,
            ),
            rates['detection'],
            'detection',
        )
    for name, (source, steps, _, kind) in tasks.items():
        TaskRegistry.add(Task(f'{prefix}_{name}', source, steps, kind, extra=bool(kind)), replace=True)
    return MixtureRegistry.add(
        Mixture(f'{prefix}_pretrain', {f'{prefix}_{k}': v[2] for k, v in tasks.items()}), replace=True
    )


def finetune_preprocessors(
    kind: str,
    vocab: Vocabulary,
    transform: Any,
    prompt_type: str = 'none',
    answers: Sequence[str] = (),
    constrained_training: bool = True,
    add_object: bool = False,
    add_caption: bool = False,
    noise_ratio: float = 0.0,
) -> tuple[Preprocessor, ...]:
    """The preprocessing chain of a finetuning task of `kind` (a name in TASKS), with OFA's dataset options:
    prompt_type (pipeline.PROMPT_TYPES), answers (VQA's answer list) and constrained_training (the answer's loss
    over the trie of VQA's answers, or of SNLI-VE's yes / no / maybe), add_object (VQA), add_caption (SNLI-VE),
    noise_ratio (summarization)."""
    if prompt_type not in PROMPT_TYPES:
        raise ValueError(f'task {kind}: prompt_type must be one of {PROMPT_TYPES}, got {prompt_type!r}')
    for option, value, kinds in (('answers', answers, ('vqa',)), ('add_object', add_object, ('vqa',))):
        if value and kind not in kinds:
            raise ValueError(f'task {kind}: {option} is an option of {", ".join(kinds)} only')
    if add_caption and kind != 'snli_ve':
        raise ValueError(f'task {kind}: add_caption is an option of snli_ve only')
    if noise_ratio and kind != 'summarization':
        raise ValueError(f'task {kind}: noise_ratio is an option of summarization only')
    if not 0.0 <= noise_ratio < 1.0:
        raise ValueError(f'task {kind}: noise_ratio must be in [0, 1), got {noise_ratio}')
    trie = None
    if constrained_training and (answers or kind == 'snli_ve'):
        trie = AnswerTrie.of_answers(vocab, answers or TASKS['snli_ve'].candidates)
    image = (decode_image,)
    chains = {
        'caption': lambda: (
            *image,
            require_text('caption'),
            transform_image(transform),
            caption(vocab, 20, finetune_caption_text),
        ),
        'classification': lambda: (*image, require_text('label'), transform_image(transform), classification(vocab)),
        'vqa': lambda: (
            *image,
            require_text('question'),
            transform_image(transform),
            vqa(vocab, True, add_object, trie),
        ),
        'grounding': lambda: (
            *image,
            require_text('text'),
            transform_image(transform, with_region=True),
            grounding(vocab),
        ),
        'snli_ve': lambda: (
            *image,
            require_text('hypothesis', *(('premise',) if add_caption else ())),
            transform_image(transform),
            snli_ve(vocab, add_caption, trie),
        ),
        'sst2': lambda: (
            require_text('text'),
            text_task(
                vocab, 'sst2', {'0': 'negative', '1': 'positive', 'negative': 'negative', 'positive': 'positive'}
            ),
        ),
        'mnli': lambda: (
            require_text('premise', 'hypothesis'),
            # GLUE's names, or the ids of OFA's MNLI files (mnli_dataset.py: 0 maybe, 1 yes, 2 no)
            text_task(vocab, 'mnli', {**SNLI_ANSWERS, '0': 'maybe', '1': 'yes', '2': 'no'}),
        ),
        'rte': lambda: (
            require_text('premise', 'hypothesis'),
            text_task(vocab, 'rte', {'entailment': 'yes', 'not_entailment': 'no'}),
        ),
        'qqp': lambda: (require_text('premise', 'hypothesis'), text_task(vocab, 'qqp', {'0': 'no', '1': 'yes'})),
        'summarization': lambda: (
            require_text('text'),
            text_task(vocab, 'summarization', clean=summary_text),
            *((decoder_noise(vocab, noise_ratio),) if noise_ratio else ()),
        ),
    }
    if kind not in chains:
        raise ValueError(f'unknown finetuning task {kind!r}; choose one of {", ".join(chains)}')
    if prompt_type == 'none':
        return chains[kind]()
    return (*chains[kind](), lambda example, rng: {**example, 'prompt_type': prompt_type})


FINETUNE_TASKS = (
    'caption',
    'vqa',
    'grounding',
    'snli_ve',
    'classification',
    'sst2',
    'mnli',
    'rte',
    'qqp',
    'summarization',
)
assert set(FINETUNE_TASKS) <= set(TASKS)
# The options of finetune_preprocessors a data.tasks entry sets (ofa_jax.train_config.finetune_task_config).
FINETUNE_OPTIONS = ('prompt_type', 'answers', 'constrained_training', 'add_object', 'add_caption', 'noise_ratio')


def finetune_task(
    name: str,
    kind: str,
    source: Any,
    vocab: Vocabulary,
    image_size: int = 480,
    transform: Any = None,
    replace: bool = False,
    **options: Any,
) -> Task:
    """Registers a finetuning task of `kind` (one of FINETUNE_TASKS) on a source of raw records (OFA TSV, TFDS,
    JSONL, or the world); `options` are finetune_preprocessors' (prompt_type, answers, ...)."""
    steps = finetune_preprocessors(kind, vocab, transform or resize_transform(image_size), **options)
    task = Task(name, source, steps, kind, options.get('prompt_type', 'none'), tuple(options.get('answers', ())))
    return TaskRegistry.add(task, replace=replace)


def finetune_options(spec: Any) -> dict[str, Any]:
    """finetune_preprocessors' options from a data.tasks entry (the answer list read from its file); entries saved
    before an option existed take its default."""
    options = {key: spec[key] for key in FINETUNE_OPTIONS if key in spec}
    options['answers'] = tuple(read_answers(spec['answers'])) if spec.get('answers') else ()
    return options


def prompt_types(data: ml_collections.ConfigDict) -> dict[str, str]:
    """{task kind: prompt type} of a config's finetuning tasks (the other sources prompt with bos alone)."""
    if data.source != 'tasks':
        return {}
    return {spec['kind']: spec.get('prompt_type', 'none') for spec in task_specs(data).values()}


def answer_tries_in(data: ml_collections.ConfigDict) -> bool:
    """Whether a config's tasks train an answer against a trie, so its batches carry 'allowed_tokens'."""
    if data.source != 'tasks':
        return False
    return any(
        spec.get('constrained_training', True) and (spec['kind'] == 'snli_ve' or spec.get('answers'))
        for spec in task_specs(data).values()
    )


CODEBOOK_SCENES = 64


def world_codebook(world: Any, num_codes: int = WORLD_NUM_CODES, num_images: int = CODEBOOK_SCENES) -> PatchCodebook:
    """The world's image tokenizer, fitted on its first scenes (deterministic)."""
    return PatchCodebook.fit(
        np.stack([world[i]['image'] for i in range(min(num_images, len(world)))]), num_codes=num_codes
    )


def world_from_config(data: ml_collections.ConfigDict, seed: int | None = None, size: int | None = None) -> World:
    """The config's world (`data.world_size` scenes of `data.image_size` pixels from `data.world_seed`), or another
    `size` scenes from `seed`."""
    return World(
        size=size or data.world_size, seed=data.world_seed if seed is None else seed, image_size=data.image_size
    )


# The world whose first scenes the codebook is fitted on, whatever seed and size a config trains or is evaluated on:
# another world must not bring another codebook, or its image codes would mean other patches than the model learned.
CODEBOOK_WORLD_SEED = 0


def world_tokenizer(data: ml_collections.ConfigDict) -> PatchCodebook:
    """The image tokenizer of every world config of this image size: fitted on the first scenes of
    CODEBOOK_WORLD_SEED, so every reader (training, evaluation on any world, drawing) gets the same codebook."""
    return world_codebook(world_from_config(data, seed=CODEBOOK_WORLD_SEED, size=CODEBOOK_SCENES))


# What a decoded example holds besides text.
NON_TEXT = re.compile(r'<(?:code|bin)_\d+>|<mask>')


def world_texts(image_size: int = 64, scenes: int = 600) -> list[str]:
    """Every text the world's tasks read or write (instructions, captions, questions, answers, labels, passages), from
    the first `scenes` scenes: the corpus of the world's vocabulary (`data.vocab='world'`; see data/assets/README.md).
    Read through OFA's vocabulary, with its image codes, box bins and masks taken out."""
    vocab = default_vocabulary()
    world = World(size=scenes, image_size=image_size)
    rng = np.random.default_rng(0)
    texts = []
    for task in world_tasks(vocab, world, world_codebook(world)).values():
        for i in range(len(task.source)):
            example = task.preprocess(task.source[i], rng)
            for ids in (example['source_ids'], example['target_ids']):
                texts += [part.strip() for part in NON_TEXT.split(vocab.decode(ids)) if part.strip()]
    return texts


def source_from_config(spec: Any, key: str = '') -> Any:
    """A source from a config entry (data.tasks.KEY): format 'tsv' (path, tsv_kind), 'jsonl' (path, image_root) or
    'tfds' (dataset, split, data_dir)."""
    if spec['format'] in ('tsv', 'jsonl') and not spec.get('path'):
        raise ValueError(
            f'data task {spec.get("name")!r} has no path: set its file, e.g. '
            f'--config.data.tasks.{key or spec.get("kind")}.path=FILE'
        )
    if spec['format'] == 'tsv':
        return sources.OFATsvSource(spec['path'], spec['tsv_kind'])
    if spec['format'] == 'jsonl':
        return sources.JsonlSource(spec['path'], spec.get('image_root') or None)
    if spec['format'] == 'tfds':
        return sources.TfdsSource(spec['dataset'], spec['split'], spec.get('data_dir') or None)
    raise ValueError(f'data task {spec.get("name")!r}: format {spec["format"]!r} is not tsv, jsonl or tfds')


def task_specs(data: ml_collections.ConfigDict) -> dict[str, Any]:
    """data.tasks as {key: entry} (configs map entries by key, so each can be set from the command line)."""
    return dict(data.tasks.items()) if hasattr(data.tasks, 'items') else {str(i): s for i, s in enumerate(data.tasks)}


def register_from_config(data: ml_collections.ConfigDict, world: Any = None) -> tuple[list[Task], list[float]]:
    """Registers what a training config's `data` section names (see `ofa_jax.train_config.data_config`) and returns
    its tasks and rates. `world` replaces the config's world (evaluation on unseen scenes), keeping its tokenizer."""
    vocab = vocabulary_from_spec(data.vocab)
    if data.source == 'world':
        register_world(vocab, world or world_from_config(data), world_tokenizer(data))
        return get_tasks(data.mixture)
    if data.source == 'ofa_pretrain':
        if not data.vision_language_path:
            raise ValueError(
                "data.vision_language_path is empty: point it at OFA's vision-language pretraining TSV "
                '(--config.data.vision_language_path=FILE)'
            )
        paths = {role: data[f'{role}_path'] for role in PRETRAIN_FILES if data[f'{role}_path']}
        mixture = register_ofa_pretraining(
            vocab,
            paths,
            data.image_size,
            extra_max_target_length=data.extra_max_target_length,
            extra_image_size=data.get('extra_image_size') or data.image_size,  # configs saved before it: one size
            negatives=read_negatives(data.negatives_dir) if data.get('negatives_dir') else None,
        )
        return get_tasks(mixture.name)
    if data.source == 'tasks':
        specs = task_specs(data)
        registered = [
            finetune_task(
                spec['name'],
                spec['kind'],
                source_from_config(spec, key),
                vocab,
                data.image_size,
                replace=True,
                **finetune_options(spec),
            )
            for key, spec in specs.items()
        ]
        return registered, [float(spec.get('rate', 1.0)) for spec in specs.values()]
    raise ValueError(f'data.source {data.source!r}: expected "world", "ofa_pretrain" or "tasks"')
