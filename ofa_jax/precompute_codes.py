"""Precomputes VQGAN codes for a dataset: OFA's TSV files or a folder of images.

    python -m ofa_jax.precompute_codes --vqgan VQGAN_DIR --images PHOTOS/ --out CODES/
    python -m ofa_jax.precompute_codes --vqgan VQGAN_DIR --tsv rows.tsv --kind caption --out CODES/ \
        --process_index 0 --process_count 4

Each image is resized (LANCZOS) so its shorter side is `--size` and centre-cropped to a square, as OFA prepares its
code images. `--target image_infill` keeps the codes of the centre half per side (OFA's image-infilling targets:
16x16 codes at 256 px); `--target text_to_image` keeps all of them (text-to-image: 32x32 codes at 256 px).

Records are cut into shards of `--shard_size` consecutive records; process i of n takes shards i, i + n, ... and writes
each to `codes-SSSSS.tsv`, one line per record: `id<TAB>space-separated codes` (codes empty when the image does not
decode). A shard is written to a `.partial` file first and renamed once complete, so a restarted run skips finished
shards and, within an unfinished one, the records already written.
"""

import argparse
import io
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import PIL.Image

from ofa_jax.data.image_codes import ImageTokenizer
from ofa_jax.data.sources import OFATsvSource
from ofa_jax.vqgan import VQGANTokenizer

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')
TARGETS = ('image_infill', 'text_to_image')  # the task whose targets the codes are


class ImageFolder:
    """Image files under a folder (recursively, sorted) as records {'id': relative path, 'image': file bytes}."""

    def __init__(self, root: str | os.PathLike):
        self.root = pathlib.Path(root)
        if not self.root.is_dir():
            raise ValueError(f'images folder {root} does not exist')
        self.paths = sorted(p for p in self.root.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        return {'id': path.relative_to(self.root).as_posix(), 'image': path.read_bytes()}


def code_image(data: bytes, size: int) -> np.ndarray:
    """Encoded image file -> RGB uint8 [size, size, 3]: shorter side resized to `size` (LANCZOS), centre crop."""
    with PIL.Image.open(io.BytesIO(data)) as image:
        image = image.convert('RGB')
        scale = size / min(image.size)
        width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((width, height), PIL.Image.LANCZOS)
        left, top = (width - size) // 2, (height - size) // 2
        return np.asarray(image.crop((left, top, left + size, top + size)))


def shard_path(out_dir: str | os.PathLike, shard: int) -> pathlib.Path:
    return pathlib.Path(out_dir) / f'codes-{shard:05d}.tsv'


def _batches(source: Any, indices: range, size: int, batch_size: int) -> Iterator[list[tuple[str, np.ndarray | None]]]:
    batch = []
    for index in indices:
        record = source[index]
        image = None
        if '_error' not in record:
            try:
                image = code_image(record['image'], size)
            except (OSError, ValueError):  # PIL's errors for undecodable files
                pass
        batch.append((str(record['id']), image))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def encode_batch(
    tokenizer: ImageTokenizer, images: list[np.ndarray | None], size: int, batch_size: int, target: str
) -> list[np.ndarray | None]:
    """Codes int32 [K] per image (None stays None). Batches are padded to `batch_size` so one compilation serves all."""
    present = [i for i, image in enumerate(images) if image is not None]
    out: list[np.ndarray | None] = [None] * len(images)
    if not present:
        return out
    pixels = np.zeros((batch_size, size, size, 3), np.uint8)
    pixels[: len(present)] = [images[i] for i in present]
    if target == 'image_infill':
        pixels = pixels[:, size // 4 : size - size // 4, size // 4 : size - size // 4]
    codes = tokenizer.encode(pixels)
    for row, i in enumerate(present):
        out[i] = codes[row].reshape(-1)
    return out


def precompute(
    source: Any,
    tokenizer: ImageTokenizer,
    out_dir: str | os.PathLike,
    *,
    size: int = 256,
    target: str = 'image_infill',
    shard_size: int = 1000,
    batch_size: int = 8,
    process_index: int = 0,
    process_count: int = 1,
) -> list[pathlib.Path]:
    """Writes this process's shards of `source` (records with 'id' and 'image') under `out_dir`; returns their paths.

    Finished shards are skipped; an unfinished one continues after the records its `.partial` file holds."""
    if target not in TARGETS:
        raise ValueError(f'target must be one of {TARGETS}, got {target!r}')
    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index {process_index} is not in [0, process_count={process_count})')
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f'shard_size ({shard_size}) and batch_size ({batch_size}) must be positive')
    if size % (4 * tokenizer.downsample if target == 'image_infill' else tokenizer.downsample):
        raise ValueError(f'size {size} does not split into whole codes for target {target!r}')
    os.makedirs(out_dir, exist_ok=True)
    num_shards = -(-len(source) // shard_size)
    written = []
    for shard in range(process_index, num_shards, process_count):
        final = shard_path(out_dir, shard)
        written.append(final)
        if final.exists():
            continue
        partial = final.with_suffix('.tsv.partial')
        done = 0
        if partial.exists():
            # A line is whole only with its newline; a torn last line is dropped and that record redone.
            lines = partial.read_bytes().split(b'\n')
            done = len(lines) - 1
            partial.write_bytes(b''.join(line + b'\n' for line in lines[:-1]))
        start = shard * shard_size + done
        indices = range(start, min((shard + 1) * shard_size, len(source)))
        with open(partial, 'a') as f:
            for batch in _batches(source, indices, size, batch_size):
                ids, images = zip(*batch)
                for record_id, codes in zip(ids, encode_batch(tokenizer, list(images), size, batch_size, target)):
                    f.write(f'{record_id}\t{"" if codes is None else " ".join(map(str, codes))}\n')
                f.flush()
        os.replace(partial, final)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--vqgan', required=True, help='directory written by `python -m ofa_jax.vqgan convert`')
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument('--images', help='folder of image files (searched recursively)')
    inputs.add_argument('--tsv', help="one of OFA's TSV files (see --kind)")
    parser.add_argument('--kind', default='pretrain_image', help='the TSV layout (ofa_jax.data.sources.TSV_LAYOUTS)')
    parser.add_argument('--selected_cols', help="the TSV's columns, as OFA's '0,1,2'")
    parser.add_argument('--out', required=True, help='output directory of code shards')
    parser.add_argument('--target', choices=TARGETS, default='image_infill')
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--shard_size', type=int, default=1000)
    parser.add_argument('--batch_size', type=int, default=8)
    parser.add_argument('--seed', type=int, help='draw codes as OFA does (Gumbel sampling) instead of argmax')
    parser.add_argument('--process_index', type=int, default=0)
    parser.add_argument('--process_count', type=int, default=1)
    args = parser.parse_args(argv)
    source = ImageFolder(args.images) if args.images else OFATsvSource(args.tsv, args.kind, args.selected_cols)
    paths = precompute(
        source,
        VQGANTokenizer.load(args.vqgan, seed=args.seed),
        args.out,
        size=args.size,
        target=args.target,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        process_index=args.process_index,
        process_count=args.process_count,
    )
    print(f'{len(paths)} shards of {len(source)} records in {args.out}')


if __name__ == '__main__':
    main()
