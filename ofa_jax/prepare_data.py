"""Turns the annotation files people have into the JSONL a finetuning run reads (`format='jsonl'`), one record a line.

    python -m ofa_jax.prepare_data coco_captions --annotations captions_train2014.json --images train2014/ \
        --out data/caption_train.jsonl [--per_image]
    python -m ofa_jax.prepare_data vqa --questions v2_OpenEnded_mscoco_train2014_questions.json \
        --annotations v2_mscoco_train2014_annotations.json --images train2014/ --out data/vqa_train.jsonl
    python -m ofa_jax.prepare_data vqa --questions v2_OpenEnded_mscoco_test-dev2015_questions.json \
        --images test2015/ --out data/vqa_test-dev.jsonl          # no answers: for the evaluation server
    python -m ofa_jax.prepare_data refcoco --refs 'refs(unc).p' --instances instances.json --images train2014/ \
        --split train --out data/refcoco_train.jsonl
    python -m ofa_jax.prepare_data index vqa_train.tsv gs://bucket/caption_train.tsv ...

Image paths are written relative to the JSONL file's folder, where `ofa_jax.data.sources.JsonlSource` looks for
them. COCO captions give a record per caption (a training set) or, with --per_image, a record per image with every
caption as a reference (an evaluation set). VQA v2 gives a record per question whose answers carry the VQA accuracy
each would score (`metrics.vqa_answer_confidences`); without --annotations (test-dev, test-std) the questions have
no answers, and `ofa_jax.evaluate` writes the evaluation server's result file of them. RefCOCO's `refs(*).p` is read
with the project's safe unpickler (nothing in it runs); a JSON export of the same list works too. Each command prints
how many records it wrote and what it skipped, and why. `index` writes the line index of TSV or JSONL files
(FILE.index.npz, beside each, local or in a bucket) that training otherwise builds at its first start, reading each
file end to end once.
"""

import argparse
import collections
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from ofa_jax import metrics, torch_pickle
from ofa_jax.data import sources


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except OSError as error:
        raise ValueError(f'{path}: cannot be read: {error.strerror}') from None
    except ValueError as error:
        raise ValueError(f'{path}: is not JSON: {error}') from None


def _require(data: Any, keys: Sequence[str], path: str) -> None:
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f'{path}: missing {missing}; is it the right file?')


def coco_captions(annotations: str, per_image: bool = False) -> Iterator[dict[str, Any]]:
    """Records of a COCO captions file (images, annotations): 'image' the file name, 'caption', 'references'."""
    data = _read_json(annotations)
    _require(data, ('images', 'annotations'), annotations)
    files = {image['id']: image['file_name'] for image in data['images']}
    captions = collections.defaultdict(list)
    for annotation in data['annotations']:
        captions[annotation['image_id']].append((annotation['id'], annotation['caption'].strip()))
    for image_id, pairs in captions.items():
        if image_id not in files:
            yield {'_skip': 'caption_of_unknown_image'}
            continue
        references = [caption for _, caption in pairs]
        if per_image:
            yield {'id': str(image_id), 'image': files[image_id], 'caption': references[0], 'references': references}
        else:
            for annotation_id, caption in pairs:
                yield {'id': str(annotation_id), 'image': files[image_id], 'caption': caption, 'references': references}


def vqa(questions: str, annotations: str | None) -> Iterator[dict[str, Any]]:
    """Records of VQA v2's questions and annotations files: 'question', 'answers' {answer: VQA accuracy}, 'image'
    COCO's file name (COCO_<data_subtype>_<12-digit image id>.jpg). Without annotations (test-dev, test-std) the
    records have no answers: evaluation answers them and writes the evaluation server's result file."""
    asked = _read_json(questions)
    _require(asked, ('questions',), questions)
    subtype = asked.get('data_subtype', 'train2014')
    if annotations is None:
        for question in asked['questions']:
            yield {
                'id': str(question['question_id']),
                'image': f'COCO_{subtype}_{question["image_id"]:012d}.jpg',
                'question': question['question'],
            }
        return
    answered = _read_json(annotations)
    _require(answered, ('annotations',), annotations)
    by_question = {a['question_id']: a for a in answered['annotations']}
    for question in asked['questions']:
        annotation = by_question.get(question['question_id'])
        if annotation is None:
            yield {'_skip': 'question_without_answers'}
            continue
        given = [a['answer'] for a in annotation.get('answers', []) if isinstance(a.get('answer'), str)]
        if not given:
            yield {'_skip': 'no_answers'}
            continue
        yield {
            'id': str(question['question_id']),
            'image': f'COCO_{subtype}_{question["image_id"]:012d}.jpg',
            'question': question['question'],
            'answers': metrics.vqa_answer_confidences(given),
        }


def refcoco(refs: str, instances: str, split: str) -> Iterator[dict[str, Any]]:
    """Records of RefCOCO(+/g): one per referring sentence of the split, 'text' and 'region' [x0, y0, x1, y1]
    (COCO's [x, y, w, h] box of the referred object)."""
    entries = _read_json(refs) if refs.endswith('.json') else torch_pickle.load_pickle(refs)
    if not isinstance(entries, list):
        raise ValueError(f'{refs}: expected a list of refs, got {type(entries).__name__}')
    data = _read_json(instances)
    _require(data, ('images', 'annotations'), instances)
    files = {image['id']: image['file_name'] for image in data['images']}
    boxes = {annotation['id']: annotation['bbox'] for annotation in data['annotations']}
    for ref in entries:
        if not isinstance(ref, dict):  # e.g. a pickled object, which the safe unpickler leaves inert
            yield {'_skip': 'not_a_ref'}
            continue
        if ref.get('split') != split:
            continue
        box, file_name = boxes.get(ref.get('ann_id')), files.get(ref.get('image_id'))
        if box is None or file_name is None:
            yield {'_skip': 'ref_of_unknown_object'}
            continue
        x, y, w, h = (float(v) for v in box)
        for sentence in ref.get('sentences', []):
            yield {
                'id': f'{ref.get("ref_id")}-{sentence.get("sent_id")}',
                'image': file_name,
                'text': sentence.get('sent', ''),
                'region': [x, y, x + w, y + h],
            }


def write(records: Iterator[dict[str, Any]], images: str, out: str) -> dict[str, Any]:
    """Writes the records whose image exists (paths made relative to `out`'s folder); returns the counts."""
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    written, skipped = 0, collections.Counter()
    with open(out, 'w', encoding='utf-8') as f:
        for record in records:
            if '_skip' in record:
                skipped[record['_skip']] += 1
                continue
            path = os.path.join(images, record['image'])
            if not os.path.isfile(path):
                skipped['missing_image'] += 1
                continue
            record['image'] = os.path.relpath(os.path.abspath(path), folder)
            f.write(json.dumps(record) + '\n')
            written += 1
    return {'written': written, 'skipped': dict(skipped), 'out': out}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='python -m ofa_jax.prepare_data', description=__doc__.split('\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    index = commands.add_parser('index', help='the line index of TSV or JSONL files, kept beside each')
    index.add_argument('files', nargs='+')
    for name, help_text in (
        ('coco_captions', 'a COCO captions file'),
        ('vqa', 'VQA v2 questions and annotations'),
        ('refcoco', 'RefCOCO refs and COCO instances'),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument('--images', required=True, help='the folder of the images the annotations name')
        command.add_argument('--out', required=True, help='the JSONL file to write')
        if name == 'coco_captions':
            command.add_argument('--annotations', required=True)
            command.add_argument('--per_image', action='store_true', help='one record per image (evaluation)')
        elif name == 'vqa':
            command.add_argument('--questions', required=True)
            command.add_argument('--annotations', help='left out for test-dev / test-std: questions without answers')
        else:
            command.add_argument('--refs', required=True, help='refs(unc).p (or a JSON export of it)')
            command.add_argument('--instances', required=True, help="COCO's instances.json of the same images")
            command.add_argument('--split', default='train', help='train, val, testA, testB, test')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if args.command == 'index':
            for path in args.files:
                offsets, kept = sources.cached_line_offsets(path)
                index = str(sources.index_path(path)) if kept else None  # None: its folder cannot be written
                print(json.dumps({'file': path, 'rows': len(offsets) - 1, 'index': index}))
            return
        if args.command == 'coco_captions':
            records = coco_captions(args.annotations, args.per_image)
        elif args.command == 'vqa':
            records = vqa(args.questions, args.annotations)
        else:
            records = refcoco(args.refs, args.instances, args.split)
        print(json.dumps(write(records, args.images, args.out)))
    except (ValueError, OSError) as error:
        raise SystemExit(f'prepare_data {args.command}: {error}') from None


if __name__ == '__main__':
    main(sys.argv[1:])
