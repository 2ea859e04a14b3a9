"""The demo's evaluation: a model trained on the synthetic world answers scenes it never saw.

    python -m ofa_jax.demo --config configs/demo.py --workdir workdir/demo [--examples=32]

Runs `ofa_jax.evaluate` on a world of another seed (the training world's seed + 1000) with the workdir's latest
checkpoint, writing evaluation.json (the metrics) and predictions.jsonl to the workdir, and draws a few predictions
(predicted boxes red, true boxes green) to predictions.png. A text-to-image config (`configs/demo.py:text_to_image`)
instead draws the captions of unseen scenes through the API, scores whether each drawing shows exactly the colours its
caption names, and puts a few beside the true scenes in drawings.png.
"""

import json
import os
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from PIL import Image, ImageDraw

from ofa_jax import api, evaluate
from ofa_jax.data import mixtures
from ofa_jax.data.world import World, colors_drawn

SCALE = 4  # pixels of the drawing per image pixel
UNSEEN_SEED_OFFSET = 1000
EVALUATION_FILE = 'evaluation.json'


def unseen_world(config: ml_collections.ConfigDict, count: int) -> World:
    return mixtures.world_from_config(config.data, seed=config.data.world_seed + UNSEEN_SEED_OFFSET, size=count)


def run(config: ml_collections.ConfigDict, workdir: str, count: int = 32, draw: bool = True) -> dict[str, float]:
    """Scores the workdir's model on `count` unseen scenes; a text-to-image mixture goes to `evaluate_drawing`."""
    if config.data.source != 'world':
        raise ValueError(
            f'the demo evaluates the synthetic world; data.source is {config.data.source!r} '
            f'(use python -m ofa_jax.evaluate)'
        )
    if config.data.mixture == mixtures.world_task_name('text_to_image'):
        return evaluate_drawing(config, workdir, count, draw=draw)
    world = unseen_world(config, count)
    scores, predictions = evaluate.evaluate(
        config, workdir, workdir, batch_size=count, world=world, metrics_file=EVALUATION_FILE
    )
    if draw:
        _draw(world, predictions, os.path.join(workdir, 'predictions.png'))
    return _report(scores)


def evaluate_drawing(
    config: ml_collections.ConfigDict, workdir: str, count: int = 32, seed: int = 0, draw: bool = True
) -> dict[str, float]:
    """Draws the captions of `count` unseen scenes (one top-k sample each, decoded by the training world's
    codebook) and scores the fraction whose drawing shows exactly the colours the caption names."""
    world = unseen_world(config, count)
    predictor = api.Predictor.load(workdir, batch_size=count)
    results = predictor.text_to_image(
        [world[i]['caption'] for i in range(count)], mixtures.world_tokenizer(config.data), seed=seed
    )
    drawings = np.stack([r['images'][0] for r in results])
    matches = [colors_drawn(drawing) == {s.color for s in world.shapes(i)} for i, drawing in enumerate(drawings)]
    scores = {'text_to_image_color_match': float(np.mean(matches))}
    with open(os.path.join(workdir, EVALUATION_FILE), 'w') as f:
        json.dump(scores, f, indent=2)
    if draw:
        _draw_drawings(world, drawings, os.path.join(workdir, 'drawings.png'))
    return _report(scores)


def _report(scores: dict[str, float]) -> dict[str, float]:
    print('evaluation on unseen scenes:', json.dumps(scores))
    return scores


def _by_id(predictions: dict[str, list[dict]], task: str) -> dict[str, Any]:
    return {line['id']: line['prediction'] for line in predictions.get(task, [])}


def _draw(world: World, predictions: dict[str, list[dict]], path: str, shown: int = 6) -> None:
    size = world.image_size * SCALE
    canvas = Image.new('RGB', (shown * (size + 10), size + 70), 'white')
    draw = ImageDraw.Draw(canvas)
    captions, answers, boxes = (_by_id(predictions, t) for t in ('caption', 'vqa', 'grounding'))
    for i in range(min(shown, len(world))):
        record = world[i]
        left = i * (size + 10)
        canvas.paste(Image.fromarray(record['image']).resize((size, size), Image.NEAREST), (left, 0))
        found = [(record['region'], 'lime')] + ([(boxes[record['id']], 'red')] if record['id'] in boxes else [])
        for box, color in found:
            (x0, x1), (y0, y1) = sorted(box[0::2]), sorted(box[1::2])  # a predicted box may come corners swapped
            draw.rectangle([left + x0 * SCALE, y0 * SCALE, left + x1 * SCALE, y1 * SCALE], outline=color, width=2)
        lines = [
            captions.get(record['id'], ''),
            f'{record["question"]} {answers.get(record["id"], "")}',
            record['text'],
        ]
        for row, line in enumerate(lines):
            draw.text((left, size + 4 + 20 * row), line[:40], fill='black')
    canvas.save(path)


def _draw_drawings(world: World, drawings: np.ndarray, path: str, shown: int = 6) -> None:
    """The true scene above the model's drawing of its caption, for the first `shown` scenes."""
    size = world.image_size * SCALE
    canvas = Image.new('RGB', (shown * (size + 10), 2 * size + 30), 'white')
    draw = ImageDraw.Draw(canvas)
    for i in range(min(shown, len(drawings))):
        left = i * (size + 10)
        canvas.paste(Image.fromarray(world[i]['image']).resize((size, size), Image.NEAREST), (left, 0))
        canvas.paste(Image.fromarray(drawings[i]).resize((size, size), Image.NEAREST), (left, size + 4))
        draw.text((left, 2 * size + 10), world[i]['caption'][:40], fill='black')
    canvas.save(path)


def main(argv):
    del argv
    run(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.examples)


if __name__ == '__main__':
    config_flags.DEFINE_config_file('config', None, 'The demo config the workdir was trained with.', lock_config=True)
    flags.DEFINE_string('workdir', None, 'The training workdir: its latest checkpoint is evaluated, outputs go there.')
    flags.DEFINE_integer('examples', 32, 'Unseen scenes to evaluate.')
    flags.mark_flags_as_required(['config', 'workdir'])
    app.run(main)
