"""Boxes <-> location bins, as OFA's grounding and detection tasks quantize them.

A box (x0, y0, x1, y1) in the pixels of the resized image the model sees becomes four bins,
`bin = round(coord / max_image_size * (num_bins - 1))`; a bin decodes to `bin / (num_bins - 1) * max_image_size`,
then divided by the resize ratio to land in the original image. Rounding is half to even, as torch's `round` in
OFA's code.
"""

from collections.abc import Sequence

import numpy as np

from ofa_jax.data.vocab import Vocabulary

Scale = float | tuple[float, float]
MAX_IMAGE_SIZE = 512  # OFA quantizes box coordinates relative to this side


def _check_grid(max_image_size: float, num_bins: int) -> None:
    if not max_image_size > 0:
        raise ValueError(f'max_image_size must be positive, got {max_image_size}')
    if num_bins < 2:
        raise ValueError(f'num_bins must be at least 2, got {num_bins}')


def quantize(
    box_xyxy: Sequence[float] | np.ndarray, max_image_size: float = MAX_IMAGE_SIZE, num_bins: int = 1000
) -> list[int]:
    """Bin indices [4] of a box [4] (x0, y0, x1, y1, resized-image pixels); coordinates off the grid are clipped."""
    _check_grid(max_image_size, num_bins)
    box = np.asarray(box_xyxy, np.float64)
    if box.shape != (4,):
        raise ValueError(f'expected a box of 4 coordinates (x0, y0, x1, y1), got shape {box.shape}')
    if not np.all(np.isfinite(box)):
        raise ValueError(f'box coordinates must be finite, got {box.tolist()}')
    bins = np.round(box / max_image_size * (num_bins - 1))
    return np.clip(bins, 0, num_bins - 1).astype(np.int64).tolist()


def dequantize(
    bins: Sequence[int] | np.ndarray, max_image_size: float = MAX_IMAGE_SIZE, num_bins: int = 1000, scale: Scale = 1.0
) -> np.ndarray:
    """Boxes [..., 4] float64 in original-image pixels from bin indices [..., 4] (x0, y0, x1, y1).

    `scale` is the resize ratio the image transform applied (resized = original * scale): one for both axes or
    (sx, sy).
    """
    _check_grid(max_image_size, num_bins)
    bins = np.asarray(bins)
    if bins.ndim == 0 or bins.shape[-1] != 4:
        raise ValueError(f'expected bins of shape [..., 4], got {bins.shape}')
    if not np.issubdtype(bins.dtype, np.integer):
        raise ValueError(f'bins must be integers, got dtype {bins.dtype}')
    if bins.size and (bins.min() < 0 or bins.max() >= num_bins):
        raise ValueError(f'bins must lie in [0, {num_bins}), got values in [{bins.min()}, {bins.max()}]')
    sx, sy = (scale, scale) if np.ndim(scale) == 0 else scale
    if not (sx > 0 and sy > 0):
        raise ValueError(f'scale must be positive, got {scale}')
    coords = bins / (num_bins - 1) * max_image_size
    return coords / np.array([sx, sy, sx, sy], np.float64)


def box_to_tokens(
    box_xyxy: Sequence[float] | np.ndarray, vocab: Vocabulary, max_image_size: float = MAX_IMAGE_SIZE
) -> list[int]:
    """The four bin token ids [4] of a box [4] in resized-image pixels."""
    return [vocab.bin_id(b) for b in quantize(box_xyxy, max_image_size, vocab.num_bins)]


def tokens_to_box(
    ids: Sequence[int] | np.ndarray, vocab: Vocabulary, max_image_size: float = MAX_IMAGE_SIZE, scale: Scale = 1.0
) -> np.ndarray:
    """Boxes [..., 4] in original-image pixels from bin token ids [..., 4]; ValueError names an id that is no bin."""
    ids = np.asarray(ids)
    for token_id in ids.reshape(-1).tolist():
        if not vocab.is_bin(token_id):
            raise ValueError(
                f'token id {token_id} is not a location bin '
                f'(bins are ids {vocab.bin_id(0)}..{vocab.bin_id(vocab.num_bins - 1)})'
            )
    return dequantize(ids - vocab.bin_id(0), max_image_size, vocab.num_bins, scale)


def tokens_to_objects(
    token_ids: Sequence[int] | np.ndarray, vocab: Vocabulary, scale: Scale = 1.0
) -> tuple[np.ndarray, list[str]]:
    """OFA's detection output, per object four bin tokens then the label's text tokens, as boxes [N, 4] (original
    pixels, through the resize ratio `scale`) and N labels. Pieces that do not fit the pattern (fewer than four bins,
    a box with no label) are skipped; decoding stops at eos."""
    ids = [int(t) for t in token_ids]
    if vocab.eos_id in ids:
        ids = ids[: ids.index(vocab.eos_id)]
    found_boxes, labels = [], []
    i = 0
    while i < len(ids):
        if len(ids) < i + 4 or not all(vocab.is_bin(t) for t in ids[i : i + 4]):
            i += 1
            continue
        end = i + 4
        while end < len(ids) and not vocab.is_bin(ids[end]):
            end += 1
        label = vocab.decode(ids[i + 4 : end]).strip()
        if label:
            found_boxes.append(tokens_to_box(ids[i : i + 4], vocab, MAX_IMAGE_SIZE, scale))
            labels.append(label)
        i = end
    return np.array(found_boxes, np.float64).reshape(-1, 4), labels
