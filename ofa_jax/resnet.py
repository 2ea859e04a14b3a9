"""OFA's image trunk: the stem and layers 1-3 of a Bottleneck ResNet (1024 channels at stride 16 for width 64).

Images are NHWC. BatchNorm follows PyTorch exactly (biased batch variance to normalize, unbiased variance in the
running average, momentum 0.1) so statistics trained here match a converted checkpoint's.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from ofa_jax.layers import SAVEABLE_MATMUL, DropPath, linear_rate, linear_rates, rematerialized

_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')  # PyTorch's kaiming_normal_


class BatchNorm(nn.Module):
    """BatchNorm over the channel (last) axis; `frozen` always uses and never updates the running statistics."""

    frozen: bool = False
    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param(
            'scale', nn.with_logical_partitioning(nn.initializers.ones, ('conv_out',)), (channels,), jnp.float32
        )
        bias = self.param(
            'bias', nn.with_logical_partitioning(nn.initializers.zeros, ('conv_out',)), (channels,), jnp.float32
        )
        running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (channels,), jnp.float32)
        running_var = self.variable('batch_stats', 'var', jnp.ones, (channels,), jnp.float32)
        x = x.astype(jnp.float32)
        if train and not self.frozen:
            axes = tuple(range(x.ndim - 1))
            mean = x.mean(axes)
            var = jnp.square(x - mean).mean(axes)
            if not self.is_initializing():
                count = x.size // channels
                running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
                running_var.value = (1 - self.momentum) * running_var.value + self.momentum * var * count / max(
                    count - 1, 1
                )
        else:
            mean, var = running_mean.value, running_var.value
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(self.dtype)


@jax.custom_vjp
def _pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A 1x1 convolution as a matmul: x [batch, H, W, in] @ kernel [in, out] -> [batch, H, W, out]."""
    return jnp.einsum('nhwc,cd->nhwd', x, kernel)


def _pointwise_forward(x, kernel):
    return _pointwise(x, kernel), (x, kernel)


def _pointwise_backward(saved, grad):
    """The kernel's gradient sums x^T grad over every pixel, so one of the two is transposed for the product, and
    XLA:CPU transposes slowly. Left to itself it transposed the gradient even where that is the wider side (a
    block's last 1x1 widens 64 channels to 256): a sixth of OFA-Tiny's train step. Here the narrower side is the
    product's left operand, the one XLA:CPU transposes."""
    x, kernel = saved
    x_rows, grad_rows = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
    over_rows = (((0,), (0,)), ((), ()))
    if x.shape[-1] <= grad.shape[-1]:
        kernel_grad = jax.lax.dot_general(x_rows, grad_rows, over_rows)
    else:
        kernel_grad = jax.lax.dot_general(grad_rows, x_rows, over_rows).T
    return jnp.einsum('nhwd,cd->nhwc', grad, kernel), kernel_grad.astype(kernel.dtype)


_pointwise.defvjp(_pointwise_forward, _pointwise_backward)


class Conv(nn.Module):
    """Bias-free 2D convolution with PyTorch's `kernel // 2` padding; kernel [k, k, in, out] as nn.Conv names it.

    A 1x1 kernel runs as a matmul over the strided input: XLA:CPU computes the weight gradient of a 1x1 convolution
    about ten times slower than that of the equal matmul, and the trunk has dozens of them.
    """

    features: int
    kernel: int
    stride: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [batch, H, W, in] -> [batch, ceil(H / stride), ceil(W / stride), features]."""
        kernel = self.param(
            'kernel',
            nn.with_logical_partitioning(_conv_init, (None, None, 'conv_in', 'conv_out')),
            (self.kernel, self.kernel, x.shape[-1], self.features),
            jnp.float32,
        ).astype(self.dtype)
        x = x.astype(self.dtype)
        if self.kernel == 1:
            out = _pointwise(x[:, :: self.stride, :: self.stride], kernel[0, 0])
            return checkpoint_name(out, SAVEABLE_MATMUL)  # kept by remat's `dots` policies, as matmuls are
        pad = self.kernel // 2
        return jax.lax.conv_general_dilated(
            x, kernel, (self.stride, self.stride), ((pad, pad), (pad, pad)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
        )


def _bottleneck(
    x: jax.Array,
    train: bool,
    drop_path_rate: float | jax.Array,
    *,
    planes: int,
    stride: int,
    downsample: bool,
    frozen_batch_norm: bool,
    dtype: jnp.dtype,
) -> jax.Array:
    """The body of a Bottleneck block, its submodules created in the calling module's compact method."""

    def norm(name):
        return BatchNorm(frozen=frozen_batch_norm, dtype=dtype, name=name)

    out = nn.relu(norm('bn1')(Conv(planes, 1, 1, dtype, name='conv1')(x), train))
    out = nn.relu(norm('bn2')(Conv(planes, 3, stride, dtype, name='conv2')(out), train))
    out = norm('bn3')(Conv(planes * 4, 1, 1, dtype, name='conv3')(out), train)
    shortcut = x
    if downsample:
        shortcut = norm('downsample_1')(Conv(planes * 4, 1, stride, dtype, name='downsample_0')(x), train)
    return nn.relu(shortcut + DropPath(drop_path_rate)(out, deterministic=not train))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride) -> 1x1 (x4 channels), with a projected shortcut when the shape changes."""

    planes: int
    stride: int = 1
    downsample: bool = False
    frozen_batch_norm: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, drop_path_rate: float = 0.0) -> jax.Array:
        return _bottleneck(
            x,
            train,
            drop_path_rate,
            planes=self.planes,
            stride=self.stride,
            downsample=self.downsample,
            frozen_batch_norm=self.frozen_batch_norm,
            dtype=self.dtype,
        )


class RepeatedBottleneck(nn.Module):
    """Blocks 1.. of a stage (same shape in and out) as the body of a scan over the scanned block index."""

    planes: int
    num_blocks: int  # in the whole stage, block 0 included
    drop_path_rate: float  # of the stage's last block
    train: bool
    frozen_batch_norm: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, index: jax.Array) -> tuple[jax.Array, None]:
        y = _bottleneck(
            x,
            self.train,
            linear_rate(self.drop_path_rate, index, self.num_blocks),
            planes=self.planes,
            stride=1,
            downsample=False,
            frozen_batch_norm=self.frozen_batch_norm,
            dtype=self.dtype,
        )
        return y, None


class ResNet(nn.Module):
    """Maps images [batch, H, W, 3] to features [batch, H/16, W/16, 16 * width].

    `remat` recomputes each block in the backward pass, keeping what `remat_policy` saves; `scan` runs the blocks
    after the first of each stage as one scanned block `layer{stage}_rest` (parameters and statistics stacked on a
    leading axis) instead of unrolled `layer{stage}_{i}`, which compiles the 23 or 36 blocks of the large trunks
    once."""

    blocks: Sequence[int]
    width: int = 64
    drop_path_rate: float = 0.0
    frozen_batch_norm: bool = False
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    remat_policy: str = 'nothing_saveable'
    scan: bool = False

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        x = Conv(self.width, 7, 2, self.dtype, name='conv1')(images.astype(self.dtype))
        x = nn.relu(BatchNorm(frozen=self.frozen_batch_norm, dtype=self.dtype, name='bn1')(x, train))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        # train and the drop-path rate stay Python values under remat: they decide what is traced.
        block_cls = Bottleneck
        if self.remat:
            block_cls = rematerialized(Bottleneck, self.remat_policy, static_argnums=(2, 3))
        common = dict(frozen_batch_norm=self.frozen_batch_norm, dtype=self.dtype)
        for layer, (num_blocks, stride) in enumerate(zip(self.blocks, (1, 2, 2)), start=1):
            planes = self.width * 2 ** (layer - 1)
            x = block_cls(planes, stride, downsample=True, name=f'layer{layer}_0', **common)(x, train, 0.0)
            # As in OFA: the first block of a layer never drops its path; the rest ramp up to the rate.
            if self.scan and num_blocks > 1:
                body = RepeatedBottleneck
                if self.remat:
                    body = rematerialized(RepeatedBottleneck, self.remat_policy, prevent_cse=False)
                stage = nn.scan(
                    body,
                    variable_axes={'params': 0, 'batch_stats': 0},
                    split_rngs={'params': True, 'dropout': True},
                    length=num_blocks - 1,
                    metadata_params={nn.PARTITION_NAME: 'layers'},
                )
                rest = stage(planes, num_blocks, self.drop_path_rate, train, name=f'layer{layer}_rest', **common)
                x, _ = rest(x, jnp.arange(1, num_blocks))
                continue
            rates = linear_rates(self.drop_path_rate, num_blocks)
            for i in range(1, num_blocks):
                x = block_cls(planes, name=f'layer{layer}_{i}', **common)(x, train, rates[i])
        return nn.with_logical_constraint(x, ('batch', None, None, 'conv_out'))
