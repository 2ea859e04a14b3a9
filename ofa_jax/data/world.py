"""The embedded synthetic world: the default data, needing no download.

Scene `index` of a World is a picture of one to three coloured shapes at known places, drawn deterministically
from (seed, index). Everything OFA's tasks need follows from the scene exactly: a caption, a referring expression with
its box, a question with its answer, detection labels with boxes and a descriptive passage, so a small model can
learn every task and be scored on it.
"""

import dataclasses
from typing import Any

import numpy as np

COLORS = {'red': (220, 40, 40), 'green': (40, 170, 60), 'blue': (40, 80, 220), 'yellow': (230, 200, 30)}
SHAPES = ('square', 'circle', 'triangle')
NUMBERS = ('zero', 'one', 'two', 'three')
BACKGROUND = (128, 128, 128)


@dataclasses.dataclass(frozen=True)
class Shape:
    color: str
    kind: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels

    @property
    def label(self) -> str:
        return f'{self.color} {self.kind}'


def scene(seed: int, index: int, image_size: int) -> list[Shape]:
    """One to three shapes of distinct colour-and-kind, each in its own quadrant, ordered left to right."""
    rng = np.random.default_rng([seed, index])
    count = int(rng.integers(1, 4))
    pairs = [(c, k) for c in COLORS for k in SHAPES]
    chosen = rng.choice(len(pairs), count, replace=False)
    quadrants = rng.choice(4, count, replace=False)
    half = image_size / 2
    shapes = []
    for pair, quadrant in zip(chosen, quadrants):
        side = rng.uniform(0.45, 0.8) * half
        x0 = (quadrant % 2) * half + rng.uniform(0, half - side)
        y0 = (quadrant // 2) * half + rng.uniform(0, half - side)
        shapes.append(Shape(*pairs[pair], (x0, y0, x0 + side, y0 + side)))
    return sorted(shapes, key=lambda s: (s.box[0], s.box[1]))


def draw(shapes: list[Shape], image_size: int) -> np.ndarray:
    """uint8 [image_size, image_size, 3]."""
    image = np.empty((image_size, image_size, 3), np.uint8)
    image[:] = BACKGROUND
    y, x = np.mgrid[:image_size, :image_size] + 0.5
    for shape in shapes:
        x0, y0, x1, y1 = shape.box
        if shape.kind == 'square':
            inside = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
        elif shape.kind == 'circle':
            inside = (x - (x0 + x1) / 2) ** 2 + (y - (y0 + y1) / 2) ** 2 < ((x1 - x0) / 2) ** 2
        else:  # triangle with its apex at the top centre and its base along the box bottom
            rel = (y - y0) / (y1 - y0)
            inside = (y >= y0) & (y < y1) & (np.abs(x - (x0 + x1) / 2) <= rel * (x1 - x0) / 2)
        image[inside] = COLORS[shape.color]
    return image


def colors_drawn(image: np.ndarray, min_fraction: float = 0.01, tolerance: int = 40) -> set[str]:
    """The world's colours covering at least min_fraction of uint8 image [h, w, 3] (every channel within
    tolerance): what a drawing of a scene shows, to compare with the colours its caption names."""
    pixels = image.reshape(-1, 3).astype(np.int32)
    return {
        name
        for name, rgb in COLORS.items()
        if np.mean(np.all(np.abs(pixels - np.array(rgb)) <= tolerance, axis=1)) >= min_fraction
    }


def caption(shapes: list[Shape]) -> str:
    names = [f'a {s.label}' for s in shapes]
    return names[0] if len(names) == 1 else ', '.join(names[:-1]) + ' and ' + names[-1]


def _where(shape: Shape, image_size: int) -> str:
    cx, cy = (shape.box[0] + shape.box[2]) / 2, (shape.box[1] + shape.box[3]) / 2
    return f'{"top" if cy < image_size / 2 else "bottom"} {"left" if cx < image_size / 2 else "right"}'


def question(shapes: list[Shape], index: int) -> tuple[str, str]:
    """A question about the scene and its answer. The kind of question cycles with the index and what it asks about
    with index // 3, so that each kind asks about every shape of a scene and every colour and kind."""
    kind, pick = index % 3, index // 3
    if kind == 0:
        target = shapes[pick % len(shapes)]
        alike = sum(s.kind == target.kind for s in shapes)
        return f'what color is the {target.kind}?', target.color if alike == 1 else 'many'
    if kind == 1:
        return 'how many shapes are there?', NUMBERS[len(shapes)]
    color, shape_kind = list(COLORS)[pick % len(COLORS)], SHAPES[pick // len(COLORS) % len(SHAPES)]
    present = any(s.color == color and s.kind == shape_kind for s in shapes)
    return f'is there a {color} {shape_kind}?', 'yes' if present else 'no'


def passage(shapes: list[Shape], image_size: int) -> str:
    parts = [f'the {s.label} is at the {_where(s, image_size)}' for s in shapes]
    count = 'is one shape' if len(shapes) == 1 else f'are {NUMBERS[len(shapes)]} shapes'
    return f'there {count} . ' + ' , '.join(parts) + ' .'


@dataclasses.dataclass(frozen=True)
class World:
    """A random-access source of scene records (see ofa_jax.data.sources for the record schema)."""

    size: int = 2000
    seed: int = 0
    image_size: int = 64

    def __len__(self) -> int:
        return self.size

    def shapes(self, index: int) -> list[Shape]:
        return scene(self.seed, index, self.image_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.size:
            raise IndexError(f'scene {index} outside a world of {self.size}')
        shapes = self.shapes(index)
        referred = shapes[(index // 3) % len(shapes)]
        q, answer = question(shapes, index)
        return {
            'id': f'world-{self.seed}-{index}',
            'source': 'world',
            'record': index,
            'image': draw(shapes, self.image_size),
            'caption': caption(shapes),
            'text': f'the {referred.label}',
            'region': np.array(referred.box, np.float32),
            'question': q,
            'answers': {answer: 1.0},
            'boxes': np.array([s.box for s in shapes], np.float32),
            'labels': [s.label for s in shapes],
            'passage': passage(shapes, self.image_size),
        }


@dataclasses.dataclass(frozen=True)
class WorldText:
    """The world's passages alone, as a plain-text corpus (records with 'text')."""

    world: World

    def __len__(self) -> int:
        return len(self.world)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.world[index]
        return {'id': record['id'], 'source': 'world_text', 'record': index, 'text': record['passage']}
