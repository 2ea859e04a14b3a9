"""Each task is declared once: the API builds exactly the instruction the training preprocessor builds from the same
raw input, for every task; and the import rules that keep applications above libraries."""

import subprocess
import sys

import numpy as np
import pytest

from ofa_jax import api
from ofa_jax.data import mixtures, tasks
from ofa_jax.data.registry import TaskRegistry
from ofa_jax.data.tasks import TASKS, answer_match, resize_transform
from ofa_jax.data.vocab import default_vocabulary
from ofa_jax.data.world import World

SIZE = 32
VOCAB = default_vocabulary()
WORLD = World(size=16, seed=3, image_size=SIZE)
mixtures.register_world(VOCAB, WORLD, mixtures.world_codebook(WORLD, num_codes=16, num_images=4))
# Kept now: other test modules register the world's task names again, on their own worlds.
WORLD_TASKS = {name: TaskRegistry.get(name) for name in TaskRegistry.names() if name.startswith('world_')}
IMAGE = WORLD[0]['image']
FINETUNE_RECORDS = {
    'snli_ve': {'image': IMAGE, 'hypothesis': 'Two dogs run.', 'label': 'entailment'},
    'classification': {'image': IMAGE, 'label': 'golden retriever'},
    'sst2': {'text': 'A gripping, well-acted film!', 'label': '1'},
    'mnli': {'premise': 'A man sleeps on a bench.', 'hypothesis': 'Someone rests.', 'label': 'entailment'},
    'rte': {'premise': 'The city flooded.', 'hypothesis': 'It rained.', 'label': 'not_entailment'},
    'qqp': {'premise': 'How do I learn jax?', 'hypothesis': 'What is the way to learn jax?', 'label': '1'},
    'summarization': {
        'text': 'The council approved the new budget on Monday after a long debate.',
        'target': 'council approves budget',
    },
}


def training_example(task: str, index: int) -> dict:
    """The training preprocessor's example of a world scene (or a finetuning record) for `task`."""
    rng = np.random.default_rng(index)
    if task in FINETUNE_RECORDS:
        example = dict(FINETUNE_RECORDS[task])
        for step in mixtures.finetune_preprocessors(task, VOCAB, resize_transform(SIZE)):
            example = step(example, rng)
        return example
    if task == 'answer_match':  # OFA's pretraining only: the second sample of a VQA row
        record = {**WORLD[0], 'answers': {'blue': 1.0}}
        return answer_match(VOCAB, [record, {**record, 'answers': {'red': 1.0}}])(record, rng)
    registered = WORLD_TASKS[mixtures.world_task_name(task)]
    return registered.preprocess(registered.source[index], rng)


def api_inputs(task: str, example: dict) -> dict:
    """The raw inputs a user gives the API for what the training example asks."""
    record = FINETUNE_RECORDS.get(task, WORLD[0])
    taken = {
        'question': record.get('question'),
        'text': record.get('text'),
        'hypothesis': record.get('hypothesis'),
        'premise': record.get('premise'),
        'region': WORLD[0]['region'],
    }
    if task == 'itm':
        taken['text'] = example['itm_text']
    if task == 'text_infill':
        taken['text'] = example['masked_text']
    if task == 'text_to_image':
        taken['text'] = WORLD[0]['caption']
    if task == 'answer_match':
        taken['answer'] = 'blue' if VOCAB.decode(example['target_ids']).strip() == 'yes' else 'red'
    return {name: taken[name] for name in TASKS[task].inputs if taken.get(name) is not None}


@pytest.mark.parametrize('task', list(TASKS))
def test_the_api_builds_the_instruction_training_builds(task):
    kind = TASKS[task]
    randomized = task in ('itm', 'text_infill', 'answer_match')
    targets = set()
    for index in range(6):  # also the negative samples of the randomized tasks
        example = training_example(task, index if randomized else 0)
        targets.add(VOCAB.decode(example['target_ids']).strip())
        model_input = api.prepare_input(kind, VOCAB, IMAGE if kind.image else None, api_inputs(task, example), SIZE)
        assert model_input.source_ids == example['source_ids'], VOCAB.decode(example['source_ids'])
        assert (model_input.image is None) == (example.get('image') is None)
        if kind.constraint:
            assert example['constraint_range'] == VOCAB.constraint_range(kind.constraint)
    if task in ('itm', 'answer_match'):
        assert targets == {'yes', 'no'}
    if task == 'image_infill':  # the API blanks the same centre the training does
        np.testing.assert_array_equal(model_input.image[8:24, 8:24], example['image'][8:24, 8:24])


def test_every_task_kind_of_the_mixtures_is_declared():
    kinds = {task.kind for task in WORLD_TASKS.values()}
    assert kinds <= set(TASKS) and set(mixtures.FINETUNE_TASKS) <= set(TASKS)
    assert all(kind.metrics is None or kind.reference is not None for kind in TASKS.values())


def loaded_modules(statement: str) -> set[str]:
    script = f'import sys\n{statement}\nprint(" ".join(sorted(sys.modules)))'
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stdout.split())


def test_applications_stay_above_the_libraries():
    for module in ('ofa_jax.api', 'ofa_jax.predict', 'ofa_jax.evaluate', 'ofa_jax.demo'):
        loaded = loaded_modules(
            f'import {module}\nfrom absl import flags\n'
            f'assert not any(f in flags.FLAGS for f in ("config", "workdir", "checkpoint"))'
        )
        assert 'ofa_jax.train' not in loaded, module
    assert 'ofa_jax.demo' not in loaded_modules('import ofa_jax.train')
    data_modules = [
        'tasks',
        'mixtures',
        'pipeline',
        'sources',
        'registry',
        'vocab',
        'boxes',
        'transforms',
        'image_codes',
        'world',
    ]
    loaded = loaded_modules('\n'.join(f'import ofa_jax.data.{m}' for m in data_modules))
    forbidden = {
        'ofa_jax.convert',
        'ofa_jax.vqgan',
        'ofa_jax.torch_layout',
        'ofa_jax.model',
        'ofa_jax.checkpoint',
        'ofa_jax.train',
    }
    assert not loaded & forbidden
    # The data layer reads answer-list pickles through the safe unpickler, a leaf of the project.
    assert {m for m in loaded_modules('import ofa_jax.torch_pickle') if m.startswith('ofa_jax.')} == {
        'ofa_jax.torch_pickle'
    }


# Source ids the training preprocessors built before the tasks were declared once, recorded from that code: the
# declarations changed where instructions are written, not what they are.
RECORDED = {  # token ids, space-separated
    'caption': '99 473 5 2274 6190 116',
    'vqa_pretrain': '99 7705 16 5 2335',
    'vqa_finetune': '99 7705 16 5 2335 116',
    'grounding': '61 976 473 5 2788 22 5 313 11 10 326 6399 3988 22 6190 116',
    'grounded_caption': '1437 99 473 5 976 6190 116 976 35 58460 58461 58516 58518',
    'itm_0': '473 5 2274 6190 22 10 2335 15 5 26711 328 22 116',
    'itm_2': '473 5 2274 6190 22 10 4758 15 5 26711 328 22 116',
    'answer_match_0': '99 16 5 1948 7 864 22 99 7705 116 43809 16 22 2692 22 116',
    'answer_match_2': '99 16 5 1948 7 864 22 99 7705 116 43809 16 22 1275 22 116',
    'text_infill_0': (
        '99 16 5 1498 2788 9 22 50264 6219 23602 18 155 18383 29 3704 50264 316 50264 3678 6 218 75 51 116 22 116'
    ),
    'text_infill_1': '99 16 5 1498 2788 9 22 5 2119 6219 23602 18 155 50264 81 316 22414 3678 6 50264 22 116',
    'text_infill_3': '99 16 5 1498 2788 9 22 5 2119 50264 23602 18 155 50264 3704 81 316 22414 50264 51 116 22 116',
    'snli_ve': '473 5 2274 6190 22 80 82 2662 4 22 116',
    'sst2': '16 5 5702 9 2788 22 10 372 12 21928 1589 269 4 22 1313 50 2430 116',  # OFA's GLUE: lowercased only
    'mnli': '64 2788 134 22 10 313 36831 4 22 25696 2788 176 22 951 24859 22 116',
    'qqp': '16 864 22 10 313 36831 4 22 8 864 22 951 24859 22 6305 116',
    'summarization': '99 16 5 4819 9 1566 22 10 372 822 269 4 22 116',
    'text_to_image': '99 16 5 1498 2274 116 3747 35 83 1211 7922 6 314',  # OFA keeps the caption's case
}


def recorded_inputs() -> dict[str, dict]:
    """Each recorded case's source ids as the preprocessors build them now, from the same records and seeds."""
    rng = np.random.default_rng
    text = {'text': 'A Great-film / really.', 'premise': 'A man sleeps.', 'hypothesis': 'Someone RESTS'}
    itm = tasks.itm(VOCAB, [{'caption': 'A cat.'}, {'caption': 'A bird on a wire'}], ('cat', 'dog'))
    answer = tasks.answer_match(VOCAB, [{'question': 'q', 'answers': {'red': 1.0}}])
    infill = tasks.text_infill(VOCAB)
    question = {'question': 'What colour is the DOG', 'answers': {'brown': 1.0}}
    passage = {'text': "The quick brown fox's 3 cubs jump over 12 lazy dogs, don't they?"}
    built = {
        'caption': tasks.caption(VOCAB)({'caption': 'Two dogs, running on grass.'}, rng(0)),
        'vqa_pretrain': tasks.vqa(VOCAB)(question, rng(0)),
        'vqa_finetune': tasks.vqa(VOCAB, True)(question, rng(0)),
        'grounding': tasks.grounding(VOCAB)({'text': 'the man in a t-shirt/hat', 'region': [1, 2, 30, 31]}, rng(0)),
        'grounded_caption': tasks.grounded_caption(VOCAB)(
            {'text': 'a man', 'region': np.array([1.5, 2, 30, 31.25])}, rng(0)
        ),
        'snli_ve': tasks.snli_ve(VOCAB)({'hypothesis': 'Two People sit.', 'label': 'neutral'}, rng(0)),
        'sst2': tasks.text_task(VOCAB, 'sst2', {'1': 'positive'})({**text, 'label': '1'}, rng(0)),
        'mnli': tasks.text_task(VOCAB, 'mnli', tasks.SNLI_ANSWERS)({**text, 'label': 'entailment'}, rng(0)),
        'qqp': tasks.text_task(VOCAB, 'qqp', {'1': 'yes'})({**text, 'label': '1'}, rng(0)),
        'summarization': tasks.text_task(VOCAB, 'summarization')({**text, 'target': 'x'}, rng(0)),
        'text_to_image': {'source_ids': TASKS['text_to_image'].source_ids(VOCAB, text='A Red circle, left')},
    }
    for seed in (0, 2):
        built[f'itm_{seed}'] = itm({'caption': 'A Dog on the sofa!'}, rng(seed))
        built[f'answer_match_{seed}'] = answer({'question': 'What Colour?', 'answers': {'Blue ': 1.0}}, rng(seed))
    for seed in (0, 1, 3):
        built[f'text_infill_{seed}'] = infill(passage, rng(seed))
    return {name: example['source_ids'] for name, example in built.items()}


def test_training_instructions_are_what_they_were():
    assert recorded_inputs() == {name: [int(t) for t in ids.split()] for name, ids in RECORDED.items()}
