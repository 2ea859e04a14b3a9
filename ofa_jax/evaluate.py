"""Evaluates a checkpoint on the tasks a config's data section names, writing predictions and scores.

    python -m ofa_jax.evaluate --config configs/demo.py --checkpoint workdir/demo --workdir workdir/demo_eval \
        [--config.data.world_seed=1000 --config.data.world_size=200] [--max_examples=N]

Every evaluable task of the config (caption, VQA, grounding, SNLI-VE, ImageNet-style classification) is run over its
source once, in order, through the task's own preprocessing, in batches split over the devices of the mesh
(config.mesh) of this one process. Outputs: predictions.jsonl (one line per example: task, id, prediction,
reference) and metrics.json (CIDEr and BLEU-4 for captions, VQA score, grounding accuracy at IoU 0.5, accuracy for
entailment and classification).
Boxes are in the pixels of the model's input image (IoU does not change under the resize). VQA answers by free beam
search; classification chooses among the labels of the evaluated examples.
"""
import collections
import json
import os
from typing import Any, Optional

import ml_collections
import numpy as np
from absl import app, flags, logging

from ofa_jax import api, metrics, sharding
from ofa_jax import train  # noqa: F401 - defines the --config and --workdir flags this tool reads
from ofa_jax.data import pipeline
from ofa_jax.data import tasks as data_tasks
from ofa_jax.data.vocab import default_vocabulary

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'A save_model directory or a training workdir.')
_MAX_EXAMPLES = flags.DEFINE_integer('max_examples', 0, 'Examples per task (0: the whole source).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 0, 'Examples per model call (0: the config\'s batch_size).')

# The synthetic world's tasks and the finetuning kinds, as the predictor's tasks.
WORLD_TASKS = {'caption': 'caption', 'vqa': 'vqa', 'grounding': 'ground'}
FINETUNE_KINDS = {'caption': 'caption', 'vqa': 'vqa', 'refcoco': 'ground', 'snli_ve': 'entail',
                  'imagenet': 'classify'}


def evaluable_tasks(data: ml_collections.ConfigDict) -> dict[str, str]:
    """Registers the config's data and returns {registered task name: predictor task} for those with a metric."""
    tasks, _ = data_tasks.register_from_config(data)
    if data.source == 'world':
        prefix = 'world_'
        return {t.name: WORLD_TASKS[t.name[len(prefix):]] for t in tasks if t.name[len(prefix):] in WORLD_TASKS}
    kinds = {spec['name']: spec['kind'] for spec in data.tasks}
    return {t.name: FINETUNE_KINDS[kinds[t.name]] for t in tasks if kinds[t.name] in FINETUNE_KINDS}


def _examples(task_name: str, seed: int, max_examples: int) -> tuple[list[dict], dict[str, int]]:
    """The task's examples in source order, and the dropped counts by reason."""
    task = data_tasks.TaskRegistry.get(task_name)
    stream = pipeline.example_stream([task], [1.0], seed=seed, repeat=False)
    if max_examples:
        stream = stream[:max_examples]
    examples, dropped = [], collections.Counter()
    for item in stream:
        if isinstance(item, pipeline.Dropped):
            dropped[item.reason] += 1
        else:
            examples.append(item)
    return examples, dict(dropped)


def _reference(kind: str, example: dict[str, Any], text: str) -> Any:
    """What the prediction is scored against: caption references, VQA answer confidences, the box, the label."""
    if kind == 'caption':
        return [data_tasks.clean_text(r) for r in example.get('references', [])] or [text]
    if kind == 'vqa':
        return {metrics.normalize_vqa_answer(a): c for a, c in example['answers'].items()}
    if kind == 'ground':
        return np.asarray(example['region'], np.float64).tolist()
    return text


def score(kind: str, predictions: dict[str, Any], references: dict[str, Any]) -> dict[str, float]:
    """The task's metrics over predictions and references keyed by example id."""
    if kind == 'caption':
        return {'cider': metrics.cider(references, predictions), 'bleu4': metrics.bleu4(references, predictions)}
    if kind == 'vqa':
        # OFA's VQA score: the confidence of the predicted answer (VQA v2's soft accuracy per question).
        return {'vqa_score': float(np.mean([references[k].get(metrics.normalize_vqa_answer(p), 0.0)
                                            for k, p in predictions.items()]))}
    if kind == 'ground':
        keys = list(predictions)
        return {'grounding_accuracy': metrics.grounding_accuracy(np.array([predictions[k] for k in keys]),
                                                                 np.array([references[k] for k in keys]))}
    return {'accuracy': metrics.accuracy(predictions, references)}


def evaluate(config: ml_collections.ConfigDict, checkpoint: str, workdir: str, max_examples: int = 0,
             batch_size: int = 0, predictor: Optional[api.Predictor] = None) -> dict[str, dict[str, float]]:
    """Runs every evaluable task of the config; returns {task name: metrics} (also written to workdir)."""
    os.makedirs(workdir, exist_ok=True)
    vocab = default_vocabulary()
    predictor = predictor or api.Predictor.load(
        checkpoint, image_size=config.data.image_size, max_source_length=config.data.max_source_length,
        batch_size=batch_size or config.batch_size, mesh=sharding.make_mesh(**config.mesh),
        logical_axis_rules=config.logical_axis_rules)
    results, lines = {}, []
    for task_name, kind in evaluable_tasks(config.data).items():
        examples, dropped = _examples(task_name, config.seed, max_examples)
        inputs = [api.ModelInput(e['source_ids'], e.get('image')) for e in examples]
        targets = [vocab.decode(e['target_ids']).strip() for e in examples]
        candidates = sorted(set(targets)) if kind == 'classify' else None
        outputs = predictor.answer(kind, inputs, candidates)
        key = api.RESULT_KEYS[kind]
        predictions = {str(e.get('id', i)): o[key] for i, (e, o) in enumerate(zip(examples, outputs))}
        references = {str(e.get('id', i)): _reference(kind, e, t) for i, (e, t) in enumerate(zip(examples, targets))}
        if not predictions:
            logging.warning('task %s: no examples to evaluate (dropped: %s)', task_name, dropped)
            continue
        results[task_name] = {**score(kind, predictions, references), 'examples': len(predictions),
                              'dropped': sum(dropped.values())}
        lines += [{'task': task_name, 'id': k, 'prediction': predictions[k], 'reference': references[k]}
                  for k in predictions]
        logging.info('%s: %s', task_name, results[task_name])
    with open(os.path.join(workdir, 'predictions.jsonl'), 'w') as f:
        f.writelines(json.dumps(line) + '\n' for line in lines)
    with open(os.path.join(workdir, 'metrics.json'), 'w') as f:
        json.dump(results, f, indent=2)
    return results


def main(argv):
    del argv
    scores = evaluate(flags.FLAGS.config, _CHECKPOINT.value, flags.FLAGS.workdir, _MAX_EXAMPLES.value,
                      _BATCH_SIZE.value)
    print(json.dumps(scores, indent=2))


if __name__ == '__main__':
    flags.mark_flags_as_required(['config', 'checkpoint', 'workdir'])
    app.run(main)
