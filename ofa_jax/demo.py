"""The demo's evaluation: a model trained on the synthetic world answers scenes it never saw.

    python -m ofa_jax.demo --config configs/demo.py --workdir workdir/demo [--examples=256]

Runs `ofa_jax.evaluate` on a world of another seed (the training world's seed + 1000) with the workdir's latest
checkpoint, writing evaluation.json (the metrics) and predictions.jsonl to the workdir, and draws a few predictions
(predicted boxes red, true boxes green) to predictions.png. A text-to-image config (`configs/demo.py:text_to_image`)
instead draws the captions of unseen scenes through the API, scores whether each drawing shows exactly the colours its
caption names, and puts a few beside the true scenes in drawings.png.
"""

import json
import os
import textwrap
from typing import Any

import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags
from PIL import Image, ImageDraw

from ofa_jax import api, console, evaluate
from ofa_jax.data import mixtures, tasks
from ofa_jax.data.image_codes import PatchCodebook
from ofa_jax.data.world import World, colors_drawn
from ofa_jax.paths import resolved

SCALE = 4  # pixels of the drawing per image pixel
UNSEEN_SEED_OFFSET = 1000
EVALUATION_FILE = 'evaluation.json'


def unseen_world(config: ml_collections.ConfigDict, count: int) -> World:
    return mixtures.world_from_config(config.data, seed=config.data.world_seed + UNSEEN_SEED_OFFSET, size=count)


def run(config: ml_collections.ConfigDict, workdir: str, count: int = 0, draw: bool = True) -> dict[str, float]:
    """Scores the workdir's model on `count` unseen scenes (0: 256, or 32 drawings for a text-to-image mixture, which
    goes to `evaluate_drawing`)."""
    if config.data.source != 'world':
        raise ValueError(
            f'the demo evaluates the synthetic world; data.source is {config.data.source!r} '
            f'(use python -m ofa_jax.evaluate)'
        )
    if config.data.mixture == mixtures.world_task_name('text_to_image'):
        return evaluate_drawing(config, workdir, count or 32, draw=draw)
    world = unseen_world(config, count or 256)
    scores, predictions = evaluate.evaluate(
        config, workdir, workdir, batch_size=min(len(world), 64), world=world, metrics_file=EVALUATION_FILE
    )
    if draw:
        _draw(world, predictions, mixtures.world_tokenizer(config.data), os.path.join(workdir, 'predictions.png'))
    return _report(scores, workdir)


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
    (resolved(workdir) / EVALUATION_FILE).write_text(json.dumps(scores, indent=2))
    if draw:
        _draw_drawings(world, drawings, os.path.join(workdir, 'drawings.png'))
    return _report(scores, workdir)


def _report(scores: dict[str, float], workdir: str) -> dict[str, float]:
    print(f'evaluation on unseen scenes ({os.path.join(workdir, EVALUATION_FILE)}):')
    print(evaluate.scores_table(scores))
    return scores


def _by_id(predictions: dict[str, list[dict]], task: str, field: str = 'prediction') -> dict[str, Any]:
    return {line['id']: line[field] for line in reversed(predictions.get(task, []))}


def _wrapped(lines: list[str], width: int) -> list[str]:
    """Lines broken between words (only a word longer than a line is split)."""
    return [part for line in lines for part in textwrap.wrap(line, width) or ['']]


def _infilled(image: np.ndarray, codes: Any, tokenizer: PatchCodebook) -> np.ndarray | None:
    """The image with its centre replaced by the decoded codes (None when they are not a full grid)."""
    middle = tasks.centre(image.shape[0])
    side = (middle.stop - middle.start) // tokenizer.downsample
    if not isinstance(codes, list) or len(codes) != side * side or not all(0 <= c < tokenizer.num_codes for c in codes):
        return None
    filled = image.copy()
    filled[middle, middle] = tokenizer.decode(np.array(codes).reshape(1, side, side))[0]
    return filled


def _draw(
    world: World, predictions: dict[str, list[dict]], tokenizer: PatchCodebook, path: str, shown: int = 4
) -> None:
    """Every task on the first `shown` unseen scenes, one column each: the grounding box and the detected objects
    (predicted red, true green), the masked image beside its infilling, then the text tasks' answers."""
    size, half = world.image_size * SCALE, world.image_size * SCALE // 2
    width = size + 16
    found = {task: _by_id(predictions, task) for task in tasks.TASKS}
    asked = {task: _by_id(predictions, task, 'instruction') for task in ('itm', 'text_infill')}
    columns = []
    for i in range(min(shown, len(world))):
        record, key = world[i], world[i]['id']
        picture = Image.new('RGB', (width, 2 * size + half + 24), 'white')
        draw = ImageDraw.Draw(picture)
        scene = Image.fromarray(record['image']).resize((size, size), Image.NEAREST)
        for row, boxes in enumerate(
            [
                [(record['region'], 'lime', '')] + [(found['grounding'].get(key), 'red', '')],
                [(b, 'lime', '') for b in record['boxes']]
                + [(b, 'red', label) for b, label in zip(*(found['detection'].get(key) or ([], [])))],
            ]
        ):
            top = row * (size + 8)
            picture.paste(scene, (0, top))
            for box, color, label in boxes:
                if box is None:
                    continue
                (x0, x1), (y0, y1) = sorted(box[0::2]), sorted(box[1::2])  # a predicted box may come corners swapped
                draw.rectangle([x0 * SCALE, top + y0 * SCALE, x1 * SCALE, top + y1 * SCALE], outline=color, width=2)
                if label:
                    draw.text((x0 * SCALE + 3, top + y0 * SCALE + 2), label, fill='red')
        masked = record['image'].copy()
        middle = tasks.centre(world.image_size)
        masked[middle, middle] = 128
        infilled = _infilled(record['image'], found['image_infill'].get(key), tokenizer)
        top = 2 * (size + 8)
        for left, image in ((0, masked), (half + 8, infilled)):
            if image is not None:
                picture.paste(Image.fromarray(image).resize((half, half), Image.NEAREST), (left, top))
        text = [
            f'caption: {found["caption"].get(key, "")}',
            f'{record["question"]} {found["vqa"].get(key, "")}',
            f'grounding: {record["text"]}',
            f'the region (green): {found["grounded_caption"].get(key, "")}',
            f'{asked["itm"].get(key, "").strip()} {found["itm"].get(key, "")}',
            f'text infill: {asked["text_infill"].get(key, "").strip()}',
            f'-> {found["text_infill"].get(key, "")}',
        ]
        columns.append((picture, _wrapped(text, size // 6)))
    lines = max(len(text) for _, text in columns)
    canvas = Image.new('RGB', (len(columns) * (size + 16), columns[0][0].height + 14 * lines + 8), 'white')
    draw = ImageDraw.Draw(canvas)
    for i, (picture, text) in enumerate(columns):
        canvas.paste(picture, (i * (size + 16), 0))
        for row, line in enumerate(text):
            draw.text((i * (size + 16), picture.height + 14 * row), line, fill='black')
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
    flags.DEFINE_integer('examples', 0, 'Unseen scenes to evaluate (0: 256, or 32 drawings).')
    flags.mark_flags_as_required(['config', 'workdir'])
    console.run(main)
