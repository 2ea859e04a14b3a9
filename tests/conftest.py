"""What the tests share: one way to load a shipped config, one shrunk demo config, a stand-in for a TFDS split, and
the markers.

Markers (registered in pyproject.toml): `slow` (whole training runs), `parity` (compares with the PyTorch reference)
and `multihost` (several processes). The quick loop is `bash tests/run.sh -m "not slow"`.
"""

import base64
import importlib.util
import io
import os
import pathlib
import tempfile
import types
from typing import Any

import ml_collections

ROOT = pathlib.Path(__file__).resolve().parents[1]

# One persistent compilation cache for the test processes and every process they start (set before jax is imported):
# the many runs of the same small train step compile once. Its keys hold the program and the library versions.
os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR', os.path.join(tempfile.gettempdir(), f'ofa-jax-tests-{os.getuid()}', 'compilation')
)


def config_module(name: str) -> types.ModuleType:
    """The module of configs/NAME.py."""
    spec = importlib.util.spec_from_file_location(f'configs_{name}', ROOT / 'configs' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """configs/NAME.py's config, as `--config configs/NAME.py[:ARG]` gives it."""
    module = config_module(name)
    return module.get_config() if arg is None else module.get_config(arg)


# The demo's command line shrunk the same way, for tests that run `python -m ofa_jax.train` as a user would: a long
# run (for a signal to interrupt) logging every step, its only checkpoint the one a signal asks for.
SMALL_DEMO_FLAGS = (
    '--config.total_steps=500',
    '--config.log_every=1',
    '--config.checkpoint_every=1000',
    '--config.data.image_size=32',
    '--config.data.world_size=100',
    '--config.batch_size=8',
)


def small_config(variant: str = 'pretrain', **changes: Any) -> ml_collections.ConfigDict:
    """The demo config shrunk for tests: nano at 32 pixels on 200 scenes, batch 8, no dropout and frozen batch norm
    (nothing depends on how a batch is split), checkpoints every 2 steps. `changes` set top-level keys;
    `model_overrides` and `data` dicts update those sections."""
    config = load_config('demo', variant)
    config.model_overrides = dict(dropout=0.0, code_image_size=16, freeze_batch_norm=True)
    config.data.update(dict(image_size=32, world_size=200, max_source_length=24, max_target_length=16))
    config.update(dict(batch_size=8, total_steps=4, log_every=1, checkpoint_every=2, warmup_steps=1, warmup_ratio=0.0))
    config.model_overrides.update(changes.pop('model_overrides', {}))
    config.data.update(changes.pop('data', {}))
    config.update(changes)
    return config


class FakeSplit:
    """Stands for tfds' array-record data source: random access to decoded examples, with the dataset's info."""

    def __init__(self, examples: list, features: Any):
        self.examples = examples
        self.dataset_info = types.SimpleNamespace(features=features)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.examples[index]


def png_base64(image: Any) -> str:
    """An image array as the base64 of its PNG, as OFA's TSV files hold images."""
    from PIL import Image  # noqa: PLC0415 - only the tests writing TSV files need it

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format='PNG')
    return base64.b64encode(buffer.getvalue()).decode()


def ofa_pretraining_files(folder: pathlib.Path, world: Any) -> dict[str, pathlib.Path]:
    """OFA's four pretraining TSV files from the first 9 scenes of `world` (one row of a type OFA lacks, which is
    dropped), the image file with 16 codes: {role: path}."""
    image = [png_base64(world[i]['image']) for i in range(9)]
    x0, y0, x1, y1 = world[2]['region']
    vl_rows = [  # uniq-id, image, caption, question, refs, gt objects, dataset, type
        ['0', image[0], world[0]['caption'], '', '', '', 'coco', 'caption'],
        ['1', image[1], '', world[1]['question'], '0.6|!+green&&0.9|!+blue', '', 'vqa', 'qa'],
        ['2', image[2], world[2]['text'], '', f'{x0},{y0},{x1},{y1}', '', 'refcoco', 'visual_grounding'],
        ['3', image[3], 'a caption', '', '', '', 'coco', 'ocr'],  # a type OFA does not have: counted, dropped
        ['4', image[4], world[4]['caption'], '', '', '', 'cc12m', 'caption'],
        ['5', image[5], '', 'what is it?', '1.0|!+red', '', 'vqa', 'qa'],
        ['6', image[6], world[6]['caption'], '', '', '', 'coco', 'caption'],
        ['7', image[7], '', 'what is it?', '1.0|!+red', '', 'vqa', 'qa'],
        ['8', image[8], world[8]['caption'], '', '', '', 'coco', 'caption'],
    ]
    paths = dict(
        vision_language=folder / 'vl.tsv',
        text=folder / 'text.tsv',
        image=folder / 'image.tsv',
        detection=folder / 'det.tsv',
    )
    paths['vision_language'].write_text('\n'.join('\t'.join(row) for row in vl_rows) + '\n')
    paths['text'].write_text('0\tthe quick brown fox jumps over the lazy dog near the river bank\n')
    codes = ' '.join(str(i) for i in range(16))
    paths['image'].write_text(f'0\t{image[0]}\t{codes}\n')
    paths['detection'].write_text(f'0\t{image[2]}\t{x0},{y0},{x1},{y1},3,red square\n')
    return paths
