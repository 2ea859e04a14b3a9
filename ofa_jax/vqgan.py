"""OFA's image tokenizer: the taming-transformers VQGAN with Gumbel quantization (f=8, 8192 codes), in Flax.

    config = VQGANConfig.from_yaml('model.yaml')
    config, variables = from_lightning_checkpoint('last.ckpt', 'model.yaml')
    vqgan = VQGAN(config)
    codes = vqgan.apply(variables, pixels, method=VQGAN.encode)         # float [-1, 1] NHWC -> int32 [b, h/8, w/8]
    pixels = vqgan.apply(variables, codes, method=VQGAN.decode)         # -> float NHWC, about [-1, 1]

The tokenizer that the data pipeline uses (uint8 in, uint8 out, jitted) is `VQGANTokenizer`, below.

CLI:
    python -m ofa_jax.vqgan convert --checkpoint last.ckpt --config model.yaml --out DIR
"""

import argparse
import dataclasses
import functools
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import yaml
from flax.traverse_util import flatten_dict, unflatten_dict

from ofa_jax import checkpoint, torch_layout

_NORM_GROUPS = 32


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
    """The fields of taming's `model.yaml` (`params.ddconfig`, `params.embed_dim`, `params.n_embed`)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)
    resolution: int = 256  # the training size: it decides which levels attend, whatever size is encoded
    z_channels: int = 256
    in_channels: int = 3
    out_ch: int = 3
    embed_dim: int = 256
    n_embed: int = 8192

    def __post_init__(self):
        object.__setattr__(self, 'ch_mult', tuple(self.ch_mult))
        object.__setattr__(self, 'attn_resolutions', tuple(self.attn_resolutions))
        for width in {self.ch * m for m in self.ch_mult}:
            if width % _NORM_GROUPS:
                raise ValueError(f'ch * ch_mult gives {width} channels; GroupNorm needs multiples of {_NORM_GROUPS}')
        if self.embed_dim != self.z_channels:
            # GumbelVQ projects quant_conv's embed_dim outputs with a conv built for z_channels inputs.
            raise ValueError(f'embed_dim ({self.embed_dim}) must equal z_channels ({self.z_channels}) in GumbelVQ')

    @property
    def downsample(self) -> int:
        """Pixels per code along each side."""
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> 'VQGANConfig':
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f'unknown VQGAN config fields: {sorted(unknown)}')
        return cls(**fields)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> 'VQGANConfig':
        """Reads taming's `model.yaml` (a GumbelVQ: `model.params` with `ddconfig`, `embed_dim`, `n_embed`)."""
        with open(path) as f:
            document = yaml.safe_load(f)
        try:
            params = document['model']['params']
            ddconfig = params['ddconfig']
            fields = dict(embed_dim=params['embed_dim'], n_embed=params['n_embed'])
        except (KeyError, TypeError) as missing:
            raise ValueError(f'{path} is not a taming model.yaml: model.params[.ddconfig] lacks {missing}') from None
        if ddconfig.get('double_z', False):
            raise ValueError(f'{path}: ddconfig.double_z is true, which is a KL autoencoder, not a VQGAN')
        if ddconfig.get('dropout', 0.0):
            raise ValueError(f'{path}: ddconfig.dropout is {ddconfig["dropout"]}; this VQGAN is inference-only')
        names = (
            'ch',
            'ch_mult',
            'num_res_blocks',
            'attn_resolutions',
            'resolution',
            'z_channels',
            'in_channels',
            'out_ch',
        )
        lacking = [n for n in names if n not in ddconfig]
        if lacking:
            raise ValueError(f'{path}: ddconfig lacks {lacking}')
        return cls(**fields, **{n: ddconfig[n] for n in names})


PRESETS = {
    'ofa': VQGANConfig(),  # VQGAN OpenImages f=8, 8192 codes, Gumbel quantization (about 69M parameters)
    # The real f=8 structure with few channels and codes, for tests.
    'small': VQGANConfig(ch=32, ch_mult=(1, 1, 2, 4), num_res_blocks=2, z_channels=64, embed_dim=64, n_embed=512),
}

_conv3 = functools.partial(nn.Conv, kernel_size=(3, 3), padding=1)
_conv1 = functools.partial(nn.Conv, kernel_size=(1, 1))
# Exact two-pass variance, as torch's GroupNorm computes it.
_norm = functools.partial(nn.GroupNorm, num_groups=_NORM_GROUPS, epsilon=1e-6, use_fast_variance=False)


class ResnetBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        h = _conv3(self.features, name='conv1')(nn.swish(_norm(name='norm1')(x)))
        h = _conv3(self.features, name='conv2')(nn.swish(_norm(name='norm2')(h)))
        if x.shape[-1] != self.features:
            x = _conv1(self.features, name='nin_shortcut')(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a [b, h, w, c] map."""

    @nn.compact
    def __call__(self, x):
        b, height, width, c = x.shape
        h = _norm(name='norm')(x)
        q, k, v = (_conv1(c, name=n)(h).reshape(b, height * width, c) for n in 'qkv')
        weights = jax.nn.softmax(jnp.einsum('bic,bjc->bij', q, k) * c**-0.5, axis=-1)
        out = jnp.einsum('bij,bjc->bic', weights, v).reshape(b, height, width, c)
        return x + _conv1(c, name='proj_out')(out)


class Downsample(nn.Module):
    @nn.compact
    def __call__(self, x):
        # taming pads right and bottom only, then convolves unpadded with stride 2.
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return nn.Conv(x.shape[-1], (3, 3), strides=2, padding='VALID', name='conv')(x)


class Upsample(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest neighbour
        return _conv3(x.shape[-1], name='conv')(x)


class Mid(nn.Module):
    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        x = ResnetBlock(features, name='block_1')(x)
        x = AttnBlock(name='attn_1')(x)
        return ResnetBlock(features, name='block_2')(x)


class Level(nn.Module):
    """Resnet blocks, each followed by attention where the level attends; then resampling unless it is the last."""

    features: int
    num_blocks: int
    attend: bool
    resample: str | None  # 'down', 'up' or None

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_blocks):
            x = ResnetBlock(self.features, name=f'block_{i}')(x)
            if self.attend:
                x = AttnBlock(name=f'attn_{i}')(x)
        if self.resample == 'down':
            x = Downsample(name='downsample')(x)
        elif self.resample == 'up':
            x = Upsample(name='upsample')(x)
        return x


class Encoder(nn.Module):
    config: VQGANConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        x = _conv3(c.ch, name='conv_in')(x)
        last = len(c.ch_mult) - 1
        for i, mult in enumerate(c.ch_mult):
            x = Level(
                c.ch * mult,
                c.num_res_blocks,
                c.resolution // 2**i in c.attn_resolutions,
                'down' if i != last else None,
                name=f'down_{i}',
            )(x)
        x = Mid(name='mid')(x)
        return _conv3(c.z_channels, name='conv_out')(nn.swish(_norm(name='norm_out')(x)))


class Decoder(nn.Module):
    config: VQGANConfig

    @nn.compact
    def __call__(self, z):
        c = self.config
        last = len(c.ch_mult) - 1
        x = _conv3(c.ch * c.ch_mult[last], name='conv_in')(z)
        x = Mid(name='mid')(x)
        for i in reversed(range(len(c.ch_mult))):
            x = Level(
                c.ch * c.ch_mult[i],
                c.num_res_blocks + 1,
                c.resolution // 2**i in c.attn_resolutions,
                'up' if i != 0 else None,
                name=f'up_{i}',
            )(x)
        return _conv3(c.out_ch, name='conv_out')(nn.swish(_norm(name='norm_out')(x)))


class GumbelQuantize(nn.Module):
    config: VQGANConfig

    def setup(self):
        self.proj = _conv1(self.config.n_embed)
        self.embed = nn.Embed(self.config.n_embed, self.config.embed_dim)


class VQGAN(nn.Module):
    """Images are NHWC floats in [-1, 1]; code grids are [b, H / f, W / f] with f = config.downsample."""

    config: VQGANConfig

    def setup(self):
        c = self.config
        self.encoder = Encoder(c)
        self.quant_conv = _conv1(c.embed_dim)
        self.quantize = GumbelQuantize(c)
        self.post_quant_conv = _conv1(c.z_channels)
        self.decoder = Decoder(c)

    def logits(self, images: jax.Array) -> jax.Array:
        """float [b, H, W, in_channels] -> code logits float32 [b, H / f, W / f, n_embed]."""
        return self.quantize.proj(self.quant_conv(self.encoder(images)))

    def encode(self, images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """Codes int32 [b, H / f, W / f]: the most likely code, or with `rng` a draw as OFA's code extraction makes
        (its hard Gumbel-softmax picks argmax(logits + Gumbel noise))."""
        logits = self.logits(images)
        if rng is not None:
            logits = logits + jax.random.gumbel(rng, logits.shape, logits.dtype)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def decode(self, codes: jax.Array) -> jax.Array:
        """int [b, h, w] -> float [b, h * f, w * f, out_ch], about [-1, 1] (not clamped)."""
        return self.decoder(self.post_quant_conv(self.quantize.embed(codes)))

    def __call__(self, images: jax.Array) -> jax.Array:
        """Reconstruction through the argmax codes (initializes every parameter)."""
        return self.decode(self.encode(images))


def to_pixels(images: jax.Array) -> jax.Array:
    """Decoder output -> uint8 pixels as OFA saves its images: clamp to [-1, 1], then (x + 1) / 2 * 255, truncated."""
    return ((jnp.clip(images, -1.0, 1.0) + 1.0) / 2.0 * 255.0).astype(jnp.uint8)


def from_pixels(images: jax.Array) -> jax.Array:
    """uint8 pixels -> the encoder's input range: x / 255 * 2 - 1."""
    return jnp.asarray(images, jnp.float32) / 255.0 * 2.0 - 1.0


def abstract_variables(config: VQGANConfig) -> dict[str, Any]:
    """Variable shapes (jax.ShapeDtypeStruct) without allocating them."""
    size = 2 * config.downsample
    images = jax.ShapeDtypeStruct((1, size, size, config.in_channels), jnp.float32)
    return jax.eval_shape(VQGAN(config).init, jax.random.key(0), images)


# Flax module path -> taming state-dict name: 'down_0' -> 'down.0' as in torch_layout.py, but the middle's
# 'block_1', 'attn_1', 'block_2' keep their underscores in taming.
_MID = re.compile(r'\.mid\.(block|attn)\.(\d+)\.')


def torch_name(path: tuple[str, ...]) -> str:
    """('encoder', 'down_0', 'block_1', 'conv1', 'kernel') -> 'encoder.down.0.block.1.conv1.weight'."""
    return _MID.sub(r'.mid.\1_\2.', torch_layout.torch_name(path))


def from_state_dict(state_dict: dict[str, np.ndarray], config: VQGANConfig) -> dict[str, Any]:
    """Flax variables ({'params': ...}, numpy float32) from a GumbelVQ state dict (`loss.*` entries ignored).

    Raises ValueError naming any missing, extra or misshapen weight."""
    weights = {k: v for k, v in state_dict.items() if not k.startswith('loss.')}
    converted = {}
    for path, leaf in flatten_dict(abstract_variables(config)['params']).items():
        name = torch_name(path)
        if name not in weights:
            raise ValueError(f'state dict lacks weight {name} (config {config})')
        expected = torch_layout.to_torch(path, np.broadcast_to(np.float32(0), leaf.shape)).shape
        if weights[name].shape != expected:
            raise ValueError(f'weight {name} has shape {weights[name].shape}, the config needs {expected}')
        converted[path] = torch_layout.to_flax(path, weights.pop(name), leaf.shape)
    if weights:
        raise ValueError(f'state dict has weights this VQGAN does not use: {sorted(weights)[:10]}')
    return {'params': unflatten_dict(converted)}


def to_state_dict(variables: dict[str, Any]) -> dict[str, np.ndarray]:
    """The GumbelVQ state dict (taming names, torch layouts) of Flax variables."""
    return {
        torch_name(path): torch_layout.to_torch(path, np.asarray(value))
        for path, value in flatten_dict(variables['params']).items()
    }


def from_lightning_checkpoint(
    checkpoint_path: str | os.PathLike, config_yaml: str | os.PathLike
) -> tuple[VQGANConfig, dict[str, Any]]:
    """(config, variables) from taming's `last.ckpt` (read without unpickling code) and its `model.yaml`."""
    config = VQGANConfig.from_yaml(config_yaml)
    return config, from_state_dict(torch_layout.read_state_dict(os.fspath(checkpoint_path)), config)


@functools.cache
def _compiled_vqgan(config: VQGANConfig) -> tuple[Callable, Callable]:
    """Jitted (encode, decode) of uint8 pixels, one pair per config so that tokenizers share compilations."""
    model = VQGAN(config)
    encode = jax.jit(lambda v, x, rng: model.apply(v, from_pixels(x), rng, method=model.encode))
    decode = jax.jit(lambda v, c: to_pixels(model.apply(v, c, method=model.decode)))
    return encode, decode


class VQGANTokenizer:
    """OFA's tokenizer: the VQGAN behind the ImageTokenizer interface of `ofa_jax.data.image_codes`, jitted.

    `encode` takes argmax codes; with `seed` set it draws codes as OFA's extraction does (a fresh draw per call,
    reproducible from the seed). Images whose sides are not multiples of `downsample` are refused."""

    def __init__(self, config: VQGANConfig, variables: dict, seed: int | None = None):
        self.config = config
        self.variables = variables
        self.downsample = config.downsample
        self.num_codes = config.n_embed
        self._encode, self._decode = _compiled_vqgan(config)
        self._rng = None if seed is None else jax.random.key(seed)

    @classmethod
    def load(cls, directory: str, seed: int | None = None) -> 'VQGANTokenizer':
        """From a directory written by `python -m ofa_jax.vqgan convert`."""
        return cls(*checkpoint.load_model(directory, VQGANConfig), seed=seed)

    def encode(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != self.config.in_channels or images.dtype != np.uint8:
            raise ValueError(
                f'images must be uint8 [batch, H, W, {self.config.in_channels}], got {images.dtype} {images.shape}'
            )
        if images.shape[1] % self.downsample or images.shape[2] % self.downsample:
            raise ValueError(f'image sides {images.shape[1]}x{images.shape[2]} must be multiples of {self.downsample}')
        rng = None
        if self._rng is not None:
            self._rng, rng = jax.random.split(self._rng)
        return np.asarray(self._encode(self.variables, images, rng))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != 3 or codes.min() < 0 or codes.max() >= self.num_codes:
            raise ValueError(
                f'codes must be [batch, h, w] in [0, {self.num_codes}), got {codes.shape} in '
                f'[{codes.min()}, {codes.max()}]'
            )
        return np.asarray(self._decode(self.variables, codes))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    convert_parser = commands.add_parser('convert', help="taming's last.ckpt + model.yaml -> an orbax checkpoint")
    convert_parser.add_argument('--checkpoint', required=True, help='Lightning checkpoint (last.ckpt)')
    convert_parser.add_argument('--config', required=True, help="taming's model.yaml")
    convert_parser.add_argument('--out', required=True, help='output directory')
    args = parser.parse_args(argv)
    config, variables = from_lightning_checkpoint(args.checkpoint, args.config)
    checkpoint.save_model(args.out, config, variables)
    print(f'wrote {args.out}: {config}')


if __name__ == '__main__':
    main()
