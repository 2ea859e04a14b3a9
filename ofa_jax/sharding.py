"""Device meshes and the logical-axis rules that place OFA's parameters and activations on them.

Mesh axes: `replica` (data parallel across slices or hosts, over the slow network), `data` (data parallel),
`fsdp` (data parallel with parameters and optimizer state sharded) and `tensor` (heads, MLP and vocabulary split).
The model names its axes logically (batch, embed, mlp, heads, ...); the rules below map them onto the mesh, and a
config may replace them without touching the model.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ('replica', 'data', 'fsdp', 'tensor')
BATCH_AXES = ('replica', 'data', 'fsdp')

# Tried in order; an axis whose mesh axes are already used by the same array falls through to the next rule
# (or stays unsharded), so activations [batch, length, embed] shard batch over fsdp and embed not at all.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ('batch', BATCH_AXES),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('vocab', 'tensor'),  # the token table's rows, padded to a multiple of 128 (OFAConfig.vocab_multiple)
    ('conv_out', 'fsdp'),
    ('conv_in', None),
    ('kv', None),
    ('joined_kv', 'tensor'),
    ('length', None),
    ('positions', None),
    ('rel_buckets', None),
    ('types', None),
    ('layers', None),  # the stacked axis of scanned layers: each device keeps every layer's shard
)


def make_mesh(
    replica: int = 1,
    data: int = -1,
    fsdp: int = 1,
    tensor: int = 1,
    num_devices: int = 0,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A mesh of all devices (or the first num_devices; or `devices`, e.g. a TPU topology's abstract ones to compile
    for); one axis may be -1 to take what the others leave. Raises ValueError naming the sizes when they do not
    multiply to the device count."""
    devices = list(devices or jax.devices())
    devices = devices[:num_devices] if num_devices else devices
    sizes = [replica, data, fsdp, tensor]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f'mesh sizes {dict(zip(MESH_AXES, sizes))}: each must be positive, at most one -1')
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f'mesh sizes {dict(zip(MESH_AXES, sizes))} do not divide the {len(devices)} devices')
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f'mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, but {len(devices)} are available'
        )
    if sizes[0] > 1:  # slices (or hosts) first: only the replica axis crosses the slow network
        grid = mesh_utils.create_hybrid_device_mesh([1, *sizes[1:]], [sizes[0], 1, 1, 1], devices)
    else:
        grid = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays whose leading axis is the batch."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def tree_shardings(boxed_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
    """NamedShardings for a tree whose leaves may be LogicallyPartitioned (others are replicated)."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, list(rules))


def variable_shardings(boxed_variables: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """Where a model's {'params', 'batch_stats'} live: parameters by their logical axes, BatchNorm statistics
    replicated. boxed_variables: `model.abstract_variables(config)`."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return {
        'params': tree_shardings(boxed_variables['params'], mesh, rules),
        'batch_stats': jax.tree_util.tree_map(lambda _: replicated, boxed_variables['batch_stats']),
    }
