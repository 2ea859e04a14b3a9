"""Image transforms: boxes follow the pixels, degenerate boxes are reported, pipelines are reproducible by seed."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from ofa_jax.data import boxes as box_bins
from ofa_jax.data import transforms as T

RED = (220, 20, 20)
BACKGROUND = (20, 20, 120)


def scene(width: int, height: int, box: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """[height, width, 3] uint8: a noisy blue background with a solid red rectangle at integer `box`."""
    # The same noise in every channel, so per-channel Equalize and AutoContrast cannot turn the background red.
    noise = np.random.default_rng(seed).integers(-10, 11, (height, width, 1))
    image = np.clip(np.array(BACKGROUND) + noise, 0, 255).astype(np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = RED
    return image


def red_extent(image: np.ndarray) -> np.ndarray | None:
    """Box [4] (pixel edges) around the pixels that are clearly red, or None when there are none."""
    pixels = image.astype(np.float32)
    if image.dtype != np.uint8:
        pixels = (pixels + 1) * 127.5
    mask = pixels[..., 0] - pixels[..., 1:].max(axis=-1) > 50
    if not mask.any():
        return None
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


def assert_box_bounds_red(sample: T.Sample, index: int = 0, atol: float = 1.0) -> None:
    extent = red_extent(sample.image)
    assert extent is not None and sample.keep[index]
    np.testing.assert_allclose(sample.boxes[index], extent, atol=atol)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


BOX = (30, 20, 62, 44)
TRANSFORMS = {
    'resize_square': T.Resize(64),
    'resize_hw': T.Resize((50, 90)),
    'resize_max': T.ResizeMax(72),
    'random_resize': T.RandomResize(range(40, 71), max_size=90),
    'center_crop': T.CenterCrop(64),
    'object_center_crop': T.ObjectCenterCrop(48),
    'flip': T.RandomHorizontalFlip(p=1.0),
    'augment': T.RandomAugment(),
}


@pytest.mark.parametrize('name', sorted(TRANSFORMS))
@pytest.mark.parametrize('seed', range(4))
def test_box_bounds_the_object_after_each_transform(name, seed):
    sample = T.Sample.from_image(scene(112, 80, BOX, seed), [BOX], labels=[7])
    out = TRANSFORMS[name](sample, rng(seed))
    # Two bilinear warps in a row blur the object's edges a little more.
    assert_box_bounds_red(out, atol=1.25 if name == 'augment' else 1.0)
    assert out.labels.tolist() == [7]
    # Back in the original image's pixels the box is the one drawn (shear and rotation only widen it).
    if name != 'augment':
        np.testing.assert_allclose(out.to_original(out.boxes)[0], BOX, atol=1.0)


def test_resize_scales_box_and_reports_ratio():
    sample = T.Sample.from_image(scene(120, 60, BOX), [BOX])
    out = T.ResizeMax(60)(sample, rng())
    assert out.image.shape == (30, 60, 3)
    assert out.scale == (0.5, 0.5) and out.offset == (0.0, 0.0)
    np.testing.assert_allclose(out.boxes[0], np.array(BOX) * 0.5)


def test_ofa_resize_shape():
    assert T.ofa_resize_shape(640, 480, 384, 672) == (512, 384)
    assert T.ofa_resize_shape(480, 640, 384, 672) == (384, 512)
    # Both sides are capped on their own: a long image loses its aspect ratio, as in OFA.
    assert T.ofa_resize_shape(1000, 400, 400, 672) == (672, 400)
    # RefCOCO's RandomResize([512], max_size=512) is a square resize.
    assert T.ofa_resize_shape(500, 375, 512, 512) == (512, 512)
    assert T.ofa_resize_shape(333, 500, 480, None) == (480, 720)


def test_random_resize_draws_from_sizes():
    sample = T.Sample.from_image(scene(100, 80, BOX), [BOX])
    shorter = {T.RandomResize([40, 50, 60])(sample, rng(seed)).height for seed in range(30)}
    assert shorter == {40, 50, 60}


def test_center_crop_flags_boxes_cut_away():
    # Box 0 straddles the crop's left edge, box 1 lies outside it, box 2 is inside.
    image = scene(100, 60, (5, 10, 30, 30))
    sample = T.Sample.from_image(image, [[5, 10, 30, 30], [0, 0, 10, 10], [40, 20, 60, 40]], labels=[1, 2, 3])
    out = T.CenterCrop((60, 60))(sample, rng())
    assert out.offset == (-20.0, 0.0)
    assert out.keep.tolist() == [True, False, True]
    np.testing.assert_allclose(out.boxes[0], [0, 10, 10, 30])
    assert_box_bounds_red(out)
    kept, dropped = T.drop_degenerate(out)
    assert dropped == 1 and kept.labels.tolist() == [1, 3] and kept.boxes.shape == (2, 4)


def test_center_crop_pads_small_images_with_zeros():
    out = T.CenterCrop(40)(T.Sample.from_image(scene(30, 40, (10, 10, 20, 20)), [[10, 10, 20, 20]]), rng())
    assert out.image.shape == (40, 40, 3) and out.offset == (5.0, 0.0)
    assert not out.image[:, :5].any() and not out.image[:, 35:].any()
    assert_box_bounds_red(out)


@pytest.mark.parametrize('box', [(50, 30, 60, 44), (2, 3, 14, 12), (100, 66, 110, 78), (40, 0, 72, 80)])
def test_object_center_crop_keeps_object_inside(box):
    sample = T.Sample.from_image(scene(112, 80, box), [box, (0, 0, 4, 4)])
    out = T.ObjectCenterCrop(40)(sample, rng())
    assert out.image.shape == (40, 40, 3)
    if box[3] - box[1] <= 40:
        # The whole object fits: it is inside the crop, untouched.
        np.testing.assert_allclose(out.boxes[0], np.array(box) + np.tile(out.offset, 2))
    assert_box_bounds_red(out)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    if 20 <= cx <= 112 - 20 and 20 <= cy <= 80 - 20:
        # Away from the borders the object sits at the crop's centre.
        np.testing.assert_allclose(out.boxes[0, [0, 1]] + out.boxes[0, [2, 3]], [40, 40], atol=1.0)


def test_object_center_crop_needs_the_box():
    with pytest.raises(ValueError, match='box 0'):
        T.ObjectCenterCrop(32)(T.Sample.from_image(scene(64, 64, BOX)), rng())


def test_flip_maps_boxes():
    image = scene(100, 60, (10, 5, 30, 25))
    sample = T.Sample.from_image(image, [[10, 5, 30, 25], [0, 0, 100, 60]])
    out = T.RandomHorizontalFlip(p=1.0)(sample, rng())
    np.testing.assert_array_equal(out.image, image[:, ::-1])
    np.testing.assert_allclose(out.boxes, [[70, 5, 90, 25], [0, 0, 100, 60]])
    np.testing.assert_allclose(out.to_original(out.boxes), sample.boxes)
    with pytest.raises(ValueError, match='to_original'):
        _ = out.scale
    assert T.RandomHorizontalFlip(p=0.0)(sample, rng()) is sample
    flips = [T.RandomHorizontalFlip()(sample, rng(seed)) is not sample for seed in range(40)]
    assert 5 < sum(flips) < 35


def test_normalize_range_dtype_layout():
    image = np.zeros((4, 6, 3), np.uint8)
    image[0, 0] = 255
    image[1, 1] = 128
    out = T.normalize(image)
    assert out.dtype == np.float32 and out.shape == (4, 6, 3)
    assert out.min() == -1.0 and out.max() == 1.0
    np.testing.assert_allclose(out[1, 1], 128 / 127.5 - 1, atol=1e-6)
    with pytest.raises(ValueError, match='uint8'):
        T.normalize(out)
    with pytest.raises(ValueError, match='uint8 images, got float32'):
        T.Resize(8)(dataclasses.replace(T.Sample.from_image(image), image=out), rng())


@pytest.mark.parametrize('seed', range(12))
def test_random_augment_keeps_shape_and_dtype(seed):
    sample = T.Sample.from_image(scene(72, 56, (10, 10, 40, 30), seed))
    out = T.RandomAugment()(sample, rng(seed))
    assert out.image.shape == (56, 72, 3) and out.image.dtype == np.uint8


@pytest.mark.parametrize('op', sorted(T.GEOMETRIC_AUGMENTS))
def test_geometric_augment_moves_boxes(op):
    # Three draws of one op compound: the box must not grow by wrapping each intermediate box.
    augment = T.RandomAugment(n=3, ops=(op,))
    applied = 0
    for seed in range(8):
        sample = T.Sample.from_image(scene(96, 96, (30, 36, 66, 60), seed), [(30, 36, 66, 60)])
        out = augment(sample, rng(seed))
        applied += not np.array_equal(out.matrix, np.eye(3))
        assert_box_bounds_red(out)
    assert applied > 0


def test_geometric_augment_flags_a_box_pushed_off_the_image():
    # A shear by -0.21 about the top-left corner moves the bottom rows 12-13 px left: a 5 px box at the edge leaves.
    sample = T.Sample.from_image(scene(64, 64, (0, 56, 5, 64)), [(0, 56, 5, 64)])
    shear = T.RandomAugment(n=1, ops=('ShearX',))
    outs = [shear(sample, rng(seed)) for seed in range(16)]
    gone = [out for out in outs if out.matrix[0, 1] < 0]
    assert gone and all(not out.keep[0] and red_extent(out.image) is None for out in gone)


def test_geometric_augment_remembers_what_left_the_image():
    # Shearing left cuts off the box's left part; shearing back brings gray fill there, not the object, so the box
    # must not return to its old extent although the net map is the identity.
    box = (0, 52, 20, 64)
    sample = T.Sample.from_image(scene(64, 64, box), [box])
    shear = T.RandomAugment(n=1, ops=('ShearX',))
    returned = 0
    for seed in range(32):
        generator = rng(seed)
        first = shear(sample, generator)
        second = shear(first, generator)
        if first.matrix[0, 1] < 0 and np.allclose(second.matrix, np.eye(3)):
            returned += 1
            assert_box_bounds_red(first)
            assert_box_bounds_red(second)
            assert second.boxes[0, 0] > 10
    assert returned > 0


def test_photometric_augment_leaves_geometry():
    sample = T.Sample.from_image(scene(64, 48, BOX[:2] + (50, 40)), [BOX[:2] + (50, 40)])
    for seed in range(8):
        out = T.RandomAugment(ops=T.PHOTOMETRIC_AUGMENTS)(sample, rng(seed))
        np.testing.assert_array_equal(out.matrix, np.eye(3))
        np.testing.assert_array_equal(out.boxes, sample.boxes)
        assert_box_bounds_red(out)


def test_unknown_augment_rejected():
    with pytest.raises(ValueError, match='subset'):
        T.RandomAugment(ops=('Solarize',))


def test_grounding_pipeline():
    box = (80, 50, 104, 74)
    transform = T.pretrain_grounding_transform(patch_image_size=48, max_short_side=64, max_size=96)
    for seed in range(6):
        sample = T.Sample.from_image(scene(128, 96, box, seed), [box])
        out = transform(sample, rng(seed))
        assert out.image.shape == (48, 48, 3) and out.image.dtype == np.uint8
        assert np.all(out.boxes[0] >= 0) and np.all(out.boxes[0] <= 48)
        assert_box_bounds_red(out)
        np.testing.assert_allclose(out.to_original(out.boxes)[0], box, atol=1.0)


def test_caption_pipeline():
    transform = T.pretrain_image_text_transform(patch_image_size=48, max_short_side=64, max_size=96)
    box = (40, 30, 80, 66)
    for seed in range(6):
        out = transform(T.Sample.from_image(scene(120, 96, box, seed), [box]), rng(seed))
        assert out.image.shape == (48, 48, 3) and out.image.dtype == np.uint8
        assert_box_bounds_red(out, atol=1.25)


def test_finetune_box_survives_quantization():
    # RefCOCO's path: square resize, quantize against max_image_size 512, dequantize with the returned scale.
    box = (13.0, 21.0, 71.0, 50.0)
    pil = Image.fromarray(scene(90, 60, (13, 21, 71, 50))).convert('RGBA')
    out = T.finetune_transform(512)(T.Sample.from_image(pil, [box]), rng())
    assert out.image.shape == (512, 512, 3) and out.scale == (512 / 90, 512 / 60)
    bins = box_bins.quantize(out.boxes[0], max_image_size=512)
    np.testing.assert_allclose(box_bins.dequantize(bins, max_image_size=512, scale=out.scale), box, atol=1.0)


def test_resize_then_crop_maps_back():
    box = (25.0, 17.0, 58.0, 49.0)
    transform = T.Compose([T.RandomResize(range(50, 80), max_size=120), T.CenterCrop(48)])
    for seed in range(5):
        out = transform(T.Sample.from_image(scene(100, 70, (25, 17, 58, 49)), [box]), rng(seed))
        sx, sy = out.scale
        tx, ty = out.offset
        manual = (out.boxes[0] - [tx, ty, tx, ty]) / [sx, sy, sx, sy]
        np.testing.assert_allclose(manual, out.to_original(out.boxes)[0], atol=1e-3)
        if out.boxes[0, 0] > 0 and out.boxes[0, 2] < 48:
            np.testing.assert_allclose(manual, box, atol=1.0)


@pytest.mark.parametrize(
    'make',
    [
        lambda: T.pretrain_image_text_transform(patch_image_size=48, max_short_side=64, max_size=96),
        lambda: T.pretrain_grounding_transform(patch_image_size=48, max_short_side=64, max_size=96),
    ],
)
def test_same_seed_same_output(make):
    transform = make()
    sample = T.Sample.from_image(scene(128, 96, (50, 30, 90, 70)), [(50, 30, 90, 70)])
    runs = [transform(sample, rng(seed)) for seed in (3, 3, 4)]
    np.testing.assert_array_equal(runs[0].image, runs[1].image)
    np.testing.assert_array_equal(runs[0].boxes, runs[1].boxes)
    assert not np.array_equal(runs[0].image, runs[2].image)


def test_input_validation():
    image = scene(32, 32, (0, 0, 4, 4))
    with pytest.raises(ValueError, match='x1 >= x0'):
        T.Sample.from_image(image, [[10, 10, 5, 20]])
    with pytest.raises(ValueError, match=r'\[N, 4\]'):
        T.Sample.from_image(image, [1, 2, 3, 4])
    with pytest.raises(ValueError, match='uint8'):
        T.Sample.from_image(image.astype(np.float32))
    with pytest.raises(ValueError, match='labels'):
        T.Sample.from_image(image, [[0, 0, 4, 4]], labels=[1, 2])
    # Zero-sized or off-image boxes are flagged from the start, and the rest clipped to the image.
    sample = T.Sample.from_image(image, [[3, 3, 3, 9], [40, 0, 50, 8], [-5, 2, 10, 40]])
    assert sample.keep.tolist() == [False, False, True]
    np.testing.assert_allclose(sample.boxes[2], [0, 2, 10, 32])
