"""Evaluates a checkpoint on the tasks a config's data section names, writing predictions and scores.

    python -m ofa_jax.evaluate --config configs/demo.py --checkpoint workdir/demo --workdir workdir/demo_eval \
        [--config.data.world_seed=1000 --config.data.world_size=200] [--max_examples=N]

Every task of the config whose declaration (`ofa_jax.data.tasks.TASKS`) has metrics is run over its source once, in
order, through the task's own preprocessing, then answered by the Python API (`ofa_jax.api.Predictor.answer`) with the
task's declared decoding and output, and scored by its declared metrics, in batches split over the devices of the
mesh (config.mesh) of this one process. Outputs: predictions.jsonl (one line per example: task, id, instruction,
prediction, reference) and metrics.json ({'<task>_<metric>': value}, with '<task>_examples' and '<task>_dropped'; a
task is named by its kind, or by its registered name when two tasks share a kind).
Boxes are in the pixels of the model's input image (IoU does not change under the resize). Classification chooses
among the labels of the evaluated examples; VQA with an answer list (data.tasks.vqa.answers) scores every answer of it;
each task's decoder prompt is its data entry's prompt_type, as it was trained.
VQA questions without answers (test-dev, test-std) are answered but not scored ('<task>_unlabeled' counts them), and
every VQA task's answers are also written as the evaluation server's result file, '<task>_results.json'
([{"question_id": int, "answer": str}], as OFA's evaluation writes them).
"""

import collections
import copy
import json
import os
from typing import Any

import ml_collections
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from ofa_jax import api, console, sharding
from ofa_jax.data import mixtures, pipeline
from ofa_jax.data.registry import Task
from ofa_jax.data.tasks import TASKS
from ofa_jax.data.vocab import vocabulary_from_spec
from ofa_jax.paths import resolved

# The world's validation scenes: unseen by training and by the demo's evaluation (its seed + 1000).
VALIDATION_SEED_OFFSET = 2000


def validation_setup(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, Any]:
    """What a training run validates on: (a copy of its config whose data is the validation data, the world to
    score or None). Finetuning tasks validate on their entries' valid_path (the tasks without one are left out);
    the world on config.validation.max_examples (256 by default) scenes of another seed."""
    validation = copy.deepcopy(config)
    world = None
    if config.data.source == 'world':
        world = mixtures.world_from_config(
            config.data,
            seed=config.data.world_seed + VALIDATION_SEED_OFFSET,
            size=config.validation.max_examples or 256,
        )
    elif config.data.source == 'tasks':
        specs = mixtures.task_specs(config.data)
        kept = {
            key: {**spec, 'path': spec['valid_path'], 'name': f'{spec["name"]}_validation'}
            for key, spec in specs.items()
            if spec.get('valid_path') and TASKS[spec['kind']].metrics is not None
        }
        if not kept:
            raise ValueError(
                f'validation.every={config.validation.every} but no task with a metric has validation data: set '
                f'--config.data.tasks.{next(iter(specs), "TASK")}.valid_path=FILE'
            )
        with validation.unlocked():
            validation.data.tasks = kept
    else:
        raise ValueError(
            f'validation.every={config.validation.every}: data.source {config.data.source!r} has no validation data '
            '(set validation.every=0)'
        )
    return validation, world


def evaluable_tasks(data: ml_collections.ConfigDict, world: Any = None) -> dict[str, Task]:
    """Registers the config's data (on `world` instead of its own, when given) and returns its tasks that have
    metrics, keyed by the name their metrics are reported under."""
    tasks, _ = mixtures.register_from_config(data, world)
    tasks = [t for t in tasks if t.kind and TASKS[t.kind].metrics is not None]
    kinds = collections.Counter(t.kind for t in tasks)
    return {(t.kind if kinds[t.kind] == 1 else t.name): t for t in tasks}


def examples_of(task: Task, seed: int, max_examples: int) -> tuple[list[dict], dict[str, int]]:
    """The task's examples in source order (those without a reference have no 'target_ids'), and the dropped counts
    by reason."""
    stream = pipeline.example_stream([task], [1.0], seed=seed, repeat=False, keep_unlabeled=True)
    if max_examples:
        stream = stream[:max_examples]
    examples, dropped = [], collections.Counter()
    for item in stream:
        if isinstance(item, pipeline.Dropped):
            dropped[item.reason] += 1
        else:
            examples.append(item)
    return examples, dict(dropped)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: np.asarray(v).tolist()))


def evaluate(
    config: ml_collections.ConfigDict,
    checkpoint: str | os.PathLike,
    workdir: str | os.PathLike,
    max_examples: int = 0,
    batch_size: int = 0,
    predictor: api.Predictor | None = None,
    world: Any = None,
    metrics_file: str = 'metrics.json',
    step: int | None = None,
    write: bool = True,
) -> tuple[dict[str, float], dict[str, list[dict]]]:
    """Runs every evaluable task of the config on the checkpoint (a training workdir's `step`, by default its
    latest); returns (metrics {'<task>_<metric>': value}, the predictions of each task as written to
    predictions.jsonl), both also written to workdir (the metrics to `metrics_file`) unless write=False."""
    vocab = vocabulary_from_spec(config.data.vocab)
    predictor = predictor or api.Predictor.load(
        checkpoint,
        step,
        image_size=config.data.image_size,
        max_source_length=config.data.max_source_length,
        batch_size=batch_size or config.batch_size,
        mesh=sharding.make_mesh(**config.mesh),
        logical_axis_rules=config.logical_axis_rules,
        vocab=vocab,
        prompt_type=mixtures.prompt_types(config.data),
    )
    results, predictions_by_task, kinds = {}, {}, {}
    for name, task in evaluable_tasks(config.data, world).items():
        kind = kinds[name] = TASKS[task.kind]
        examples, dropped = examples_of(task, config.seed, max_examples)
        if not examples:
            logging.warning('task %s: no examples to evaluate (dropped: %s)', name, dropped)
            continue
        inputs = [api.ModelInput(e['source_ids'], e.get('image')) for e in examples]
        candidates = list(task.answers) or None  # VQA with its answer list: every answer scored (OFA's allcand)
        if kind.choose:
            candidates = sorted({kind.reference(e, vocab) for e in examples})
        outputs = predictor.answer(kind.name, inputs, candidates)
        # Keyed by position: records may share an id (one per caption of an image), each is scored.
        ids = [str(e.get('id', i)) for i, e in enumerate(examples)]
        predictions = {i: kind.prediction(o) for i, o in enumerate(outputs)}
        # Scored over the examples with a reference; the others (test-dev questions) are predicted only.
        references = {i: kind.reference(e, vocab) for i, e in enumerate(examples) if 'target_ids' in e}
        scores = kind.metrics({i: predictions[i] for i in references}, references) if references else {}
        results.update({f'{name}_{metric}': float(value) for metric, value in scores.items()})
        results.update({f'{name}_examples': len(examples), f'{name}_dropped': sum(dropped.values())})
        if len(references) < len(examples):
            results[f'{name}_unlabeled'] = len(examples) - len(references)
        predictions_by_task[name] = [
            {
                'task': name,
                'id': k,
                'instruction': vocab.decode(examples[i]['source_ids']).strip(),
                'prediction': _jsonable(predictions[i]),
                'reference': _jsonable(references.get(i)),
            }
            for i, k in enumerate(ids)
        ]
        logging.info('%s: %s', name, scores)
    if not write:
        return results, predictions_by_task
    workdir = resolved(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'predictions.jsonl').write_text(
        ''.join(json.dumps(line) + '\n' for lines in predictions_by_task.values() for line in lines)
    )
    (workdir / metrics_file).write_text(json.dumps(results, indent=2))
    for name, lines in predictions_by_task.items():
        if kinds[name].results_file is None:
            continue
        answers = kinds[name].results_file(lines)
        if answers is None:
            # Only a benchmark's server asks for the file, and its questions have integer ids.
            logging.info('%s: its ids are not question ids (integers), so no %s_results.json', name, name)
        else:
            (workdir / f'{name}_results.json').write_text(json.dumps(answers))
    return results, predictions_by_task


def scores_table(scores: dict[str, float]) -> str:
    """metrics.json's flat scores as a small table: one row per task (named by its longest matching prefix), its
    metrics, then its example and dropped counts."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in scores.items():
        task = max((t for t in TASKS if key.startswith(t + '_')), key=len, default='')
        rows.setdefault(task or key, {})[key[len(task) + 1 :] if task else 'value'] = value
    width = max([len('task'), *map(len, rows)])
    lines = [f'{"task":<{width}}  metrics']
    for task, values in rows.items():
        counts = (values.pop('examples', None), values.pop('dropped', None), values.pop('unlabeled', None))
        metrics = ', '.join(f'{name} {value:.3f}' for name, value in values.items())
        if counts[0] is not None:
            extra = [f'{int(n)} {what}' for n, what in zip(counts[1:], ('dropped', 'unscored: no answers')) if n]
            metrics += f'  ({", ".join([f"{int(counts[0])} examples", *extra])})'
        lines.append(f'{task:<{width}}  {metrics}')
    return '\n'.join(lines)


def define_flags() -> None:
    """The command line of evaluate (and of the demo, which adds its drawings)."""
    config_flags.DEFINE_config_file(
        'config', None, 'The training config whose data section names the tasks.', lock_config=True
    )
    flags.DEFINE_string('checkpoint', None, 'A save_model directory or a training workdir.')
    flags.DEFINE_string('workdir', None, 'predictions.jsonl and metrics.json go here.')
    flags.DEFINE_integer('max_examples', 0, 'Examples per task (0: the whole source).')
    flags.DEFINE_integer('batch_size', 0, "Examples per model call (0: the config's batch_size).")
    flags.DEFINE_integer('step', None, "A training workdir's saved step to evaluate (default: its latest).")


def main(argv):
    del argv
    scores, _ = evaluate(
        flags.FLAGS.config,
        flags.FLAGS.checkpoint,
        flags.FLAGS.workdir,
        flags.FLAGS.max_examples,
        flags.FLAGS.batch_size,
        step=flags.FLAGS.step,
    )
    print(scores_table(scores))


if __name__ == '__main__':
    define_flags()
    flags.mark_flags_as_required(['config', 'checkpoint', 'workdir'])
    console.run(main)
