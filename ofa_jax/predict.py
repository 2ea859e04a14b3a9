"""Answers one task on images (or texts) from the command line, printing JSON.

    python -m ofa_jax.predict --checkpoint DIR --task caption --image cat.jpg
    python -m ofa_jax.predict --checkpoint DIR --task vqa --image cat.jpg --text "what color is the cat" \
        [--answers answers.txt]
    python -m ofa_jax.predict --checkpoint DIR --task grounding --image cat.jpg --text "the cat" --draw boxes.png
    python -m ofa_jax.predict --checkpoint DIR --task mnli --premise "a man sleeps" --text "a person rests"

    python -m ofa_jax.predict --checkpoint DIR --task text_to_image --text "a red circle" --vqgan VQGAN_DIR \
        --samples 4 --draw drawing.png

--task is any task of `ofa_jax.data.tasks.TASKS`, by the name training and evaluation use. --image and --text
repeat, one --text per --image: --text is the task's text input (the question, the referring text, the hypothesis,
the text to infill or summarize), --premise a text premise (snli_ve, mnli, rte, qqp's first question) and --region a
box x0,y0,x1,y1 in the image's pixels (grounded_caption). --answers is a file with one candidate per line (VQA
answers, classification labels). For grounding and detection, --draw writes the image with the predicted boxes (with
several images, `_<index>` goes before the extension); for text_to_image it names the drawings (`_<text>_<sample>`
added).
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ofa_jax import api, decode
from ofa_jax.data.tasks import TASKS
from ofa_jax.vqgan import VQGANTokenizer

# Tasks with a prediction (answer_match is a pretraining objective only).
PREDICTED = tuple(name for name in TASKS if name != 'answer_match')
TEXT_INPUTS = ('question', 'text', 'hypothesis')  # the input --text fills


def draw_boxes(image: np.ndarray, boxes: Sequence[Sequence[float]], labels: Sequence[str] = ()) -> Image.Image:
    """The uint8 image [H, W, 3] with boxes [N, 4] (x0, y0, x1, y1, pixels) outlined in red and labelled."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 200))
    for i, box in enumerate(boxes):
        x0, y0, x1, y1 = box
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline='red', width=width)
        if i < len(labels):
            draw.text((min(x0, x1) + width, min(y0, y1) + width), labels[i], fill='red')
    return canvas


def _drawing_path(path: str, index: int, count: int) -> str:
    if count == 1:
        return path
    stem, extension = os.path.splitext(path)
    return f'{stem}_{index}{extension or ".png"}'


def _read_lines(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='python -m ofa_jax.predict', description=__doc__.split('\n')[0])
    parser.add_argument('--checkpoint', required=True, help='a save_model directory or a training workdir')
    parser.add_argument('--task', required=True, choices=PREDICTED)
    parser.add_argument('--image', action='append', default=[], help='image file (repeatable)')
    parser.add_argument(
        '--text',
        action='append',
        default=[],
        help="the task's text input: question, referring text, hypothesis, or the text of "
        'text_infill, summarization and text_to_image (repeatable)',
    )
    parser.add_argument('--premise', action='append', default=[], help='a text premise per item (repeatable)')
    parser.add_argument('--region', action='append', default=[], help='grounded_caption: x0,y0,x1,y1 per image')
    parser.add_argument('--answers', help='file of candidates, one per line: VQA answers or classification labels')
    parser.add_argument(
        '--mode',
        choices=('all', 'trie'),
        default='all',
        help='vqa with --answers: score every candidate, or beam search inside their trie',
    )
    parser.add_argument('--draw', default='prediction.png', help='grounding/detection: where the drawing goes')
    parser.add_argument('--image_size', type=int, help="resize images to this square side (default: OFA's)")
    parser.add_argument('--beam_size', type=int, help="override the task's beam size")
    parser.add_argument('--max_length', type=int, help="override the task's maximum output length")
    parser.add_argument('--batch_size', type=int, default=16)
    parser.add_argument('--vqgan', help='text_to_image: a converted VQGAN directory (python -m ofa_jax.vqgan convert)')
    parser.add_argument('--samples', type=int, default=1, help='text_to_image: images per text')
    parser.add_argument('--seed', type=int, default=0, help='text_to_image: the sampling seed')
    parser.add_argument(
        '--prompt_type',
        choices=decode.PROMPT_TYPES,
        help="what precedes the answer in the decoder (default: the task's)",
    )
    args = parser.parse_args(argv)
    kind = TASKS[args.task]
    if kind.image and not args.image:
        parser.error(f'--task {args.task} needs at least one --image')
    if not kind.image and args.image:
        parser.error(f'--task {args.task} takes no --image')
    count = len(args.image) if kind.image else len(args.text) or len(args.premise)
    given = {'text': args.text, 'premise': args.premise, 'region': args.region}
    for name in kind.inputs:
        flag = 'text' if name in TEXT_INPUTS else name
        optional = args.task == 'snli_ve' and name == 'premise'
        if not (optional and not given[flag]) and len(given[flag]) != count or not count:
            parser.error(
                f'--task {args.task} needs one --{flag} per {"--image" if kind.image else "item"}, '
                f'got {len(given[flag])} for {count}'
            )
    if args.task == 'text_to_image' and not args.vqgan:
        parser.error('--task text_to_image needs --vqgan (the image tokenizer that draws the codes)')
    if kind.choose and not args.answers:
        parser.error(f'--task {args.task} needs --answers (the candidate labels)')
    try:
        args.region = [[float(v) for v in r.split(',')] for r in args.region]
    except ValueError:
        parser.error(f'--region must be x0,y0,x1,y1, got {args.region}')
    return args


def predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The results of the task the arguments name, each with its inputs ('image', 'text', ...) added."""
    kwargs = {'batch_size': args.batch_size, 'prompt_type': args.prompt_type}
    if args.image_size:
        kwargs['image_size'] = args.image_size
    predictor = api.Predictor.load(args.checkpoint, **kwargs)
    kind = TASKS[args.task]
    settings = {k: v for k, v in (('beam_size', args.beam_size), ('max_length', args.max_length)) if v}
    given = {'text': args.text, 'premise': args.premise, 'region': args.region}
    inputs = {name: given['text' if name in TEXT_INPUTS else name] for name in kind.inputs}
    inputs = {name: values for name, values in inputs.items() if values}
    if args.task == 'text_to_image':
        settings.update(tokenizer=VQGANTokenizer.load(args.vqgan), samples=args.samples, seed=args.seed)
        results = predictor.text_to_image(args.text, **settings)
    else:
        candidates = _read_lines(args.answers) if args.answers else None
        results = predictor.run(
            args.task, args.image if kind.image else None, candidates=candidates, mode=args.mode, **inputs, **settings
        )
    shown = [{'image': image} for image in args.image] or [{} for _ in results]
    for name, values in inputs.items():
        for item, value in zip(shown, values):
            item[name] = value
    results = [{**item, **result} for item, result in zip(shown, results)]
    if args.task in ('grounding', 'detection'):
        for i, result in enumerate(results):
            if 'error' in result:
                continue
            path = _drawing_path(args.draw, i, len(results))
            found = result['boxes'] if args.task == 'detection' else [result['box']]
            draw_boxes(api.read_image(args.image[i]), found, result.get('labels', [result.get('text', '')])).save(path)
            result['drawing'] = path
    if args.task == 'text_to_image':
        stem, extension = os.path.splitext(args.draw)
        for i, result in enumerate(results):
            if 'error' in result:
                continue
            result['drawings'] = [f'{stem}_{i}_{j}{extension or ".png"}' for j in range(len(result['images']))]
            for image, path in zip(result.pop('images'), result['drawings']):
                Image.fromarray(image).save(path)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    print(json.dumps(predict(parse_args(argv)), indent=2))


if __name__ == '__main__':
    main(sys.argv[1:])
