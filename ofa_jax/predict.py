"""Answers one task on images (or texts) from the command line, printing JSON.

    python -m ofa_jax.predict --checkpoint DIR --task caption --image cat.jpg
    python -m ofa_jax.predict --checkpoint DIR --task vqa --image cat.jpg --text "what color is the cat" \
        [--answers answers.txt]
    python -m ofa_jax.predict --checkpoint DIR --task ground --image cat.jpg --text "the cat" --draw boxes.png

    python -m ofa_jax.predict --checkpoint DIR --task text2image --text "a red circle" --vqgan VQGAN_DIR \
        --samples 4 --draw drawing.png

--image and --text repeat, one --text per --image. --answers is a file with one candidate per line (VQA answers,
classify labels). For ground and detect, --draw writes the image with the predicted boxes (with several images,
`_<index>` goes before the extension); for text2image it names the drawings (`_<text>_<sample>` added).
"""
import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
from PIL import Image, ImageDraw

from ofa_jax import api, decode
from ofa_jax.vqgan import VQGANTokenizer

VISION_TASKS = ('caption', 'vqa', 'ground', 'entail', 'classify', 'detect')
TEXT_TASKS = ('infill', 'summarize', 'text2image')
NEEDS_TEXT = ('vqa', 'ground', 'entail')


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


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='python -m ofa_jax.predict', description=__doc__.split('\n')[0])
    parser.add_argument('--checkpoint', required=True, help='a save_model directory or a training workdir')
    parser.add_argument('--task', required=True, choices=VISION_TASKS + TEXT_TASKS)
    parser.add_argument('--image', action='append', default=[], help='image file (repeatable)')
    parser.add_argument('--text', action='append', default=[],
                        help='question (vqa), referring text (ground), hypothesis (entail), or the input text of '
                             'infill and summarize (repeatable)')
    parser.add_argument('--premise', action='append', default=None, help='entail: a text premise per image')
    parser.add_argument('--answers', help='file of candidates, one per line: VQA answers or classify labels')
    parser.add_argument('--mode', choices=('all', 'trie'), default='all',
                        help='vqa with --answers: score every candidate, or beam search inside their trie')
    parser.add_argument('--draw', default='prediction.png', help='ground/detect: where the drawing goes')
    parser.add_argument('--image_size', type=int, help='resize images to this square side (default: OFA\'s)')
    parser.add_argument('--beam_size', type=int, help='override the task\'s beam size')
    parser.add_argument('--max_length', type=int, help='override the task\'s maximum output length')
    parser.add_argument('--batch_size', type=int, default=16)
    parser.add_argument('--vqgan', help='text2image: a converted VQGAN directory (python -m ofa_jax.vqgan convert)')
    parser.add_argument('--samples', type=int, default=1, help='text2image: images per text')
    parser.add_argument('--seed', type=int, default=0, help='text2image: the sampling seed')
    parser.add_argument('--prompt_type', choices=decode.PROMPT_TYPES, default='none',
                        help='what precedes the answer in the decoder, as the model was finetuned')
    args = parser.parse_args(argv)
    if args.task in VISION_TASKS and not args.image:
        parser.error(f'--task {args.task} needs at least one --image')
    if args.task in TEXT_TASKS and not args.text:
        parser.error(f'--task {args.task} needs at least one --text')
    if args.task in NEEDS_TEXT and len(args.text) != len(args.image):
        parser.error(f'--task {args.task} needs one --text per --image, got {len(args.text)} for '
                     f'{len(args.image)} images')
    if args.task == 'text2image' and not args.vqgan:
        parser.error('--task text2image needs --vqgan (the image tokenizer that draws the codes)')
    if args.task == 'classify' and not args.answers:
        parser.error('--task classify needs --answers (the candidate labels)')
    return args


def predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The results of the task the arguments name, each with its inputs ('image', 'text') added."""
    kwargs = {'batch_size': args.batch_size, 'prompt_type': args.prompt_type}
    if args.image_size:
        kwargs['image_size'] = args.image_size
    predictor = api.Predictor.load(args.checkpoint, **kwargs)
    settings = {k: v for k, v in (('beam_size', args.beam_size), ('max_length', args.max_length)) if v}
    candidates = _read_lines(args.answers) if args.answers else None
    images, texts = args.image, args.text
    if args.task == 'caption':
        results = predictor.caption(images, **settings)
    elif args.task == 'vqa':
        results = predictor.vqa(images, texts, candidates, mode=args.mode, **settings)
    elif args.task == 'ground':
        results = predictor.ground(images, texts, **settings)
    elif args.task == 'entail':
        results = predictor.entail(images, texts, args.premise)
    elif args.task == 'classify':
        results = predictor.classify(images, candidates)
    elif args.task == 'detect':
        results = predictor.detect(images, **settings)
    elif args.task == 'infill':
        results = predictor.infill(texts, **settings)
    elif args.task == 'summarize':
        results = predictor.summarize(texts, **settings)
    else:
        tokenizer = VQGANTokenizer.load(args.vqgan)
        results = predictor.text_to_image(texts, tokenizer, samples=args.samples, seed=args.seed)
    inputs = [{'image': image} for image in images] or [{} for _ in texts]
    for given, text in zip(inputs, texts):
        given['text'] = text
    results = [{**given, **result} for given, result in zip(inputs, results)]
    if args.task in ('ground', 'detect'):
        for i, result in enumerate(results):
            if 'error' in result:
                continue
            path = _drawing_path(args.draw, i, len(results))
            found = result['boxes'] if args.task == 'detect' else [result['box']]
            draw_boxes(api.read_image(images[i]), found, result.get('labels', [result.get('text', '')])).save(path)
            result['drawing'] = path
    if args.task == 'text2image':
        stem, extension = os.path.splitext(args.draw)
        for i, result in enumerate(results):
            if 'error' in result:
                continue
            result['drawings'] = [f'{stem}_{i}_{j}{extension or ".png"}' for j in range(len(result['images']))]
            for image, path in zip(result.pop('images'), result['drawings']):
                Image.fromarray(image).save(path)
    return results


def main(argv: Optional[Sequence[str]] = None) -> None:
    print(json.dumps(predict(parse_args(argv)), indent=2))


if __name__ == '__main__':
    main(sys.argv[1:])
