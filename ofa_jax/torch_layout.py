"""Flax <-> PyTorch weight layouts: state-dict names and kernel layouts, shared by the OFA and VQGAN converters.

name = torch_name(('encoder', 'layers_0', 'fc1', 'kernel'))   # 'encoder.layers.0.fc1.weight'
weight = to_torch(path, value)                                # Flax array -> its PyTorch layout
value = to_flax(path, weight, shape)                          # and back, checked against the Flax shape
"""

import math
import re

import numpy as np

from ofa_jax import torch_pickle

SHARED_EMBEDDING = 'encoder.embed_tokens.weight'  # OFA's token embedding, which the decoder shares
# Flax leaf names -> PyTorch's.
LEAF_NAMES = {
    'kernel': 'weight',
    'scale': 'weight',
    'embedding': 'weight',
    'mean': 'running_mean',
    'var': 'running_var',
}


def torch_name(path: tuple[str, ...]) -> str:
    """Flax variable path -> PyTorch state-dict name: ('encoder', 'layers_3', 'fc1', 'kernel') ->
    'encoder.layers.3.fc1.weight'."""
    *modules, leaf = path
    if modules == ['embed_tokens']:
        return SHARED_EMBEDDING
    parts = []
    for module in modules:
        module = re.sub(r'^(token|image)_rel_pos_table_(\d+)$', r'\1_rel_pos_table_list.\2', module)
        parts.append(re.sub(r'_(\d+)$', r'.\1', module))  # layers_3 -> layers.3, layer1_0 -> layer1.0
    return '.'.join(parts + [LEAF_NAMES.get(leaf, leaf)])


def to_flax(path: tuple[str, ...], weight: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A PyTorch weight -> float32 of the Flax variable's `shape` (conv [out, in, kh, kw] -> [kh, kw, in, out],
    linear [out, in] -> [in, out], then split heads). Raises ValueError if the weight does not fit `shape`."""
    expected = to_torch(path, np.broadcast_to(np.float32(0), shape)).shape  # a view: nothing allocated
    if weight.shape != expected:
        raise ValueError(
            f'weight {torch_name(path)} has shape {weight.shape}, which does not fit the inferred '
            f'model (expected {expected})'
        )
    if path[-1] == 'kernel' and weight.ndim == 4:  # conv [out, in, kh, kw] -> [kh, kw, in, out]
        weight = weight.transpose(2, 3, 1, 0)
    elif path[-1] == 'kernel':  # linear [out, in] -> [in, out], then split heads where the kernel has them
        weight = weight.T
    return weight.reshape(shape).astype(np.float32)


def to_torch(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    """A Flax variable -> float32 in PyTorch's layout: conv kernels [out, in, kh, kw], linear kernels [out, in]
    (heads merged), biases flat."""
    value = np.asarray(value, np.float32)
    if path[-1] == 'kernel' and value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if path[-1] == 'kernel':
        in_features = value.shape[:-1] if path[-2] == 'out_proj' else value.shape[:1]
        return value.reshape(math.prod(in_features), -1).T
    return value.reshape(-1) if path[-1] == 'bias' else value


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Weights from an OFA checkpoint file: fairseq `.pt`, HF `pytorch_model.bin` or `.safetensors`."""
    if path.endswith('.safetensors'):
        from safetensors.numpy import load_file

        return load_file(path)
    return torch_pickle.state_dict_from(torch_pickle.load(path))
