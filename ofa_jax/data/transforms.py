"""OFA's image transforms on numpy/PIL, with boxes that follow every geometric change.

An example travels as a `Sample`: the image, its boxes, a keep-mask and the affine map from the original image's
pixels to the current ones. Every transform is a callable `(sample, rng) -> sample`; randomness comes only from the
numpy Generator passed in, so a pipeline is reproducible from its seed. `Compose` chains them.

Coordinates are continuous pixel coordinates: the pixel in column i covers x in [i, i + 1), so a box (x0, y0, x1, y1)
that covers columns 10..19 has x0 = 10, x1 = 20, and resizing by s maps x to x * s exactly (OFA's resize ratio).

What OFA (OFA-Sys/OFA) does, and the pipelines below reproduce:
- Finetuning (caption, VQA, SNLI-VE: data/mm_data/*_dataset.py) resizes to a patch_image_size square, bicubic, with
  no augmentation. RefCOCO's `RandomResize([p], max_size=p)` caps both sides at p after setting the shorter to p,
  which is the same square resize.
- Pretraining image-text pairs (captions, VQA, matching; data/pretrain_data/unify_dataset.py): shorter side to a
  random size in [patch_image_size, 480], both sides capped at 672, centre crop to patch_image_size, RandomAugment
  (N=2, M=7, ten ops), normalize. These examples carry no boxes.
- Pretraining grounding: the same random resize, then a crop centred on the referred box (boxes clamped, none
  deleted), normalize. No flip: the referring expressions say "left" and "right", and a flip would make them lie.
  RandomHorizontalFlip appears only in detection pretraining.
- Normalization (mean = std = 0.5, so pixels land in [-1, 1]) is `normalize`, applied when a batch is built
  (`ofa_jax.data.pipeline.to_batch`) rather than here: images cross from the data workers to the trainer as uint8,
  a quarter of the bytes of float32. Boxes are quantized later against max_image_size 512 (see
  `ofa_jax.data.boxes`), not against the patch size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

ImageLike = Image.Image | np.ndarray
Transform = Callable[['Sample', np.random.Generator], 'Sample']

# Gray that geometric augmentations paint where no source pixel exists (OFA's replace value).
FILL = (128, 128, 128)
# The augmentations OFA's pretraining draws from for image-text pairs (unify_dataset.py).
OFA_AUGMENTS = (
    'Identity',
    'AutoContrast',
    'Equalize',
    'Brightness',
    'Sharpness',
    'ShearX',
    'ShearY',
    'TranslateX',
    'TranslateY',
    'Rotate',
)
GEOMETRIC_AUGMENTS = frozenset({'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate'})
# For boxed examples whose boxes must stay tight: under shear and rotation a box can only enclose the moved box.
PHOTOMETRIC_AUGMENTS = tuple(op for op in OFA_AUGMENTS if op not in GEOMETRIC_AUGMENTS)


def _translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _scaling(sx: float, sy: float) -> np.ndarray:
    return np.diag([sx, sy, 1.0])


def warp_boxes(
    boxes: np.ndarray, matrix: np.ndarray, width: float | None = None, height: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [N, 4] mapped by an affine `matrix` [3, 3]: the axis-aligned box around the four mapped corners.

    With `width` and `height` the result is clipped to the image [0, width] x [0, height]. Returns the boxes [N, 4]
    float32 and `valid` [N] bool: False where a box has no area left (outside the image, or zero-sized).
    """
    b = boxes.astype(np.float64).reshape(-1, 4)
    corners = b[:, [0, 1, 2, 1, 0, 3, 2, 3]].reshape(-1, 4, 2)
    mapped = corners @ matrix[:2, :2].T + matrix[:2, 2]
    out = np.concatenate([mapped.min(axis=1), mapped.max(axis=1)], axis=1)
    if width is not None and height is not None:
        out = np.clip(out, 0.0, [width, height, width, height])
    valid = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out.astype(np.float32), valid


# eq=False: samples hold arrays, and identity is the only comparison that makes sense for them.
@dataclasses.dataclass(frozen=True, eq=False)
class Sample:
    """An image with its boxes, as the transforms leave it.

    image: [H, W, 3] uint8 (HWC, the model's NHWC layout per example; `normalize` makes the model's floats).
    boxes: [N, 4] float32 x0, y0, x1, y1 in pixels of `image`, always clipped to it.
    keep: [N] bool; False once a box lost all its area (cropped away, pushed off the image, or zero-sized on
        input). Such boxes stay in place so indices still match labels and text; `drop_degenerate` removes them.
    labels: [N] per-box labels, or None.
    matrix: [3, 3] float64 affine from original-image pixels to pixels of `image`.
    source_boxes: [N, 4] float32, the boxes in original-image pixels (clipped to that image).
    """

    image: np.ndarray
    boxes: np.ndarray
    keep: np.ndarray
    labels: np.ndarray | None
    matrix: np.ndarray
    source_boxes: np.ndarray

    @classmethod
    def from_image(
        cls,
        image: ImageLike,
        boxes: np.ndarray | Sequence[Sequence[float]] | None = None,
        labels: np.ndarray | Sequence | None = None,
    ) -> Sample:
        """A sample from a PIL image (converted to RGB, as OFA does) or an [H, W, 3] uint8 array, boxes [N, 4]."""
        array = np.asarray(image.convert('RGB')) if isinstance(image, Image.Image) else np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f'expected an [H, W, 3] uint8 image, got {array.dtype} {array.shape}')
        box_array = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32)
        if box_array.ndim != 2 or box_array.shape[1] != 4:
            raise ValueError(f'expected boxes of shape [N, 4], got {box_array.shape}')
        if not np.all(np.isfinite(box_array)):
            raise ValueError('box coordinates must be finite')
        if np.any(box_array[:, 2:] < box_array[:, :2]):
            raise ValueError('boxes must be x0, y0, x1, y1 with x1 >= x0 and y1 >= y0')
        label_array = None if labels is None else np.asarray(labels)
        if label_array is not None and len(label_array) != len(box_array):
            raise ValueError(f'{len(label_array)} labels for {len(box_array)} boxes')
        height, width = array.shape[:2]
        clipped, valid = warp_boxes(box_array, np.eye(3), width, height)
        return cls(array, clipped, valid, label_array, np.eye(3), clipped)

    @property
    def height(self) -> int:
        return self.image.shape[0]

    @property
    def width(self) -> int:
        return self.image.shape[1]

    def _axis_aligned(self) -> None:
        m = self.matrix
        if m[0, 1] != 0 or m[1, 0] != 0 or m[0, 0] <= 0 or m[1, 1] <= 0:
            raise ValueError('the image was flipped, sheared or rotated; map boxes back with to_original')

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy) with current = original * scale + offset; the resize ratio `boxes.dequantize` takes."""
        self._axis_aligned()
        return float(self.matrix[0, 0]), float(self.matrix[1, 1])

    @property
    def offset(self) -> tuple[float, float]:
        """(tx, ty) in current pixels: where the original image's origin landed (negative after a crop)."""
        self._axis_aligned()
        return float(self.matrix[0, 2]), float(self.matrix[1, 2])

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes [N, 4] in current pixels mapped back to the original image's pixels, [N, 4] float32."""
        return warp_boxes(np.asarray(boxes), np.linalg.inv(self.matrix))[0]

    def warped(self, image: np.ndarray, matrix: np.ndarray) -> Sample:
        """This sample with `image` [H', W', 3], the result of mapping the current one by `matrix` [3, 3]."""
        height, width = image.shape[:2]
        total = matrix @ self.matrix
        # Both contain the object: the step-by-step box knows what earlier steps pushed off their images, and the
        # source box mapped through the whole chain stays tight where rotations and shears compound.
        stepwise, _ = warp_boxes(self.boxes, matrix, width, height)
        direct, _ = warp_boxes(self.source_boxes, total, width, height)
        boxes = np.concatenate(
            [np.maximum(stepwise[:, :2], direct[:, :2]), np.minimum(stepwise[:, 2:], direct[:, 2:])], axis=1
        )
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return dataclasses.replace(self, image=image, boxes=boxes, keep=self.keep & valid, matrix=total)


def drop_degenerate(sample: Sample) -> tuple[Sample, int]:
    """The sample without the boxes (and labels) whose keep flag is False, and how many were dropped."""
    keep = sample.keep
    labels = None if sample.labels is None else sample.labels[keep]
    kept = dataclasses.replace(
        sample, boxes=sample.boxes[keep], keep=keep[keep], labels=labels, source_boxes=sample.source_boxes[keep]
    )
    return kept, int(np.count_nonzero(~keep))


def _uint8_image(sample: Sample) -> np.ndarray:
    if sample.image.dtype != np.uint8:
        raise ValueError(f'the transforms take uint8 images, got {sample.image.dtype}')
    return sample.image


def resize_image(image: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Bicubic resize (PIL, as OFA) of [H, W, 3] uint8 to [height, width, 3]; returns it and its matrix [3, 3]."""
    if width < 1 or height < 1:
        raise ValueError(f'cannot resize to {width}x{height}')
    h, w = image.shape[:2]
    out = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))
    return out, _scaling(width / w, height / h)


def crop_image(image: np.ndarray, left: int, top: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The [height, width, 3] window at (left, top) of an [H, W, 3] image, zeros where it leaves the image (as
    PIL's crop); returns it and its matrix [3, 3]."""
    h, w = image.shape[:2]
    out = np.zeros((height, width, image.shape[2]), image.dtype)
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + width, w), min(top + height, h)
    if x1 > x0 and y1 > y0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
    return out, _translation(-left, -top)


def ofa_resize_shape(width: int, height: int, size: int, max_size: int | None) -> tuple[int, int]:
    """(width, height) of OFA's resize: shorter side to `size`, longer side scaled and truncated to an int, then each
    side capped at `max_size` on its own. The cap distorts the aspect ratio of elongated images; that is OFA's
    behaviour, and the per-axis scale keeps boxes exact."""
    if width < height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    if max_size is not None:
        new_w, new_h = min(new_w, max_size), min(new_h, max_size)
    return new_w, new_h


@dataclasses.dataclass(frozen=True)
class Resize:
    """Bicubic resize to a fixed size: an int for a square, or (height, width). OFA's finetuning resize."""

    size: int | tuple[int, int]

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        height, width = (self.size, self.size) if isinstance(self.size, int) else self.size
        return sample.warped(*resize_image(_uint8_image(sample), width, height))


@dataclasses.dataclass(frozen=True)
class ResizeMax:
    """Bicubic resize keeping the aspect ratio, the longer side becoming `max_size`."""

    max_size: int

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        ratio = self.max_size / max(sample.width, sample.height)
        width, height = max(1, round(sample.width * ratio)), max(1, round(sample.height * ratio))
        return sample.warped(*resize_image(_uint8_image(sample), width, height))


@dataclasses.dataclass(frozen=True)
class RandomResize:
    """OFA's RandomResize: pick a size uniformly from `sizes`, then resize as `ofa_resize_shape`."""

    sizes: Sequence[int]
    max_size: int | None = None

    def __post_init__(self) -> None:
        if len(self.sizes) == 0:
            raise ValueError('RandomResize needs at least one size')

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        size = int(self.sizes[rng.integers(len(self.sizes))])
        width, height = ofa_resize_shape(sample.width, sample.height, size, self.max_size)
        return sample.warped(*resize_image(_uint8_image(sample), width, height))


@dataclasses.dataclass(frozen=True)
class CenterCrop:
    """Centre crop to `size` (int for a square, or (height, width)), offsets rounded as torchvision's CenterCrop;
    an image smaller than the crop is padded with zeros around it. Boxes cut away are flagged in `keep`."""

    size: int | tuple[int, int]

    @staticmethod
    def _start(extent: int, crop: int) -> int:
        return int(round((extent - crop) / 2)) if extent >= crop else -((crop - extent) // 2)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        height, width = (self.size, self.size) if isinstance(self.size, int) else self.size
        left, top = self._start(sample.width, width), self._start(sample.height, height)
        return sample.warped(*crop_image(_uint8_image(sample), left, top, width, height))


@dataclasses.dataclass(frozen=True)
class ObjectCenterCrop:
    """Crop of `size` (int or (height, width)) centred on box `index` (the referred object), shifted to stay inside
    the image where it can, as OFA's grounding pretraining crops. Boxes are clipped, not deleted; `keep` flags any
    left without area.

    OFA shifts the boxes by the unrounded offset while PIL rounds the image's crop window, a mismatch of up to half
    a pixel; here the offset is rounded once and used for both.
    """

    size: int | tuple[int, int]
    index: int = 0

    @staticmethod
    def _start(center: float, extent: int, crop: int) -> int:
        # Centre the crop, slide it back inside when it would overrun the far edge, then clamp at the near edge.
        return int(round(max(center - crop / 2 + min(extent - center - crop / 2, 0.0), 0.0)))

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if len(sample.boxes) <= self.index:
            raise ValueError(f'ObjectCenterCrop centres on box {self.index}, the sample has {len(sample.boxes)}')
        height, width = (self.size, self.size) if isinstance(self.size, int) else self.size
        x0, y0, x1, y1 = sample.boxes[self.index].astype(np.float64)
        left = self._start((x0 + x1) / 2, sample.width, width)
        top = self._start((y0 + y1) / 2, sample.height, height)
        return sample.warped(*crop_image(_uint8_image(sample), left, top, width, height))


@dataclasses.dataclass(frozen=True)
class RandomHorizontalFlip:
    """Mirror left-right with probability `p`; x maps to W - x. Not for grounding: its text says left and right."""

    p: float = 0.5

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return sample
        matrix = np.array([[-1.0, 0.0, sample.width], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        return sample.warped(np.ascontiguousarray(_uint8_image(sample)[:, ::-1]), matrix)


def _affine(image: Image.Image, matrix: np.ndarray) -> Image.Image:
    # PIL wants the output-to-input map; bilinear and a gray fill as OFA's warps.
    inverse = np.linalg.inv(matrix)[:2].ravel()
    return image.transform(
        image.size, Image.Transform.AFFINE, tuple(inverse), resample=Image.Resampling.BILINEAR, fillcolor=FILL
    )


def _rotation(degrees: float, width: int, height: int) -> np.ndarray:
    # About the image centre; positive degrees turn the picture counter-clockwise on screen, as OFA's cv2 rotation.
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return (
        _translation(width / 2, height / 2)
        @ np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
        @ _translation(-width / 2, -height / 2)
    )


@dataclasses.dataclass(frozen=True)
class RandomAugment:
    """OFA's RandomAugment: draw `n` ops from `ops` (with replacement), apply each with probability 0.5 at
    `magnitude` out of 10.

    At magnitude m: Brightness and Sharpness use factor m / 10 * 1.8 + 0.1 (1.36 at m = 7, always brightening and
    sharpening); ShearX/ShearY shear by m / 10 * 0.3 about the top-left corner; TranslateX/TranslateY move by m
    pixels (OFA's translate_const 10 at full magnitude, independent of the image size); Rotate turns by m / 10 * 30
    degrees about the centre; each geometric op picks its sign by a fair coin and fills with gray 128. AutoContrast
    (no cutoff) and Equalize are PIL's, which OFA's cv2 versions reproduce.

    OFA applies it only to examples without boxes (pretraining captions and VQA, ImageNet finetuning). Here
    geometric ops move boxes to the axis-aligned box around the moved box, clipped to the image: exact for a
    rectangular object, looser than other shapes under shear and rotation; pass `ops=PHOTOMETRIC_AUGMENTS` to
    exclude them. Differences from OFA's cv2 code: it turns about the image centre (W/2, H/2) where cv2 turns about
    pixel index (W/2, H/2), half a pixel off, and Sharpness saturates where OFA's uint8 cast wraps around.
    """

    n: int = 2
    magnitude: float = 7
    ops: Sequence[str] = OFA_AUGMENTS

    def __post_init__(self) -> None:
        unknown = set(self.ops) - set(OFA_AUGMENTS)
        if unknown or not self.ops:
            raise ValueError(f'ops must be a non-empty subset of {OFA_AUGMENTS}, got {list(self.ops)}')

    def _signed(self, value: float, rng: np.random.Generator) -> float:
        return -value if rng.random() < 0.5 else value

    def _apply(self, op: str, sample: Sample, rng: np.random.Generator) -> Sample:
        level = self.magnitude / 10
        image = Image.fromarray(_uint8_image(sample))
        if op in GEOMETRIC_AUGMENTS:
            if op == 'Rotate':
                matrix = _rotation(self._signed(level * 30, rng), sample.width, sample.height)
            elif op in ('ShearX', 'ShearY'):
                shear = self._signed(level * 0.3, rng)
                matrix = (
                    np.array([[1.0, shear, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
                    if op == 'ShearX'
                    else np.array([[1.0, 0.0, 0.0], [shear, 1.0, 0.0], [0.0, 0.0, 1.0]])
                )
            else:
                shift = self._signed(level * 10, rng)
                matrix = _translation(shift, 0.0) if op == 'TranslateX' else _translation(0.0, shift)
            return sample.warped(np.asarray(_affine(image, matrix)), matrix)
        factor = level * 1.8 + 0.1
        if op == 'AutoContrast':
            image = ImageOps.autocontrast(image)
        elif op == 'Equalize':
            image = ImageOps.equalize(image)
        elif op == 'Brightness':
            image = ImageEnhance.Brightness(image).enhance(factor)
        elif op == 'Sharpness':
            image = ImageEnhance.Sharpness(image).enhance(factor)
        return dataclasses.replace(sample, image=np.asarray(image))

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for index in rng.choice(len(self.ops), self.n):
            if rng.random() < 0.5:
                sample = self._apply(self.ops[index], sample, rng)
        return sample


# OFA's normalization: pixels / 255, less the mean, over the standard deviation, per channel.
MEAN = STD = 0.5


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] pixels to the model's float32 in [-1, 1] (OFA's mean = std = 0.5), in one new array."""
    if image.dtype != np.uint8:
        raise ValueError(f'normalize takes uint8 pixels, got {image.dtype}')
    out = np.divide(image, np.float32(255.0), dtype=np.float32)
    out -= np.float32(MEAN)
    out /= np.float32(STD)
    return out


@dataclasses.dataclass(frozen=True)
class Compose:
    """Apply `transforms` in order, threading the sample and the one Generator through them."""

    transforms: Sequence[Transform]

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample


def finetune_transform(patch_image_size: int = 480) -> Compose:
    """Finetuning and evaluation: bicubic square resize. OFA uses 480 for caption, VQA and SNLI-VE, and 512 for RefCOCO
    (whose RandomResize([512], max_size=512) is this same square resize)."""
    return Compose([Resize(patch_image_size)])


def _pretrain_sizes(patch_image_size: int, max_short_side: int) -> range:
    if patch_image_size > max_short_side:
        raise ValueError(f'patch_image_size {patch_image_size} exceeds the largest random size {max_short_side}')
    return range(patch_image_size, max_short_side + 1)


def pretrain_image_text_transform(
    patch_image_size: int = 384, max_short_side: int = 480, max_size: int = 672
) -> Compose:
    """Pretraining captions, VQA and image-text matching: random shorter side in [patch_image_size, max_short_side]
    (both sides capped at max_size), centre crop to patch_image_size, RandomAugment(2, 7)."""
    return Compose(
        [
            RandomResize(_pretrain_sizes(patch_image_size, max_short_side), max_size),
            CenterCrop(patch_image_size),
            RandomAugment(),
        ]
    )


def pretrain_grounding_transform(
    patch_image_size: int = 384, max_short_side: int = 480, max_size: int = 672
) -> Compose:
    """Pretraining grounding (and grounded captioning): the same random resize, a patch_image_size crop centred on
    box 0 (the referred region); no flip and no RandomAugment."""
    return Compose(
        [
            RandomResize(_pretrain_sizes(patch_image_size, max_short_side), max_size),
            ObjectCenterCrop(patch_image_size),
        ]
    )
