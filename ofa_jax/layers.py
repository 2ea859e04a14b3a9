"""Building blocks shared by OFA's encoder and decoder: NormFormer attention and feed-forward sub-blocks,
drop path, and the relative-position buckets.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `kv`, `vocab`, ...) that the trainer maps onto
mesh axes; activations are constrained with the same names.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Every Linear and Embedding in OFA starts as N(0, 0.02), the relative-position tables included (OFAConfig.init_std).
OFA_INIT_STD = 0.02


def init_normal(std: float) -> nn.initializers.Initializer:
    return nn.initializers.normal(stddev=std)


# Decoder code positions past the code grid all share this image position id (OFA pads its lookup table with it).
CODE_POSITION_OVERFLOW_ID = 1024


class HeadsDense(nn.Module):
    """A dense layer contracting the last `contract` axes of its input: [..., embed] -> [..., heads, kv] (contract 1)
    or [..., heads, kv] -> [..., embed] (contract 2), its kernel [*contracted, *features] named `names`.

    Flax's DenseGeneral does this too but initializes a flattened kernel, which a mesh set by jax.set_mesh cannot
    constrain by the kernel's names; the values are the same (the initializer is elementwise)."""

    features: tuple[int, ...]
    contract: int
    names: tuple[str, ...]
    init_std: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = x.shape[x.ndim - self.contract :] + self.features
        kernel = self.param(
            'kernel', nn.with_logical_partitioning(init_normal(self.init_std), self.names), shape, jnp.float32
        )
        bias_names = self.names[self.contract :]
        bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, bias_names), self.features)
        contracted = (tuple(range(x.ndim - self.contract, x.ndim)), tuple(range(self.contract)))
        y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (contracted, ((), ())))
        return y + bias.astype(self.dtype)


def layer_norm(dtype: jnp.dtype, name: str, axis: str = 'embed') -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis,)),
    )


def dense(
    features: int, dtype: jnp.dtype, name: str, init_std: float, axes: tuple[str, str] = ('embed', 'joined_kv')
) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
        kernel_init=nn.with_logical_partitioning(init_normal(init_std), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
    )


def embedding(
    num: int,
    features: int,
    dtype: jnp.dtype,
    name: str,
    init_std: float,
    axes: tuple[str, str] = ('positions', 'embed'),
) -> nn.Embed:
    return nn.Embed(
        num,
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
        embedding_init=nn.with_logical_partitioning(init_normal(init_std), axes),
    )


class DropPath(nn.Module):
    """Stochastic depth: zeroes a whole sample's residual branch with probability `rate` while training (a traced
    rate in scanned layers, whose rate depends on the layer index)."""

    rate: float | jax.Array

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or (isinstance(self.rate, float) and self.rate == 0.0):
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng('dropout'), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


ATTENTION_IMPLEMENTATIONS = ('einsum', 'xla', 'cudnn')
# What a rematerialized layer keeps from its forward pass (names in jax.checkpoint_policies): nothing (recompute it
# all, least memory), every matmul result, the matmul results without a batch dimension (weights-like), everything.
REMAT_POLICIES = ('nothing_saveable', 'dots_saveable', 'dots_with_no_batch_dims_saveable', 'everything_saveable')
# A matmul with a backward pass of its own (jax.custom_vjp) is opaque to the `dots` policies: it names its output
# this, and they keep it as they keep every other matmul's.
SAVEABLE_MATMUL = 'saveable_matmul'


def rematerialized(module: type[nn.Module], policy: str, **kwargs: Any) -> type[nn.Module]:
    """`module` recomputed in the backward pass, keeping what `policy` (one of REMAT_POLICIES) saves; `kwargs` go to
    nn.remat."""
    if policy not in REMAT_POLICIES:
        raise ValueError(f'remat_policy {policy!r}: expected one of {REMAT_POLICIES}')
    keep = getattr(jax.checkpoint_policies, policy)
    if policy.startswith('dots'):
        named = jax.checkpoint_policies.save_only_these_names(SAVEABLE_MATMUL)
        keep = jax.checkpoint_policies.save_from_both_policies(keep, named)
    return nn.remat(module, policy=keep, **kwargs)


def attend(
    q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, mask: jax.Array, implementation: str
) -> jax.Array:
    """softmax(q k^T + bias, masked) v by jax.nn.dot_product_attention. q: [batch, q_len, heads, head_dim], already
    scaled; k, v: [batch, kv_len, heads, head_dim]; bias and mask broadcastable to [batch, heads, q_len, kv_len].

    cuDNN takes the mask folded into the bias, in the inputs' dtype (a fully masked row, which XLA's path and the
    einsum path spread evenly, is undefined there: OFA's rows always attend to something)."""
    if implementation == 'cudnn':
        bias, mask = jnp.where(mask, bias, -1e9).astype(q.dtype), None
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=1.0, implementation=implementation)


class MultiHeadAttention(nn.Module):
    """Attention with additive position bias and NormFormer's learned per-head output scale (`c_attn`).

    `implementation` picks how softmax(QK^T + bias)V is computed (ATTENTION_IMPLEMENTATIONS): 'einsum' spells it
    out (and is the only one with attention dropout); 'xla' and 'cudnn' call jax.nn.dot_product_attention."""

    num_heads: int
    init_std: float
    scale_factor: float = 2.0
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    implementation: str = 'einsum'

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        kv: jax.Array,
        bias: jax.Array,
        mask: jax.Array,
        deterministic: bool,
        cache: str | None = None,
        decode_position: jax.Array | None = None,
        cache_length: int = 0,
    ) -> jax.Array:
        """x: [batch, q_len, embed]; kv: [batch, kv_len, embed]; bias: float32 broadcastable to
        [batch, heads, q_len, kv_len]; mask: bool broadcastable to the same, True where attending is allowed.
        Returns [batch, q_len, embed].

        kv may also be [groups, kv_len, embed] with batch = groups * per_group: each kv row then serves per_group
        consecutive rows of x, whose queries attend to its keys and values together, projected once (many answers
        scored against one question); bias and mask have batch 1, groups or batch.

        Incremental decoding: cache='self' writes the keys/values of kv (one position) at decode_position of a
        [batch, cache_length] cache (collection 'cache') and attends over all of it; cache='cross' projects kv on
        the first call only and keeps the keys/values in the collection 'encoder_cache' ([kv batch, heads, kv_len,
        head_dim] for the einsum)."""
        d_model = x.shape[-1]
        head_dim = d_model // self.num_heads

        def projection(name):
            return HeadsDense(
                (self.num_heads, head_dim), 1, ('embed', 'heads', 'kv'), self.init_std, self.dtype, name=name
            )

        qkv_axes = ('batch', 'length', 'heads', 'kv')
        q = nn.with_logical_constraint(projection('q_proj')(x), qkv_axes) * (head_dim * self.scale_factor) ** -0.5

        def keys_values():
            return (
                nn.with_logical_constraint(projection('k_proj')(kv), qkv_axes),
                nn.with_logical_constraint(projection('v_proj')(kv), qkv_axes),
            )

        # The einsum keeps cross-attention's keys and values as [batch, heads, kv_len, head_dim]: in the
        # [batch, kv_len, heads, head_dim] they are made in, XLA:CPU transposes every layer's keys and values again
        # at each decoding step, which made OFA-Tiny's cross-attention over 268 tokens 17 times slower (beam 5,
        # batch 16).
        heads_first = cache == 'cross' and self.implementation == 'einsum'
        if cache == 'cross':
            k, v = computed_once(
                self, 'keys_values', lambda: tuple(t.swapaxes(1, 2) if heads_first else t for t in keys_values())
            )
        elif cache == 'self':
            k, v = keys_values()
            shape = (k.shape[0], cache_length) + k.shape[2:]
            cached_k = self.variable('cache', 'key', jnp.zeros, shape, k.dtype)
            cached_v = self.variable('cache', 'value', jnp.zeros, shape, v.dtype)
            cached_k.value = jax.lax.dynamic_update_slice_in_dim(cached_k.value, k, decode_position, axis=1)
            cached_v.value = jax.lax.dynamic_update_slice_in_dim(cached_v.value, v, decode_position, axis=1)
            k, v = cached_k.value, cached_v.value
        else:
            k, v = keys_values()
        rows, query_length = q.shape[:2]
        groups = k.shape[0]
        if rows % groups:
            raise ValueError(f'attention: {rows} rows of queries cannot share {groups} rows of keys and values')
        per_group = rows // groups
        if per_group > 1:  # a group's rows as one row of per_group * q_len queries
            q = q.reshape(groups, per_group * query_length, *q.shape[2:])
            bias, mask = (_grouped_queries(t, groups, per_group, query_length) for t in (bias, mask))
        if self.implementation == 'einsum':
            kv_spec = 'bhkd' if heads_first else 'bkhd'
            logits = jnp.einsum(f'bqhd,{kv_spec}->bhqk', q, k).astype(jnp.float32) + bias
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(logits, axis=-1)
            probs = nn.Dropout(self.dropout)(probs, deterministic=deterministic).astype(self.dtype)
            out = jnp.einsum(f'bhqk,{kv_spec}->bqhd', probs, v)
        elif self.implementation in ATTENTION_IMPLEMENTATIONS:
            if self.dropout and not deterministic:
                raise ValueError(
                    f'attention {self.implementation!r} has no attention dropout: set attention_dropout=0 '
                    f"(it is {self.dropout}) or attention='einsum'"
                )
            out = attend(q, k, v, bias, mask, self.implementation)
        else:
            raise ValueError(f'attention {self.implementation!r}: expected one of {ATTENTION_IMPLEMENTATIONS}')
        out = out.reshape(rows, query_length, *out.shape[2:])
        c_attn = self.param(
            'c_attn', nn.with_logical_partitioning(nn.initializers.ones, ('heads',)), (self.num_heads,), jnp.float32
        )
        out = out * c_attn.astype(self.dtype)[:, None]
        out = HeadsDense((d_model,), 2, ('heads', 'kv', 'embed'), self.init_std, self.dtype, name='out_proj')(out)
        return nn.with_logical_constraint(out, ('batch', 'length', 'embed'))


def _grouped_queries(t: jax.Array, groups: int, per_group: int, query_length: int) -> jax.Array:
    """A bias or mask broadcastable to [groups * per_group, heads, query_length, kv_len] (batch 1, groups or
    groups * per_group) -> broadcastable to [groups, heads, per_group * query_length, kv_len]: each group's rows'
    queries one after another."""
    t = jnp.asarray(t)
    t = t.reshape((1,) * (4 - t.ndim) + t.shape)
    batch, heads, length, kv_length = t.shape
    if batch == groups * per_group:
        t = t.reshape(groups, per_group, heads, length, kv_length).swapaxes(1, 2)
    elif length == 1:  # the same for every query of a group
        return t
    else:
        t = t[:, :, None]
    t = jnp.broadcast_to(t, (*t.shape[:2], per_group, query_length, kv_length))
    return t.reshape(*t.shape[:2], per_group * query_length, kv_length)


def attention_block(
    x: jax.Array,
    kv: jax.Array | None,
    bias: jax.Array,
    mask: jax.Array,
    *,
    prefix: str,
    num_heads: int,
    scale_factor: float,
    dropout: float,
    attention_dropout: float,
    implementation: str,
    drop_path: DropPath,
    deterministic: bool,
    dtype: jnp.dtype,
    init_std: float,
    **cache_args,
) -> jax.Array:
    """Pre-LN NormFormer attention: x + DropPath(Dropout(mid_LN(Attn(LN(x))))). Self-attention when kv is None.

    Called inside a layer's compact method; submodules are named `{prefix}`, `{prefix}_layer_norm` and
    `{prefix}_mid_layer_norm` as in OFA's checkpoints. cache_args go to MultiHeadAttention (incremental decoding)."""
    h = layer_norm(dtype, f'{prefix}_layer_norm')(x)
    h = MultiHeadAttention(num_heads, init_std, scale_factor, attention_dropout, dtype, implementation, name=prefix)(
        h, h if kv is None else kv, bias, mask, deterministic, **cache_args
    )
    h = layer_norm(dtype, f'{prefix}_mid_layer_norm')(h)
    h = nn.Dropout(dropout)(h, deterministic=deterministic)
    return x + drop_path(h, deterministic)


def feed_forward_block(
    x: jax.Array,
    *,
    ffn_dim: int,
    dropout: float,
    activation_dropout: float,
    drop_path: DropPath,
    deterministic: bool,
    dtype: jnp.dtype,
    init_std: float,
) -> jax.Array:
    """Pre-LN NormFormer FFN: x + DropPath(Dropout(fc2(ffn_LN(gelu(fc1(LN(x)))))))."""
    h = layer_norm(dtype, 'final_layer_norm')(x)
    h = nn.gelu(dense(ffn_dim, dtype, 'fc1', init_std, ('embed', 'mlp'))(h), approximate=False)
    h = nn.with_logical_constraint(h, ('batch', 'length', 'mlp'))
    h = nn.Dropout(activation_dropout)(h, deterministic=deterministic)
    h = layer_norm(dtype, 'ffn_layer_norm', axis='mlp')(h)
    h = dense(x.shape[-1], dtype, 'fc2', init_std, ('mlp', 'embed'))(h)
    h = nn.Dropout(dropout)(h, deterministic=deterministic)
    return x + drop_path(h, deterministic)


def token_relative_buckets(bucket_size: int, max_position: int = 1024) -> np.ndarray:
    """Bucket index [max_position, max_position] of query i and key j: exact within bucket_size/2, log-spaced beyond.

    Computed in float32 as OFA does, so the bucket boundaries agree with its tables."""
    pos = np.arange(max_position)
    relative = pos[:, None] - pos[None, :]
    mid = bucket_size // 2
    abs_pos = np.where((relative < mid) & (relative > -mid), mid - 1, np.abs(relative))
    with np.errstate(divide='ignore'):
        log_pos = (
            np.ceil(
                np.log((abs_pos / np.float32(mid)).astype(np.float32))
                / np.float32(math.log((max_position - 1) / mid))
                * np.float32(mid - 1)
            )
            + mid
        )
    buckets = np.where(abs_pos <= mid, relative, log_pos.astype(np.int32) * np.sign(relative))
    return (buckets + bucket_size - 1).astype(np.int32)


def image_relative_buckets(query_ids: np.ndarray, key_ids: np.ndarray, bucket_size: int) -> np.ndarray:
    """Bucket index [len(query_ids), len(key_ids)] between image position ids (row * bucket_size + col + 1).

    Id 0 (a token with no grid position, such as the decoder's bos) gets its own three reserved buckets."""
    num_buckets = (2 * bucket_size - 1) ** 2 + 3
    q = np.asarray(query_ids)[:, None]
    k = np.asarray(key_ids)[None, :]
    q_row, q_col = np.divmod(q - 1, bucket_size)
    k_row, k_col = np.divmod(k - 1, bucket_size)
    grid = (q_row - k_row + bucket_size - 1) * (2 * bucket_size - 1) + (q_col - k_col + bucket_size - 1)
    buckets = np.where(k == 0, num_buckets - 2, np.where(q == 0, num_buckets - 3, grid))
    return np.where((q == 0) & (k == 0), num_buckets - 1, buckets).astype(np.int32)


def image_position_ids(height: int, width: int, bucket_size: int) -> np.ndarray:
    """Position ids [height * width] of a row-major patch grid."""
    return (np.arange(height)[:, None] * bucket_size + np.arange(width)[None, :] + 1).reshape(-1)


def code_position_ids(length: int, code_image_size: int, bucket_size: int) -> np.ndarray:
    """Image position ids [length] of decoder positions when the target is image codes: bos at 0, then the
    (code_image_size / 8)^2 code grid row-major, then the overflow id."""
    side = code_image_size // 8
    t = np.arange(length)
    grid = np.concatenate([[0], image_position_ids(side, side, bucket_size)])
    return np.where(t < grid.size, grid[np.minimum(t, grid.size - 1)], CODE_POSITION_OVERFLOW_ID)


def gather_table(table: nn.Embed, buckets: np.ndarray | jax.Array) -> jax.Array:
    """Looks relative-position buckets [..., q, k] up in a [num_buckets, heads] table -> float32 [..., heads, q, k]."""
    values = table(jnp.asarray(buckets)).astype(jnp.float32)
    return jnp.moveaxis(values, -1, -3)


def position_keys(k_linear: nn.Dense, k_pos: jax.Array, num_heads: int) -> jax.Array:
    """Key side of the absolute-position bias: k_pos [b, k_len, embed] -> [b, k_len, heads, head_dim]."""
    return k_linear(k_pos).reshape(*k_pos.shape[:2], num_heads, k_pos.shape[-1] // num_heads)


def position_bias(
    q_linear: nn.Dense, keys: jax.Array, q_pos: jax.Array, num_heads: int, scale_factor: float
) -> jax.Array:
    """Disentangled absolute-position bias: (W_q p_i)(W_k p_j) per head.

    keys: `position_keys` of the key positions [b, k_len, heads, head_dim]; q_pos: [b, q_len, embed] (either b may
    be 1) -> float32 [b, heads, q_len, k_len]."""
    head_dim = q_pos.shape[-1] // num_heads
    q = q_linear(q_pos).reshape(*q_pos.shape[:2], num_heads, head_dim) * (head_dim * scale_factor) ** -0.5
    return jnp.einsum('bqhd,bkhd->bhqk', q, keys).astype(jnp.float32)


def computed_once(module: nn.Module, name: str, compute: Callable[[], Any]) -> Any:
    """compute() on the first decoding call, kept in the module's 'encoder_cache' collection for the later ones."""
    if module.has_variable('encoder_cache', name):
        return module.get_variable('encoder_cache', name)
    value = compute()
    module.put_variable('encoder_cache', name, value)
    return value


def linear_rates(rate: float, num: int) -> Sequence[float]:
    """Per-layer drop-path rates rising linearly from 0 to `rate`."""
    return np.linspace(0.0, rate, num).tolist()


def linear_rate(rate: float, index: jax.Array, num: int) -> float | jax.Array:
    """`linear_rates(rate, num)[index]` for a traced index (a scanned layer's); 0.0 stays a Python float."""
    return rate * index / (num - 1) if rate and num > 1 else 0.0
