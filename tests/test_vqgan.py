"""The Flax VQGAN against taming-transformers' PyTorch modules, its converter, tokenizer and code precomputation."""

import copy
import dataclasses
import io

import jax
import numpy as np
import PIL.Image
import pytest
import torch

from ofa_jax import checkpoint, vqgan
from ofa_jax.data import tasks
from ofa_jax.data.image_codes import images_from_code_tokens
from ofa_jax.data.vocab import default_vocabulary
from ofa_jax.precompute_codes import ImageFolder, code_image, precompute, shard_path
from ofa_jax.precompute_codes import main as precompute_main
from ofa_jax.vqgan import VQGANTokenizer
from tests.vqgan_reference import random_reference, save_lightning_checkpoint, write_model_yaml

# One test process builds this module's fixtures once (tests/run.sh distributes by group).
pytestmark = pytest.mark.xdist_group('vqgan')

SMALL = vqgan.PRESETS['small']  # f=8 with attention at 32x32 codes, few channels
# f=2 and a handful of codes, for tests of plumbing rather than numerics.
TINY = vqgan.VQGANConfig(
    ch=32,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(16,),
    resolution=32,
    z_channels=32,
    embed_dim=32,
    n_embed=16,
)


@pytest.fixture(scope='module')
def tiny_variables():
    # Converted from a random reference: far quicker than Flax's own initialization of the same tree.
    return vqgan.from_state_dict({k: v.numpy() for k, v in random_reference(TINY).state_dict().items()}, TINY)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    """A random reference, its Lightning checkpoint and model.yaml, and what the converter makes of them."""
    directory = tmp_path_factory.mktemp('vqgan')
    reference = random_reference(SMALL)
    save_lightning_checkpoint(reference, str(directory / 'last.ckpt'))
    write_model_yaml(SMALL, str(directory / 'model.yaml'))
    config, variables = vqgan.from_lightning_checkpoint(directory / 'last.ckpt', directory / 'model.yaml')
    return reference, config, variables


@pytest.mark.parity
@pytest.mark.parametrize('size', [pytest.param(256, marks=pytest.mark.slow), 64])
def test_matches_taming_reference(small, size):
    reference, config, variables = small
    assert config == SMALL
    model = vqgan.VQGAN(config)
    images = np.random.default_rng(size).uniform(-1, 1, (1, size, size, 3)).astype(np.float32)

    logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x, method=model.logits))(variables, images))
    expected_logits = reference.logits(images)
    assert logits.shape == (1, size // 8, size // 8, SMALL.n_embed)
    # float32 both sides: measured against a float64 run of the reference, so neither side's rounding is the truth.
    reference64 = copy.deepcopy(reference).double()
    assert relative_error(logits, reference64.logits(images.astype(np.float64))) < 1e-5
    assert relative_error(logits, expected_logits) < 1e-5
    codes = np.asarray(jax.jit(lambda v, x: model.apply(v, x, method=model.encode))(variables, images))
    np.testing.assert_array_equal(codes, expected_logits.argmax(-1))

    decoded = np.asarray(jax.jit(lambda v, c: model.apply(v, c, method=model.decode))(variables, codes))
    expected = reference.decode(codes)
    assert decoded.shape == (1, size, size, 3)
    with torch.no_grad():
        z = reference64.quantize.embed(torch.from_numpy(codes.astype(np.int64))).permute(0, 3, 1, 2)
        expected64 = reference64.decoder(reference64.post_quant_conv(z)).permute(0, 2, 3, 1).numpy()
    assert relative_error(decoded, expected64) < 1e-5
    # OFA's pixels: clamp, (x + 1) / 2 * 255, truncate; float32 rounding may move a value across an integer.
    pixels = np.asarray(vqgan.to_pixels(decoded))
    expected_pixels = ((np.clip(expected, -1, 1) + 1) / 2 * 255).astype(np.uint8)
    assert np.abs(pixels.astype(int) - expected_pixels).max() <= 1
    assert np.mean(pixels != expected_pixels) < 1e-3


@pytest.mark.parity
def test_state_dict_round_trip_and_errors(small):
    reference, config, variables = small
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    assert len(state) == len(vqgan.to_state_dict(variables))
    for name, value in vqgan.to_state_dict(variables).items():
        np.testing.assert_array_equal(value, state[name], err_msg=name)
    assert vqgan.torch_name(('encoder', 'mid', 'attn_1', 'q', 'kernel')) == 'encoder.mid.attn_1.q.weight'

    missing = dict(state)
    del missing['decoder.up.3.attn.1.proj_out.bias']
    with pytest.raises(ValueError, match=r'lacks weight decoder\.up\.3\.attn\.1\.proj_out\.bias'):
        vqgan.from_state_dict(missing, config)
    with pytest.raises(ValueError, match=r'does not use: \[.encoder\.extra\.weight.\]'):
        vqgan.from_state_dict({**state, 'encoder.extra.weight': np.zeros(3)}, config)
    misshapen = {**state, 'quantize.embed.weight': np.zeros((SMALL.n_embed + 1, SMALL.embed_dim), np.float32)}
    with pytest.raises(
        ValueError, match=r'quantize\.embed\.weight has shape \(513, 64\), the config needs \(512, 64\)'
    ):
        vqgan.from_state_dict(misshapen, config)
    # The full OFA config reads its weights under the same names: 301 of them.
    assert len(vqgan.to_state_dict(jax.tree.map(np.zeros_like, vqgan.abstract_variables(vqgan.PRESETS['ofa'])))) == 301


def test_config_from_yaml_and_bad_configs(tmp_path):
    write_model_yaml(vqgan.PRESETS['ofa'], str(tmp_path / 'model.yaml'))
    assert vqgan.VQGANConfig.from_yaml(tmp_path / 'model.yaml') == vqgan.PRESETS['ofa']
    assert vqgan.PRESETS['ofa'].downsample == 8
    (tmp_path / 'bad.yaml').write_text('model:\n  params:\n    n_embed: 8\n')
    with pytest.raises(ValueError, match='lacks'):
        vqgan.VQGANConfig.from_yaml(tmp_path / 'bad.yaml')
    with pytest.raises(ValueError, match='GroupNorm'):
        dataclasses.replace(SMALL, ch=48)
    with pytest.raises(ValueError, match='embed_dim'):
        dataclasses.replace(SMALL, embed_dim=32)


@pytest.mark.parity
def test_convert_cli_writes_a_tokenizer(tmp_path):
    reference = random_reference(TINY, seed=1)
    save_lightning_checkpoint(reference, str(tmp_path / 'last.ckpt'))
    write_model_yaml(TINY, str(tmp_path / 'model.yaml'))
    vqgan.main(
        [
            'convert',
            '--checkpoint',
            str(tmp_path / 'last.ckpt'),
            '--config',
            str(tmp_path / 'model.yaml'),
            '--out',
            str(tmp_path / 'out'),
        ]
    )
    tokenizer = VQGANTokenizer.load(str(tmp_path / 'out'))
    assert (tokenizer.downsample, tokenizer.num_codes) == (2, 16)
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    codes = tokenizer.encode(images)
    expected = reference.logits((images / 255 * 2 - 1).astype(np.float32)).argmax(-1)
    np.testing.assert_array_equal(codes, expected)
    pixels = tokenizer.decode(codes)
    assert pixels.dtype == np.uint8 and pixels.shape == images.shape
    with pytest.raises(ValueError, match='multiples of 2'):
        tokenizer.encode(images[:, :15])
    with pytest.raises(ValueError, match=r'codes must be \[batch, h, w\] in \[0, 16\)'):
        tokenizer.decode(codes + 16)


def test_seeded_sampling_is_reproducible_and_follows_the_logits(tiny_variables):
    variables = tiny_variables
    images = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    draws = VQGANTokenizer(TINY, variables, seed=3)
    first, second = draws.encode(images), draws.encode(images)
    np.testing.assert_array_equal(first, VQGANTokenizer(TINY, variables, seed=3).encode(images))
    assert not np.array_equal(first, second)  # a fresh draw per call, as OFA's extraction gives
    # Over many draws each position's most frequent code is the argmax code, where the logits leave a clear winner.
    model = vqgan.VQGAN(TINY)
    logits = np.asarray(
        jax.jit(lambda v, x: model.apply(v, vqgan.from_pixels(x), method=model.logits))(variables, images)
    )[0]
    probabilities = jax.nn.softmax(logits, -1)
    draws_of = np.stack([draws.encode(images)[0] for _ in range(64)])
    frequency = (draws_of == logits.argmax(-1)).mean(0)
    np.testing.assert_allclose(
        frequency.mean(), np.take_along_axis(probabilities, logits.argmax(-1)[..., None], -1).mean(), atol=0.05
    )


def test_image_infill_targets_are_the_centre_codes(small):
    tokenizer = VQGANTokenizer(SMALL, small[2])
    image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    vocab = default_vocabulary()
    example = tasks.image_infill(vocab, tokenizer)({'image': image}, np.random.default_rng(0))
    centre = tokenizer.encode(image[None, 64:192, 64:192])[0].reshape(-1)
    assert example['target_ids'] == [vocab.code_id(int(c)) for c in centre] and len(centre) == 256
    assert np.all(example['image'][64:192, 64:192] == 0)


def test_images_from_generated_code_tokens(tiny_variables):
    tokenizer = VQGANTokenizer(TINY, tiny_variables)
    vocab = default_vocabulary()
    codes = np.random.default_rng(0).integers(0, TINY.n_embed, (2, 8, 8))
    tokens = np.vectorize(vocab.code_id)(codes).reshape(2, 64)
    np.testing.assert_array_equal(images_from_code_tokens(vocab, tokenizer, tokens), tokenizer.decode(codes))
    with pytest.raises(ValueError, match='non-code tokens'):
        images_from_code_tokens(vocab, tokenizer, np.where(np.arange(64) == 5, vocab.code_id(0) - 1, tokens))
    with pytest.raises(ValueError, match=r'\[batch, side \* side\]'):
        images_from_code_tokens(vocab, tokenizer, tokens[:, :63])


def _png(rng, height, width) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, 'PNG')
    return buffer.getvalue()


def test_precompute_codes_shards_processes_and_resumes(tmp_path, tiny_variables):
    rng = np.random.default_rng(0)
    folder = tmp_path / 'images'
    folder.mkdir()
    for i in range(7):
        (folder / f'{i}.png').write_bytes(_png(rng, 40 + 4 * i, 32))
    (folder / 'broken.jpg').write_bytes(b'not an image')
    source = ImageFolder(folder)
    tokenizer = VQGANTokenizer(TINY, tiny_variables)
    out = tmp_path / 'codes'
    # Two processes share three shards of three records; each writes only its own.
    first = precompute(source, tokenizer, out, size=32, shard_size=3, batch_size=2, process_index=0, process_count=2)
    assert [p.name for p in first] == ['codes-00000.tsv', 'codes-00002.tsv']
    assert not shard_path(out, 1).exists()
    # Process 1 was stopped after one record: its partial shard goes on from there (a torn line is redone).
    shard_path(out, 1).with_suffix('.tsv.partial').write_text('3.png\t1 2 3\n4.pn')
    precompute_main(
        [
            '--vqgan',
            _saved(tmp_path, tokenizer),
            '--images',
            str(folder),
            '--out',
            str(out),
            '--size',
            '32',
            '--shard_size',
            '3',
            '--batch_size',
            '2',
            '--process_index',
            '1',
            '--process_count',
            '2',
        ]
    )
    rows = [line.split('\t') for i in range(3) for line in shard_path(out, i).read_text().splitlines()]
    assert [r[0] for r in rows] == [p.relative_to(folder).as_posix() for p in source.paths]
    assert rows[3] == ['3.png', '1 2 3']  # kept, not recomputed
    assert dict(rows)['broken.jpg'] == ''
    # The infill target: the codes of the centre 16x16 px of the 32 px crop, 8x8 codes at f=2.
    for name, codes in rows:
        if name not in ('broken.jpg', '3.png'):
            centre = code_image((folder / name).read_bytes(), 32)[None, 8:24, 8:24]
            np.testing.assert_array_equal(np.array(codes.split(), int), tokenizer.encode(centre)[0].reshape(-1))
    # A finished run is not redone: the files stay as they are.
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    precompute(source, tokenizer, out, size=32, shard_size=3, batch_size=2, process_index=1, process_count=2)
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before


def _saved(tmp_path, tokenizer) -> str:
    directory = tmp_path / 'vqgan'
    checkpoint.save_model(directory, tokenizer.config, tokenizer.variables)
    return str(directory)
