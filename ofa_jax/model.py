"""OFA: a unified multimodal encoder-decoder (ResNet trunk + pre-LN NormFormer transformer), in Flax Linen.

    model = OFA(model_config('tiny'))
    variables = init_variables(model.config, jax.random.key(0))
    logits = model.apply(variables, src_tokens, patch_images, patch_masks, prev_output_tokens)

Shapes: src_tokens [batch, src_len] int; patch_images [batch, H, W, 3] float (NHWC, normalized to [-1, 1]);
patch_masks [batch] bool (False: the row has no image); prev_output_tokens [batch, tgt_len] int; code_masks [batch]
bool (True: the row's target is image codes). Returns float32 logits [batch, tgt_len, vocab].
Training passes `train=True`, `rngs={'dropout': key}` and `mutable=['batch_stats']`.
"""

import dataclasses
import re
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import layers
from ofa_jax.resnet import ResNet

PAD_ID = 1
PATCH_SIZE = 16  # the ResNet trunk's stride: one encoder token per 16x16 pixels


@dataclasses.dataclass(frozen=True)
class OFAConfig:
    """Architecture and regularization of one OFA model; hashable, so it can be a Flax module attribute."""

    d_model: int = 256
    encoder_layers: int = 4
    decoder_layers: int = 4
    num_heads: int = 4
    ffn_dim: int = 1024
    resnet_blocks: tuple[int, int, int] = (3, 4, 6)
    resnet_width: int = 64  # channels of the stem; the trunk outputs 16x this
    vocab_size: int = 59457
    # The token table's rows are padded to a multiple of this so that `vocab` can shard over `tensor` (OFA's 59,457
    # ids divide by no power of two); no id reaches the padding rows and the logits keep vocab_size columns.
    vocab_multiple: int = 128
    max_positions: int = 1024
    token_bucket_size: int = 256
    image_bucket_size: int = 42  # also the largest patch grid side
    code_image_size: int = 128  # image side whose VQGAN codes (side / 8 squared) are decoder targets
    attn_scale_factor: float = 2.0
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    encoder_drop_path_rate: float = 0.0
    decoder_drop_path_rate: float = 0.0
    resnet_drop_path_rate: float = 0.0
    freeze_batch_norm: bool = False
    dtype: str = 'float32'  # compute dtype; parameters are always float32
    remat: bool = False  # recompute each transformer layer and ResNet block in the backward pass to save memory
    remat_policy: str = 'nothing_saveable'  # what remat keeps of the forward pass (layers.REMAT_POLICIES)
    # One encoder and one decoder layer traced, compiled once and looped (nn.scan) instead of every layer unrolled:
    # compiles in a fraction of the time; the same parameters, stacked on a leading `layers` axis (`scan_layout`
    # converts between the layouts).
    scan_layers: bool = False
    # The same for the ResNet blocks after the first of each stage (23 or 36 in the large trunks). For accelerators:
    # XLA:CPU computes a convolution's weight gradient inside a loop about 40x slower than unrolled.
    scan_resnet: bool = False
    # How attention's softmax(QK^T + bias)V is computed (layers.ATTENTION_IMPLEMENTATIONS): 'einsum' (explicit, with
    # attention dropout), 'xla' or 'cudnn' (jax.nn.dot_product_attention; cuDNN's fused kernel on NVIDIA GPUs).
    attention: str = 'einsum'
    # The standard deviation of every Linear and Embedding at initialization. OFA's 0.02 suits its widths (768 and
    # up: a projection's output keeps about 0.5x its input's scale); a far narrower model trained from scratch
    # learns faster from about 1/sqrt(d_model) (configs/demo.py).
    init_std: float = layers.OFA_INIT_STD

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> 'OFAConfig':
        values = dict(values)
        values['resnet_blocks'] = tuple(values['resnet_blocks'])
        return cls(**values)


PRESETS: dict[str, OFAConfig] = {
    'nano': OFAConfig(
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        num_heads=4,
        ffn_dim=256,
        resnet_blocks=(1, 1, 1),
        resnet_width=16,
    ),
    # Between nano and tiny, for model-size ablations that run on a CPU (ofa_jax.ablate).
    'micro': OFAConfig(
        d_model=96,
        encoder_layers=2,
        decoder_layers=2,
        num_heads=4,
        ffn_dim=384,
        resnet_blocks=(1, 1, 1),
        resnet_width=24,
    ),
    'mini': OFAConfig(
        d_model=128,
        encoder_layers=3,
        decoder_layers=3,
        num_heads=4,
        ffn_dim=512,
        resnet_blocks=(1, 2, 2),
        resnet_width=32,
    ),
    'tiny': OFAConfig(
        d_model=256, encoder_layers=4, decoder_layers=4, num_heads=4, ffn_dim=1024, resnet_blocks=(3, 4, 6)
    ),
    'medium': OFAConfig(
        d_model=512, encoder_layers=4, decoder_layers=4, num_heads=8, ffn_dim=2048, resnet_blocks=(3, 4, 23)
    ),
    'base': OFAConfig(
        d_model=768, encoder_layers=6, decoder_layers=6, num_heads=12, ffn_dim=3072, resnet_blocks=(3, 4, 23)
    ),
    'large': OFAConfig(
        d_model=1024, encoder_layers=12, decoder_layers=12, num_heads=16, ffn_dim=4096, resnet_blocks=(3, 8, 36)
    ),
    'huge': OFAConfig(
        d_model=1280, encoder_layers=24, decoder_layers=12, num_heads=16, ffn_dim=5120, resnet_blocks=(3, 8, 36)
    ),
}


def model_config(name: str, **overrides: Any) -> OFAConfig:
    """The preset `name` (nano, micro, mini, tiny, medium, base, large, huge) with `overrides` applied."""
    if name not in PRESETS:
        raise ValueError(f'model_config: unknown size {name!r}; choose one of {sorted(PRESETS)}')
    fields = {f.name for f in dataclasses.fields(OFAConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f'model_config: unknown override(s) {unknown}; OFAConfig fields are {sorted(fields)}')
    config = dataclasses.replace(PRESETS[name], **overrides)
    if config.remat_policy not in layers.REMAT_POLICIES:  # checked even while remat is off: a typo shows at once
        raise ValueError(f'remat_policy {config.remat_policy!r}: expected one of {layers.REMAT_POLICIES}')
    return config


@flax.struct.dataclass
class EncoderOutput:
    hidden: jax.Array  # [batch, src_seq, embed]: image patches then text
    padding_mask: jax.Array  # [batch, src_seq] bool, True at padding and absent images
    position_embedding: jax.Array  # [batch, src_seq, embed]: normalized positions, keys of the cross-attention bias


class EncoderLayer(nn.Module):
    config: OFAConfig
    drop_path_rate: float
    deterministic: bool

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array, mask: jax.Array) -> jax.Array:
        cfg, deterministic = self.config, self.deterministic
        drop_path = layers.DropPath(self.drop_path_rate)
        x = layers.attention_block(
            x,
            None,
            bias,
            mask,
            prefix='self_attn',
            num_heads=cfg.num_heads,
            scale_factor=cfg.attn_scale_factor,
            dropout=cfg.dropout,
            attention_dropout=cfg.attention_dropout,
            implementation=cfg.attention,
            drop_path=drop_path,
            deterministic=deterministic,
            dtype=cfg.compute_dtype,
            init_std=cfg.init_std,
        )
        x = layers.feed_forward_block(
            x,
            ffn_dim=cfg.ffn_dim,
            dropout=cfg.dropout,
            activation_dropout=cfg.activation_dropout,
            drop_path=drop_path,
            deterministic=deterministic,
            dtype=cfg.compute_dtype,
            init_std=cfg.init_std,
        )
        return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class DecoderLayer(nn.Module):
    config: OFAConfig
    drop_path_rate: float
    deterministic: bool

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        self_bias: jax.Array,
        self_mask: jax.Array,
        encoder_hidden: jax.Array,
        cross_bias: jax.Array,
        cross_mask: jax.Array,
        decode_position: jax.Array | None = None,
        cache_length: int = 0,
    ) -> jax.Array:
        cfg, deterministic = self.config, self.deterministic
        decoding = decode_position is not None
        drop_path = layers.DropPath(self.drop_path_rate)
        common = dict(
            num_heads=cfg.num_heads,
            scale_factor=cfg.attn_scale_factor,
            dropout=cfg.dropout,
            attention_dropout=cfg.attention_dropout,
            implementation=cfg.attention,
            drop_path=drop_path,
            deterministic=deterministic,
            dtype=cfg.compute_dtype,
            init_std=cfg.init_std,
        )
        x = layers.attention_block(
            x,
            None,
            self_bias,
            self_mask,
            prefix='self_attn',
            **common,
            **(dict(cache='self', decode_position=decode_position, cache_length=cache_length) if decoding else {}),
        )
        x = layers.attention_block(
            x,
            encoder_hidden,
            cross_bias,
            cross_mask,
            prefix='cross_attn',
            **common,
            **(dict(cache='cross') if decoding else {}),
        )
        x = layers.feed_forward_block(
            x,
            ffn_dim=cfg.ffn_dim,
            dropout=cfg.dropout,
            activation_dropout=cfg.activation_dropout,
            drop_path=drop_path,
            deterministic=deterministic,
            dtype=cfg.compute_dtype,
            init_std=cfg.init_std,
        )
        return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


def _layer_class(cls: type[nn.Module], cfg: OFAConfig) -> type[nn.Module]:
    return layers.rematerialized(cls, cfg.remat_policy) if cfg.remat else cls


def _relative_table(cfg: OFAConfig, name: str, num_buckets: int) -> nn.Embed:
    return layers.embedding(num_buckets, cfg.num_heads, cfg.compute_dtype, name, cfg.init_std, ('rel_buckets', 'heads'))


def _image_table_size(cfg: OFAConfig) -> int:
    return (2 * cfg.image_bucket_size - 1) ** 2 + 3


def _encoder_layer_bias(
    cfg: OFAConfig,
    suffix: str,
    abs_bias: jax.Array,
    token_buckets: jax.Array,
    image_buckets: jax.Array | None,
    num_patches: int,
) -> jax.Array:
    """One layer's self-attention bias [rows, heads, src, src]: the absolute-position bias plus the layer's own
    relative tables (`token_rel_pos_table{suffix}`, `image_rel_pos_table{suffix}`), images first, then text."""
    token_table = _relative_table(cfg, f'token_rel_pos_table{suffix}', 2 * cfg.token_bucket_size - 1)
    bias = abs_bias.at[:, :, num_patches:, num_patches:].add(layers.gather_table(token_table, token_buckets))
    if image_buckets is not None:
        image_table = _relative_table(cfg, f'image_rel_pos_table{suffix}', _image_table_size(cfg))
        bias = bias.at[:, :, :num_patches, :num_patches].add(layers.gather_table(image_table, image_buckets))
    return bias


def _decoder_relative_bias(
    cfg: OFAConfig, suffix: str, token_buckets: jax.Array, image_buckets: jax.Array | None, is_code: jax.Array | None
) -> jax.Array:
    """One layer's relative-position bias [1 or batch, heads, q, k]: the 2D code table on image-code rows."""
    token_table = _relative_table(cfg, f'token_rel_pos_table{suffix}', 2 * cfg.token_bucket_size - 1)
    rel = layers.gather_table(token_table, token_buckets)[None]
    if image_buckets is not None:
        image_table = _relative_table(cfg, f'image_rel_pos_table{suffix}', _image_table_size(cfg))
        rel = jnp.where(is_code, layers.gather_table(image_table, image_buckets)[None], rel)
    return rel


class EncoderBlock(nn.Module):
    """The body of the scanned encoder: one layer with its relative-position tables (named without the index)."""

    config: OFAConfig
    num_patches: int
    deterministic: bool

    @nn.compact
    def __call__(self, x, index, abs_bias, mask, token_buckets, image_buckets):
        cfg = self.config
        bias = _encoder_layer_bias(cfg, '', abs_bias, token_buckets, image_buckets, self.num_patches)
        rate = layers.linear_rate(cfg.encoder_drop_path_rate, index, cfg.encoder_layers)
        return EncoderLayer(cfg, rate, self.deterministic, name='layer')(x, bias, mask), None


class DecoderBlock(nn.Module):
    """The body of the scanned decoder: one layer with its relative-position tables (named without the index)."""

    config: OFAConfig
    cache_length: int
    deterministic: bool

    @nn.compact
    def __call__(self, x, index, self_bias, token_buckets, image_buckets, is_code, *layer_args):
        cfg = self.config
        bias = self_bias + _decoder_relative_bias(cfg, '', token_buckets, image_buckets, is_code)
        rate = layers.linear_rate(cfg.decoder_drop_path_rate, index, cfg.decoder_layers)
        layer = DecoderLayer(cfg, rate, self.deterministic, name='layer')
        return layer(x, bias, *layer_args, self.cache_length), None


def _scanned(block: type[nn.Module], cfg: OFAConfig, length: int, broadcast_args: int, remat: bool | None = None):
    """`block` looped over `length` layers: parameters and decoding caches stacked on a leading `layers` axis, each
    layer its own dropout key; the carry is the hidden state, the layer index is scanned, the rest broadcast."""
    remat = cfg.remat if remat is None else remat
    # A scan already keeps the recompute in place: no common-subexpression barrier needed.
    body = layers.rematerialized(block, cfg.remat_policy, prevent_cse=False) if remat else block
    return nn.scan(
        body,
        variable_axes={'params': 0, 'cache': 0, 'encoder_cache': 0},
        split_rngs={'params': True, 'dropout': True},
        in_axes=(0,) + (nn.broadcast,) * broadcast_args,
        length=length,
        metadata_params={nn.PARTITION_NAME: 'layers'},
    )


class Encoder(nn.Module):
    config: OFAConfig
    embed_tokens: nn.Embed

    @nn.compact
    def __call__(
        self,
        src_tokens: jax.Array,
        patch_images: jax.Array | None,
        patch_masks: jax.Array | None,
        train: bool,
        sample_patch_num: int | None = None,
    ) -> EncoderOutput:
        cfg = self.config
        dtype = cfg.compute_dtype
        batch, text_len = src_tokens.shape
        dropout = nn.Dropout(cfg.dropout)
        type_embedding = layers.embedding(2, cfg.d_model, dtype, 'type_embedding', cfg.init_std, ('types', 'embed'))

        x = self.embed_tokens(src_tokens) + type_embedding(jnp.zeros((), jnp.int32))
        x = dropout(layers.layer_norm(dtype, 'layernorm_embedding')(x), deterministic=not train)
        text_pos = layers.embedding(cfg.max_positions + 2, cfg.d_model, dtype, 'embed_positions', cfg.init_std)(
            jnp.arange(text_len)
        )
        # Positions, and so the absolute-position bias, are shared by all rows unless patches are sampled per row.
        pos_rows = 1 if sample_patch_num is None else batch
        pos = jnp.broadcast_to(layers.layer_norm(dtype, 'pos_ln')(text_pos), (pos_rows, text_len, cfg.d_model))
        valid = src_tokens != PAD_ID

        num_patches = 0
        if patch_images is not None:
            features = ResNet(
                cfg.resnet_blocks,
                cfg.resnet_width,
                cfg.resnet_drop_path_rate,
                cfg.freeze_batch_norm,
                dtype,
                remat=cfg.remat,
                remat_policy=cfg.remat_policy,
                scan=cfg.scan_resnet,
                name='embed_images',
            )(patch_images, train)
            _, height, width, channels = features.shape
            features = features.reshape(batch, height * width, channels)
            image_ids = jnp.broadcast_to(
                layers.image_position_ids(height, width, cfg.image_bucket_size), (pos_rows, height * width)
            )
            image_valid = jnp.broadcast_to(patch_masks[:, None], (batch, height * width))
            if sample_patch_num is not None:
                # A random subset of patches per row, as OFA's pretraining feeds 196 of them.
                noise = jax.random.uniform(self.make_rng('dropout'), (batch, height * width))
                order = jnp.argsort(noise, axis=1)[:, :sample_patch_num]
                features = jnp.take_along_axis(features, order[..., None], axis=1)
                image_ids = jnp.take_along_axis(image_ids, order, axis=1)
                image_valid = jnp.take_along_axis(image_valid, order, axis=1)
            num_patches = image_ids.shape[1]
            image_x = layers.dense(cfg.d_model, dtype, 'image_proj', cfg.init_std, ('conv_out', 'embed'))(features)
            image_x = image_x + type_embedding(jnp.ones((), jnp.int32))
            image_x = dropout(layers.layer_norm(dtype, 'patch_layernorm_embedding')(image_x), deterministic=not train)
            image_pos = layers.embedding(
                cfg.image_bucket_size**2 + 1, cfg.d_model, dtype, 'embed_image_positions', cfg.init_std
            )(image_ids)
            image_pos = layers.layer_norm(dtype, 'image_pos_ln')(image_pos)
            x = jnp.concatenate([image_x, x], axis=1)
            pos = jnp.concatenate([image_pos, pos], axis=1)
            valid = jnp.concatenate([image_valid, valid], axis=1)

        x = x * valid[..., None].astype(x.dtype)
        x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
        abs_bias = layers.position_bias(
            layers.dense(cfg.d_model, dtype, 'pos_q_linear', cfg.init_std),
            layers.position_keys(layers.dense(cfg.d_model, dtype, 'pos_k_linear', cfg.init_std), pos, cfg.num_heads),
            pos,
            cfg.num_heads,
            cfg.attn_scale_factor,
        )
        mask = valid[:, None, None, :]
        token_buckets = jnp.asarray(
            layers.token_relative_buckets(cfg.token_bucket_size, cfg.max_positions)[:text_len, :text_len]
        )
        image_buckets = None
        if patch_images is not None:
            if sample_patch_num is None:
                ids = layers.image_position_ids(height, width, cfg.image_bucket_size)
                image_buckets = jnp.asarray(layers.image_relative_buckets(ids, ids, cfg.image_bucket_size))
            else:
                image_buckets = _image_relative_buckets_jnp(image_ids, cfg.image_bucket_size)
        if cfg.scan_layers:
            blocks = _scanned(EncoderBlock, cfg, cfg.encoder_layers, broadcast_args=4)
            x, _ = blocks(cfg, num_patches, not train, name='layers')(
                x, jnp.arange(cfg.encoder_layers), abs_bias, mask, token_buckets, image_buckets
            )
        else:
            layer_cls = _layer_class(EncoderLayer, cfg)
            rates = layers.linear_rates(cfg.encoder_drop_path_rate, cfg.encoder_layers)
            for i in range(cfg.encoder_layers):
                bias = _encoder_layer_bias(cfg, f'_{i}', abs_bias, token_buckets, image_buckets, num_patches)
                x = layer_cls(cfg, rates[i], not train, name=f'layers_{i}')(x, bias, mask)
        x = layers.layer_norm(dtype, 'layer_norm')(x)
        return EncoderOutput(
            hidden=x, padding_mask=~valid, position_embedding=jnp.broadcast_to(pos, (batch,) + pos.shape[1:])
        )


def _image_relative_buckets_jnp(ids: jax.Array, bucket_size: int) -> jax.Array:
    """Per-row image buckets [batch, n, n] for sampled patch ids [batch, n] (ids >= 1)."""
    row, col = jnp.divmod(ids - 1, bucket_size)
    return (
        (row[:, :, None] - row[:, None, :] + bucket_size - 1) * (2 * bucket_size - 1)
        + col[:, :, None]
        - col[:, None, :]
        + bucket_size
        - 1
    )


class Decoder(nn.Module):
    config: OFAConfig
    embed_tokens: nn.Embed

    @nn.compact
    def __call__(
        self,
        prev_output_tokens: jax.Array,
        encoder_out: EncoderOutput,
        code_masks: jax.Array | None,
        train: bool,
        decode_position: jax.Array | None = None,
        cache_length: int = 0,
        vocab_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Logits [batch, length, vocab], or [batch, length, k] of the token ids vocab_ids [k] alone. Incremental
        decoding (decode_position given): prev_output_tokens [batch, 1] is the token at decode_position of a
        sequence of at most cache_length tokens; attention keys and values live in the collections 'cache' (per
        position) and 'encoder_cache' (computed on the first call)."""
        cfg = self.config
        dtype = cfg.compute_dtype
        batch, length = prev_output_tokens.shape
        decoding = decode_position is not None
        positions = cache_length if decoding else length  # key positions of the self-attention
        heads, scale = cfg.num_heads, cfg.attn_scale_factor
        self_q = layers.dense(cfg.d_model, dtype, 'self_pos_q_linear', cfg.init_std)
        self_k = layers.dense(cfg.d_model, dtype, 'self_pos_k_linear', cfg.init_std)
        cross_q = layers.dense(cfg.d_model, dtype, 'cross_pos_q_linear', cfg.init_std)
        cross_k = layers.dense(cfg.d_model, dtype, 'cross_pos_k_linear', cfg.init_std)

        def once(name, compute):
            return layers.computed_once(self, name, compute) if decoding else compute()

        def query_rows(table, axis):  # the rows of the queries: all positions, or the one being decoded
            return jax.lax.dynamic_slice_in_dim(table, decode_position, 1, axis) if decoding else table

        # Position embeddings [1, n, d] of position ids [n]. A decoding step embeds its one query position; all
        # positions' (the keys') are embedded on the first step only.
        embed_text_positions = layers.embedding(
            cfg.max_positions + 2, cfg.d_model, dtype, 'embed_positions', cfg.init_std
        )
        text_pos_ln = layers.layer_norm(dtype, 'pos_ln')

        def text_positions(ids):
            return text_pos_ln(embed_text_positions(ids))[None]

        src_keys = once(
            'cross_position_keys', lambda: layers.position_keys(cross_k, encoder_out.position_embedding, heads)
        )
        all_positions = jnp.arange(positions)
        text_keys = once(
            'self_position_keys', lambda: layers.position_keys(self_k, text_positions(all_positions), heads)
        )
        text_pos = text_positions(query_rows(all_positions, 0))
        self_bias = layers.position_bias(self_q, text_keys, text_pos, heads, scale)
        cross_bias = layers.position_bias(cross_q, src_keys, text_pos, heads, scale)
        x = self.embed_tokens(prev_output_tokens)
        text_x = layers.layer_norm(dtype, 'layernorm_embedding')(x)

        # Rows whose targets are image codes take image positions, their own embedding norm and the 2D table.
        # The code branch is also traced at initialization so its parameters always exist.
        with_codes = code_masks is not None or self.is_initializing()
        image_buckets = is_code = None
        if with_codes:
            if code_masks is None:
                code_masks = jnp.zeros((batch,), bool)
            code_ids = layers.code_position_ids(positions, cfg.code_image_size, cfg.image_bucket_size)
            embed_code_positions = layers.embedding(
                cfg.image_bucket_size**2 + 1, cfg.d_model, dtype, 'embed_image_positions', cfg.init_std
            )
            code_pos_ln = layers.layer_norm(dtype, 'image_pos_ln')

            def code_positions(ids):
                return code_pos_ln(embed_code_positions(ids))[None]

            code_keys = once(
                'self_code_position_keys',
                lambda: layers.position_keys(self_k, code_positions(jnp.asarray(code_ids)), heads),
            )
            code_pos = code_positions(query_rows(jnp.asarray(code_ids), 0))
            is_code = code_masks[:, None, None, None]
            self_bias = jnp.where(is_code, layers.position_bias(self_q, code_keys, code_pos, heads, scale), self_bias)
            cross_bias = jnp.where(is_code, layers.position_bias(cross_q, src_keys, code_pos, heads, scale), cross_bias)
            code_x = layers.layer_norm(dtype, 'code_layernorm_embedding')(x)
            x = jnp.where(code_masks[:, None, None], code_x, text_x)
            image_buckets = query_rows(
                jnp.asarray(layers.image_relative_buckets(code_ids, code_ids, cfg.image_bucket_size)), 0
            )
        else:
            x = text_x
        x = nn.Dropout(cfg.dropout)(x, deterministic=not train)
        x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))

        if decoding:  # earlier positions only; the tokens fed so far are never padding
            self_mask = (jnp.arange(positions) <= decode_position)[None, None, None, :]
        else:
            causal = jnp.tril(jnp.ones((length, length), bool))
            self_mask = causal[None, None] & (prev_output_tokens != PAD_ID)[:, None, None, :]
        cross_mask = ~encoder_out.padding_mask[:, None, None, :]
        token_buckets = layers.token_relative_buckets(cfg.token_bucket_size, cfg.max_positions)
        if positions > cfg.max_positions:  # code rows feed their last code to the forced eos: max_positions + 1
            token_buckets = np.pad(token_buckets, (0, positions - cfg.max_positions), mode='edge')
        token_buckets = query_rows(jnp.asarray(token_buckets[:positions, :positions]), 0)

        layer_args = (self_mask, encoder_out.hidden, cross_bias, cross_mask, decode_position)
        relative = (token_buckets, image_buckets, is_code)
        if cfg.scan_layers:
            blocks = _scanned(DecoderBlock, cfg, cfg.decoder_layers, broadcast_args=9, remat=cfg.remat and not decoding)
            x, _ = blocks(cfg, cache_length, not train, name='layers')(
                x, jnp.arange(cfg.decoder_layers), self_bias, *relative, *layer_args
            )
        else:
            layer_cls = DecoderLayer if decoding else _layer_class(DecoderLayer, cfg)  # remat pays in training
            rates = layers.linear_rates(cfg.decoder_drop_path_rate, cfg.decoder_layers)
            for i in range(cfg.decoder_layers):
                bias = self_bias + _decoder_relative_bias(cfg, f'_{i}', *relative)
                x = layer_cls(cfg, rates[i], not train, name=f'layers_{i}')(x, bias, *layer_args, cache_length)
        x = layers.layer_norm(dtype, 'layer_norm')(x)
        if vocab_ids is None:
            logits = self.embed_tokens.attend(x)[..., : cfg.vocab_size]  # the padding rows out
        else:  # as attend does, over the rows of vocab_ids
            table = jnp.take(self.embed_tokens.embedding, vocab_ids, axis=0)
            x, table = nn.dtypes.promote_dtype(x, table, dtype=self.embed_tokens.dtype)
            logits = jnp.dot(x, table.T)
        logits = logits.astype(jnp.float32)
        return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))


def _token_table_init(vocab_size: int, std: float):
    """N(0, std) rows for the vocabulary, zero padding rows (they get no gradient, so they stay zero)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return layers.init_normal(std)(key, shape, dtype).at[vocab_size:].set(0)

    return init


class OFA(nn.Module):
    """The whole model; `encode` and `decode` are also callable on their own (`method=OFA.encode`)."""

    config: OFAConfig

    def setup(self):
        cfg = self.config
        # One table for encoder input, decoder input and the (bias-free) output projection.
        self.embed_tokens = nn.Embed(
            cfg.padded_vocab_size,
            cfg.d_model,
            dtype=cfg.compute_dtype,
            param_dtype=jnp.float32,
            embedding_init=nn.with_logical_partitioning(
                _token_table_init(cfg.vocab_size, cfg.init_std), ('vocab', 'embed')
            ),
        )
        self.encoder = Encoder(cfg, self.embed_tokens)
        self.decoder = Decoder(cfg, self.embed_tokens)

    def __call__(
        self,
        src_tokens: jax.Array,
        patch_images: jax.Array | None,
        patch_masks: jax.Array | None,
        prev_output_tokens: jax.Array,
        code_masks: jax.Array | None = None,
        train: bool = False,
        sample_patch_num: int | None = None,
    ) -> jax.Array:
        """Logits [batch, tgt_len, vocab] (float32); see the module docstring for the inputs."""
        validate_target(self.config, prev_output_tokens, code_masks, src_tokens.shape[0])  # fail before encoding
        encoder_out = self.encode(src_tokens, patch_images, patch_masks, train, sample_patch_num)
        return self.decode(encoder_out, prev_output_tokens, code_masks, train)

    def encode(
        self,
        src_tokens: jax.Array,
        patch_images: jax.Array | None = None,
        patch_masks: jax.Array | None = None,
        train: bool = False,
        sample_patch_num: int | None = None,
    ) -> EncoderOutput:
        validate_source(self.config, src_tokens, patch_images, patch_masks, sample_patch_num)
        if patch_images is not None and patch_masks is None:
            patch_masks = jnp.ones((src_tokens.shape[0],), bool)
        return self.encoder(jnp.asarray(src_tokens), patch_images, patch_masks, train, sample_patch_num)

    def decode(
        self,
        encoder_out: EncoderOutput,
        prev_output_tokens: jax.Array,
        code_masks: jax.Array | None = None,
        train: bool = False,
        vocab_ids: jax.Array | None = None,
        targets_per_source: int = 1,
    ) -> jax.Array:
        """Logits [batch, length, vocab] of the next token at every position; with vocab_ids [k], of those token ids
        alone ([batch, length, k]: what scoring answers from a closed list needs).

        targets_per_source: each row of encoder_out (batch b) serves that many consecutive rows of
        prev_output_tokens [b * targets_per_source, length], whose cross-attention projects the row's keys and
        values once for all of them (scoring many answers to one question)."""
        if targets_per_source < 1:
            raise ValueError(f'targets_per_source must be >= 1, got {targets_per_source}')
        if targets_per_source > 1 and code_masks is not None:
            raise ValueError('code_masks: rows of image codes take a source row each (targets_per_source=1)')
        validate_target(self.config, prev_output_tokens, code_masks, encoder_out.hidden.shape[0], targets_per_source)
        return self.decoder(jnp.asarray(prev_output_tokens), encoder_out, code_masks, train, vocab_ids=vocab_ids)

    def decode_step(
        self,
        encoder_out: EncoderOutput,
        tokens: jax.Array,
        position: jax.Array,
        cache_length: int,
        code_masks: jax.Array | None = None,
    ) -> jax.Array:
        """Logits [batch, vocab] after feeding tokens [batch] at decoder position `position` (< cache_length).

        Apply with mutable=['cache', 'encoder_cache'] at position 0, then with the returned collections and
        mutable=['cache'] at each following position; the result equals `decode` over the whole prefix."""
        return self.decoder(jnp.asarray(tokens)[:, None], encoder_out, code_masks, False, position, cache_length)[:, 0]


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_tokens(config: OFAConfig, name: str, tokens: Any) -> None:
    if getattr(tokens, 'ndim', None) != 2:
        raise ValueError(f'{name} must have shape [batch, length], got shape {getattr(tokens, "shape", None)}')
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f'{name} must hold integer token ids, got dtype {tokens.dtype}')
    if tokens.shape[1] > config.max_positions:
        raise ValueError(f'{name} has length {tokens.shape[1]}, above the {config.max_positions} positions')
    if _is_concrete(tokens) and tokens.size:
        values = np.asarray(tokens)  # numpy, so no reduction is staged into an enclosing jit
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= config.vocab_size:
            raise ValueError(f'{name} holds ids outside the vocabulary [0, {config.vocab_size}): min {low}, max {high}')


def _check_row_flags(name: str, flags: Any, batch: int) -> None:
    if getattr(flags, 'shape', None) != (batch,) or flags.dtype != jnp.bool_:
        raise ValueError(
            f'{name} must be a bool array of shape [{batch}] (one flag per row), got '
            f'shape {getattr(flags, "shape", None)} dtype {getattr(flags, "dtype", None)}'
        )


def validate_source(
    config: OFAConfig, src_tokens: Any, patch_images: Any, patch_masks: Any, sample_patch_num: int | None = None
) -> None:
    """Raises ValueError naming the argument when the encoder inputs are malformed (runs before compiling)."""
    _check_tokens(config, 'src_tokens', src_tokens)
    batch = src_tokens.shape[0]
    if patch_images is None:
        if patch_masks is not None:
            raise ValueError('patch_masks given without patch_images')
        return
    if getattr(patch_images, 'ndim', None) != 4 or patch_images.shape[-1] != 3:
        raise ValueError(
            f'patch_images must be NHWC [batch, height, width, 3], got shape {getattr(patch_images, "shape", None)}'
        )
    if not jnp.issubdtype(patch_images.dtype, jnp.floating):
        raise ValueError(f'patch_images must be floating point (normalized pixels), got dtype {patch_images.dtype}')
    if patch_images.shape[0] != batch:
        raise ValueError(f'patch_images has batch {patch_images.shape[0]} but src_tokens has batch {batch}')
    for side, size in zip(('height', 'width'), patch_images.shape[1:3]):
        if size % PATCH_SIZE or not 0 < size // PATCH_SIZE <= config.image_bucket_size:
            raise ValueError(
                f'patch_images {side} {size} must be a positive multiple of {PATCH_SIZE} of at most '
                f'{config.image_bucket_size * PATCH_SIZE} ({config.image_bucket_size} patches)'
            )
    if patch_masks is not None:
        _check_row_flags('patch_masks', patch_masks, batch)
    if sample_patch_num is not None:
        num_patches = (patch_images.shape[1] // PATCH_SIZE) * (patch_images.shape[2] // PATCH_SIZE)
        if not 0 < sample_patch_num <= num_patches:
            raise ValueError(f'sample_patch_num {sample_patch_num} must be in [1, {num_patches}] for this image size')


def validate_target(
    config: OFAConfig, prev_output_tokens: Any, code_masks: Any, batch: int, targets_per_source: int = 1
) -> None:
    """Raises ValueError naming the argument when the decoder inputs are malformed (runs before compiling)."""
    _check_tokens(config, 'prev_output_tokens', prev_output_tokens)
    if prev_output_tokens.shape[0] != batch * targets_per_source:
        per_source = f' and {targets_per_source} targets per source row' if targets_per_source > 1 else ''
        raise ValueError(
            f'prev_output_tokens has batch {prev_output_tokens.shape[0]} but the source has batch {batch}{per_source}'
        )
    if code_masks is not None:
        _check_row_flags('code_masks', code_masks, batch)


# Per-layer subtrees of the unrolled layout (`{name}_{i}`) and their names in the scanned block `layers`.
_PER_LAYER_NAMES = {
    'layers': 'layer',
    'token_rel_pos_table': 'token_rel_pos_table',
    'image_rel_pos_table': 'image_rel_pos_table',
}


def scan_layout(tree: dict[str, Any], config: OFAConfig) -> dict[str, Any]:
    """A variable collection (`params` or `batch_stats`, unboxed) in the layout `config` builds (`scan_layers`,
    `scan_resnet`); what is already in it stays as is.

    Unrolled, the encoder and decoder hold `layers_{i}`, `token_rel_pos_table_{i}` and `image_rel_pos_table_{i}`, and
    the ResNet `layer{stage}_{i}`; scanned, one block `layers` holds `layer`, `token_rel_pos_table` and
    `image_rel_pos_table`, and `layer{stage}_rest` the ResNet blocks after the first, every leaf stacked on a leading
    layer axis."""
    layers_to = _stacked if config.scan_layers else _unstacked
    trunk_to = _stacked if config.scan_resnet else _unstacked
    tree = dict(tree)
    for name in ('encoder', 'decoder'):
        if name in tree:
            stack = layers_to(tree[name], 'layers', _PER_LAYER_NAMES, first=0)
            if 'embed_images' in stack:
                trunk = stack['embed_images']
                for stage in (1, 2, 3):
                    trunk = trunk_to(trunk, f'layer{stage}_rest', {f'layer{stage}': None}, first=1)
                stack = {**stack, 'embed_images': trunk}
            tree[name] = stack
    return tree


def _stacked(stack: dict[str, Any], block: str, names: dict[str, str | None], first: int) -> dict[str, Any]:
    """Moves `{name}_{i}` (i >= first) of every name into `block` (under names[name], or directly when None)."""
    rest = dict(stack)
    stacked = {}
    for unrolled, scanned in names.items():
        indices = range(first, sum(1 for key in stack if re.fullmatch(f'{unrolled}_\\d+', key)))
        if not indices:
            continue
        per_layer = [rest.pop(f'{unrolled}_{i}') for i in indices]
        leaves = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *per_layer)
        stacked.update({scanned: leaves} if scanned else leaves)
    return {**rest, block: stacked} if stacked else rest


def _unstacked(stack: dict[str, Any], block: str, names: dict[str, str | None], first: int) -> dict[str, Any]:
    if block not in stack:
        return stack
    rest = dict(stack)
    stacked = rest.pop(block)
    for unrolled, scanned in names.items():
        leaves = stacked.get(scanned) if scanned else stacked
        if leaves is None:
            continue
        for i in range(jax.tree_util.tree_leaves(leaves)[0].shape[0]):
            rest[f'{unrolled}_{first + i}'] = jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], leaves)
    return rest


def init_variables(config: OFAConfig, rng: jax.Array, image_size: int = 32) -> dict[str, Any]:
    """Fresh variables {'params', 'batch_stats'} (parameters boxed with their logical axis names).

    Initializes through every branch (image, text and image-code rows), so the tree is complete for any input."""
    model = OFA(config)
    tokens = jnp.full((1, 2), 4, jnp.int32)
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return jax.jit(model.init)(rng, tokens, images, jnp.ones((1,), bool), tokens, jnp.ones((1,), bool))


def abstract_variables(config: OFAConfig) -> dict[str, Any]:
    """Shapes and dtypes of `init_variables` (jax.ShapeDtypeStruct leaves), with nothing allocated."""
    return jax.eval_shape(lambda: init_variables(config, jax.random.key(0)))


def count_params(config: OFAConfig) -> int:
    """Number of trainable parameters (the shared token embedding counted once, its padding rows not)."""
    params = nn.meta.unbox(abstract_variables(config)['params'])
    padding = (config.padded_vocab_size - config.vocab_size) * config.d_model
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params)) - padding


def pad_token_table(params: dict[str, Any], config: OFAConfig) -> dict[str, Any]:
    """`params` whose token table has vocab_size rows (a model saved before the table was padded, or OFA's) with the
    zero padding rows `config` adds."""
    table = params['embed_tokens']['embedding']
    if table.shape[0] != config.vocab_size or config.padded_vocab_size == config.vocab_size:
        return params
    missing = config.padded_vocab_size - config.vocab_size
    return {**params, 'embed_tokens': {'embedding': np.pad(np.asarray(table), ((0, missing), (0, 0)))}}
