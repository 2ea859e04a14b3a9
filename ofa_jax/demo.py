"""The demo's closing evaluation: the trained model answers unseen scenes of the synthetic world.

Captions, answers and grounds scenes the training never saw (another world seed), scores them, and draws a few
predictions (predicted boxes red, true boxes green) to `predictions.png` in the workdir. A text-to-image demo instead
draws the captions of unseen scenes, scores whether each drawing shows exactly the colours its caption names, and puts
a few beside the true scenes in `drawings.png`.
"""
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from ofa_jax import decode, metrics
from ofa_jax.data import boxes, pipeline
from ofa_jax.data.image_codes import images_from_code_tokens
from ofa_jax.data.registry import TaskRegistry
from ofa_jax.data.tasks import world_codebook
from ofa_jax.data.vocab import default_vocabulary
from ofa_jax.data.world import World, colors_drawn
from ofa_jax.model import OFA, model_config

EVALUATED = ('caption', 'vqa', 'grounding')
SCALE = 4  # pixels of the drawing per image pixel


def _examples(task_name: str, world: World, count: int) -> list[dict]:
    task = TaskRegistry.get(task_name)
    return [task.preprocess(world[i], np.random.default_rng(i)) for i in range(count)]


def _model_and_variables(config: ml_collections.ConfigDict, state: Any) -> tuple[OFA, dict[str, Any]]:
    variables = {'params': state.ema_params if state.ema_params is not None else state.params,
                 'batch_stats': state.batch_stats}
    return OFA(model_config(config.model, **config.model_overrides)), variables


def _unseen_world(config: ml_collections.ConfigDict, count: int) -> World:
    return World(size=count, seed=config.data.world_seed + 1000, image_size=config.data.image_size)


def evaluate(config: ml_collections.ConfigDict, state: Any, workdir: str, count: int = 32) -> dict[str, float]:
    """Scores the trained `state` on `count` unseen scenes; a text-to-image mixture goes to evaluate_drawing."""
    if config.data.mixture.endswith('text_to_image'):
        return evaluate_drawing(config, state, workdir, count)
    vocab = default_vocabulary()
    model, variables = _model_and_variables(config, state)
    world = _unseen_world(config, count)
    spec = pipeline.BatchSpec(count, config.data.image_size, config.data.max_source_length,
                              config.data.max_target_length)
    # Greedy; a box is exactly four bins, then eos.
    settings = {'grounding': decode.DecodeSettings(beam_size=1, max_length=5, min_length=4)}
    predictions, scores = {}, {}
    for name in EVALUATED:
        examples = _examples(f'world_{name}', world, count)
        batch = pipeline.to_batch(examples, spec, [f'world_{name}'])
        tokens, _ = decode.generate(model, variables, batch['src_tokens'], batch['patch_images'],
                                    batch['patch_masks'], settings.get(name, decode.DecodeSettings(beam_size=1)),
                                    constraint_ranges=batch['constraint_ranges'] if name == 'grounding' else None)
        tokens = np.asarray(tokens[:, 0])
        if name == 'grounding':
            predicted = np.stack([boxes.dequantize(np.clip(t[:4] - vocab.bin_id(0), 0, 999)) for t in tokens])
            truth = np.stack([boxes.dequantize(boxes.quantize(e['region'])) for e in examples])
            scores['grounding_accuracy'] = metrics.grounding_accuracy(predicted, truth)
            predictions[name] = predicted
        else:
            texts = [vocab.decode([i for i in row if i != vocab.eos_id]).strip() for row in tokens]
            truths = [vocab.decode(e['target_ids']).strip() for e in examples]
            scores[f'{name}_exact_match'] = float(np.mean([p == t for p, t in zip(texts, truths)]))
            predictions[name] = texts
    if config.get('demo_png', True):
        _draw(world, predictions, os.path.join(workdir, 'predictions.png'))
    return _report(scores, workdir)


def evaluate_drawing(config: ml_collections.ConfigDict, state: Any, workdir: str, count: int = 32,
                     seed: int = 0) -> dict[str, float]:
    """Draws the captions of `count` unseen scenes (one top-k sample each, decoded by the training world's
    codebook) and scores the fraction whose drawing shows exactly the colours the caption names."""
    vocab = default_vocabulary()
    model, variables = _model_and_variables(config, state)
    codebook = world_codebook(World(config.data.world_size, config.data.world_seed, config.data.image_size))
    world = _unseen_world(config, count)
    examples = _examples(config.data.mixture, world, count)
    spec = pipeline.BatchSpec(count, config.data.image_size, config.data.max_source_length,
                              config.data.max_target_length)
    batch = pipeline.to_batch(examples, spec, [config.data.mixture])
    tokens, _ = decode.sample_codes(model, variables, batch['src_tokens'],
                                    vocab.code_range(codebook.num_codes), 1, jax.random.key(seed))
    drawings = images_from_code_tokens(vocab, codebook, np.asarray(tokens[:, 0]))
    matches = [colors_drawn(drawing) == {s.color for s in world.shapes(i)} for i, drawing in enumerate(drawings)]
    if config.get('demo_png', True):
        _draw_drawings(world, drawings, os.path.join(workdir, 'drawings.png'))
    return _report({'drawing_color_match': float(np.mean(matches))}, workdir)


def _report(scores: dict[str, float], workdir: str) -> dict[str, float]:
    with open(os.path.join(workdir, 'evaluation.json'), 'w') as f:
        json.dump(scores, f, indent=2)
    print('evaluation on unseen scenes:', json.dumps(scores))
    return scores


def _draw(world: World, predictions: dict[str, Any], path: str, shown: int = 6) -> None:
    size = world.image_size * SCALE
    canvas = Image.new('RGB', (shown * (size + 10), size + 70), 'white')
    draw = ImageDraw.Draw(canvas)
    for i in range(shown):
        record = world[i]
        left = i * (size + 10)
        canvas.paste(Image.fromarray(record['image']).resize((size, size), Image.NEAREST), (left, 0))
        for box, color in ((record['region'], 'lime'), (predictions['grounding'][i], 'red')):
            (x0, x1), (y0, y1) = sorted(box[0::2]), sorted(box[1::2])  # a predicted box may come corners swapped
            draw.rectangle([left + x0 * SCALE, y0 * SCALE, left + x1 * SCALE, y1 * SCALE], outline=color, width=2)
        lines = [predictions['caption'][i], f'{record["question"]} {predictions["vqa"][i]}', record['text']]
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
