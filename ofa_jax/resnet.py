"""OFA's image trunk: the stem and layers 1-3 of a Bottleneck ResNet (1024 channels at stride 16 for width 64).

Images are NHWC. BatchNorm follows PyTorch exactly (biased batch variance to normalize, unbiased variance in the
running average, momentum 0.1) so statistics trained here match a converted checkpoint's.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ofa_jax.layers import DropPath, linear_rates

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
            return jnp.einsum('nhwc,cd->nhwd', x[:, :: self.stride, :: self.stride], kernel[0, 0])
        pad = self.kernel // 2
        return jax.lax.conv_general_dilated(
            x, kernel, (self.stride, self.stride), ((pad, pad), (pad, pad)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
        )


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride) -> 1x1 (x4 channels), with a projected shortcut when the shape changes."""

    planes: int
    stride: int = 1
    downsample: bool = False
    drop_path_rate: float = 0.0
    frozen_batch_norm: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        def norm(name):
            return BatchNorm(frozen=self.frozen_batch_norm, dtype=self.dtype, name=name)

        out = nn.relu(norm('bn1')(Conv(self.planes, 1, 1, self.dtype, name='conv1')(x), train))
        out = nn.relu(norm('bn2')(Conv(self.planes, 3, self.stride, self.dtype, name='conv2')(out), train))
        out = norm('bn3')(Conv(self.planes * 4, 1, 1, self.dtype, name='conv3')(out), train)
        shortcut = x
        if self.downsample:
            projection = Conv(self.planes * 4, 1, self.stride, self.dtype, name='downsample_0')
            shortcut = norm('downsample_1')(projection(x), train)
        return nn.relu(shortcut + DropPath(self.drop_path_rate)(out, deterministic=not train))


class ResNet(nn.Module):
    """Maps images [batch, H, W, 3] to features [batch, H/16, W/16, 16 * width]."""

    blocks: Sequence[int]
    width: int = 64
    drop_path_rate: float = 0.0
    frozen_batch_norm: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        x = Conv(self.width, 7, 2, self.dtype, name='conv1')(images.astype(self.dtype))
        x = nn.relu(BatchNorm(frozen=self.frozen_batch_norm, dtype=self.dtype, name='bn1')(x, train))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for layer, (num_blocks, stride) in enumerate(zip(self.blocks, (1, 2, 2)), start=1):
            planes = self.width * 2 ** (layer - 1)
            # As in OFA: the first block of a layer never drops its path; the rest ramp up to the rate.
            rates = linear_rates(self.drop_path_rate, num_blocks)
            for i in range(num_blocks):
                x = Bottleneck(
                    planes,
                    stride=stride if i == 0 else 1,
                    downsample=i == 0,
                    drop_path_rate=rates[i] if i > 0 else 0.0,
                    frozen_batch_norm=self.frozen_batch_norm,
                    dtype=self.dtype,
                    name=f'layer{layer}_{i}',
                )(x, train)
        return nn.with_logical_constraint(x, ('batch', None, None, 'conv_out'))
