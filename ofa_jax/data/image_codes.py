"""Image tokenizers: images <-> grids of discrete codes, the targets of image infilling and text-to-image.

OFA uses a VQGAN (f=8, 8192 codes): `ofa_jax.vqgan.VQGANTokenizer`. For the embedded world the project fits its own
tokenizer on that world: a patch codebook, k-means over 8x8 pixel patches, which is exact enough to draw flat-coloured
shapes back.
"""

import dataclasses
import math
from typing import Any, Protocol

import numpy as np


class ImageTokenizer(Protocol):
    downsample: int  # pixels per code along each side
    num_codes: int

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 [batch, H, W, 3] -> int32 codes [batch, H / downsample, W / downsample]."""

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """int codes [batch, h, w] -> uint8 [batch, h * downsample, w * downsample, 3]."""


def _patches(images: np.ndarray, size: int) -> np.ndarray:
    b, h, w, c = images.shape
    if h % size or w % size:
        raise ValueError(f'image sides {h}x{w} must be multiples of the patch size {size}')
    grid = images.reshape(b, h // size, size, w // size, size, c).transpose(0, 1, 3, 2, 4, 5)
    return grid.reshape(b, h // size, w // size, size * size * c).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class PatchCodebook:
    """Nearest-centroid codes of square pixel patches. centroids: float32 [num_codes, downsample^2 * 3]."""

    centroids: np.ndarray
    downsample: int = 8

    @property
    def num_codes(self) -> int:
        return self.centroids.shape[0]

    @classmethod
    def fit(
        cls, images: np.ndarray, num_codes: int = 256, downsample: int = 8, iterations: int = 15, seed: int = 0
    ) -> 'PatchCodebook':
        """k-means over the patches of uint8 images [batch, H, W, 3] (deterministic for a seed)."""
        data = _patches(images, downsample).reshape(-1, downsample * downsample * 3)
        unique = np.unique(data, axis=0)
        rng = np.random.default_rng(seed)
        centroids = unique[rng.choice(len(unique), min(num_codes, len(unique)), replace=False)]
        for _ in range(iterations):
            assignment = cls._nearest(data, centroids)
            for k in range(len(centroids)):
                members = data[assignment == k]
                if len(members):
                    centroids[k] = members.mean(0)
        if len(centroids) < num_codes:  # fewer distinct patches than codes: the spare codes repeat the first
            centroids = np.concatenate([centroids, np.repeat(centroids[:1], num_codes - len(centroids), 0)])
        return cls(centroids.astype(np.float32), downsample)

    @staticmethod
    def _nearest(data: np.ndarray, centroids: np.ndarray) -> np.ndarray:
        distances = (data**2).sum(1)[:, None] - 2 * data @ centroids.T + (centroids**2).sum(1)[None]
        return distances.argmin(1)

    def encode(self, images: np.ndarray) -> np.ndarray:
        patches = _patches(images, self.downsample)
        return (
            self._nearest(patches.reshape(-1, patches.shape[-1]), self.centroids)
            .reshape(patches.shape[:3])
            .astype(np.int32)
        )

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.min() < 0 or codes.max() >= self.num_codes:
            raise ValueError(f'codes must lie in [0, {self.num_codes}), got [{codes.min()}, {codes.max()}]')
        b, h, w = codes.shape
        d = self.downsample
        patches = self.centroids[codes].reshape(b, h, w, d, d, 3).transpose(0, 1, 3, 2, 4, 5)
        return np.clip(np.rint(patches.reshape(b, h * d, w * d, 3)), 0, 255).astype(np.uint8)

    def save(self, path: str) -> None:
        np.savez(path, centroids=self.centroids, downsample=self.downsample)

    @classmethod
    def load(cls, path: str) -> 'PatchCodebook':
        with np.load(path) as data:
            return cls(data['centroids'], int(data['downsample']))


def images_from_code_tokens(vocab: Any, tokenizer: ImageTokenizer, token_ids: np.ndarray) -> np.ndarray:
    """Text-to-image output: token ids [batch, side * side] of `<code_i>` tokens -> uint8 images
    [batch, side * downsample, side * downsample, 3] (a code's index is its id minus the first code's id)."""
    token_ids = np.asarray(token_ids)
    side = math.isqrt(token_ids.shape[-1]) if token_ids.ndim == 2 else 0
    if token_ids.ndim != 2 or side * side != token_ids.shape[1]:
        raise ValueError(f'token_ids must be [batch, side * side], got shape {token_ids.shape}')
    codes = token_ids - vocab.code_id(0)
    outside = (codes < 0) | (codes >= tokenizer.num_codes)
    if outside.any():
        raise ValueError(f'token_ids hold non-code tokens, e.g. {token_ids[outside][:5].tolist()}')
    return tokenizer.decode(codes.reshape(-1, side, side))
