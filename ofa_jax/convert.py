"""Weights between OFA's PyTorch checkpoints and ofa-jax.

    config, variables = from_torch_state_dict(state_dict)      # fairseq or HF/modelscope names
    state_dict = to_torch_state_dict(config, variables)        # modelscope names, loads into its OFAModel

CLI:
    python -m ofa_jax.convert ofa_tiny.pt OUT_DIR              # OFA checkpoint -> ofa-jax checkpoint
    python -m ofa_jax.convert --to_torch CKPT_DIR OUT.safetensors

The model size is read off the weights themselves. Checkpoint files are read without unpickling code.
"""

import argparse
import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from ofa_jax import layers
from ofa_jax.model import OFAConfig, abstract_variables, scan_layout
from ofa_jax.torch_layout import SHARED_EMBEDDING, read_state_dict, to_flax, to_torch, torch_name

# fairseq's module names -> HF/modelscope's (the names this converter works in).
FAIRSEQ_RENAMES = {
    'attn_ln': 'self_attn_mid_layer_norm',
    'self_attn_ln': 'self_attn_mid_layer_norm',
    'encoder_attn': 'cross_attn',
    'encoder_attn_layer_norm': 'cross_attn_layer_norm',
    'cross_attn_ln': 'cross_attn_mid_layer_norm',
    'ffn_layernorm': 'ffn_layer_norm',
}
# Copies of the shared token embedding.
TIED_EMBEDDINGS = ('decoder.embed_tokens.weight', 'decoder.output_projection.weight')
# Lookup buffers and counters that OFA stores beside its weights; ofa-jax derives them from the config.
_BUFFER = re.compile(r'(rp_bucket|image_position_idx|num_batches_tracked|\.version|_float_tensor)$')
_CODE_POSITION_PADDING = 768  # OFA's decoder lookup of code positions has this many overflow entries


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, 'detach'):  # a torch tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == 'torch.bfloat16':
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def normalize_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """HF/modelscope-named numpy arrays from a fairseq or HF/modelscope state dict (tensors or arrays)."""
    keys = list(state_dict)
    strip = 'model.' if keys and all(k.startswith('model.') for k in keys) else ''
    out = {}
    for key, value in state_dict.items():
        name = '.'.join(FAIRSEQ_RENAMES.get(part, part) for part in key[len(strip) :].split('.'))
        out[name] = _to_numpy(value)
    return out


def _count(state_dict: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r'(\d+)\.')
    indices = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def infer_config(state_dict: Mapping[str, np.ndarray], **overrides: Any) -> OFAConfig:
    """The architecture of a normalized state dict, read off its weight shapes; `overrides` set the rest
    (dropout, dtype, ...)."""
    try:
        vocab_size, d_model = state_dict[SHARED_EMBEDDING].shape
        num_heads = state_dict['encoder.layers.0.self_attn.c_attn'].shape[0]
        ffn_dim = state_dict['encoder.layers.0.fc1.weight'].shape[0]
        resnet_width = state_dict['encoder.embed_images.conv1.weight'].shape[0]
        token_buckets = state_dict['encoder.token_rel_pos_table_list.0.weight'].shape[0]
        image_positions = state_dict['encoder.embed_image_positions.weight'].shape[0]
        max_positions = state_dict['encoder.embed_positions.weight'].shape[0] - 2
    except KeyError as missing:
        raise ValueError(f'not an OFA (ResNet) state dict: weight {missing} is missing') from None
    derived = dict(
        vocab_size=vocab_size,
        d_model=d_model,
        num_heads=num_heads,
        ffn_dim=ffn_dim,
        resnet_width=resnet_width,
        encoder_layers=_count(state_dict, 'encoder.layers.'),
        decoder_layers=_count(state_dict, 'decoder.layers.'),
        resnet_blocks=tuple(_count(state_dict, f'encoder.embed_images.layer{i}.') for i in (1, 2, 3)),
        token_bucket_size=(token_buckets + 1) // 2,
        image_bucket_size=math.isqrt(image_positions - 1),
        max_positions=max_positions,
    )
    code_positions = state_dict.get('decoder.image_position_idx')
    if code_positions is not None:
        derived['code_image_size'] = 8 * math.isqrt(code_positions.shape[0] - 1 - _CODE_POSITION_PADDING)
    return OFAConfig(**{**derived, **overrides})


def _unrolled(config: OFAConfig) -> OFAConfig:
    """`config` with every layer unrolled: PyTorch's layout, one weight name per layer."""
    return dataclasses.replace(config, scan_layers=False, scan_resnet=False)


def from_torch_state_dict(state_dict: Mapping[str, Any], **config_overrides: Any) -> tuple[OFAConfig, dict[str, Any]]:
    """(config, variables) from an OFA PyTorch state dict (fairseq or HF/modelscope names; tensors or arrays).

    Variables are unboxed numpy float32 trees {'params', 'batch_stats'}. Raises ValueError on a missing, extra
    or misshapen weight."""
    weights = normalize_state_dict(state_dict)
    config = infer_config(weights, **config_overrides)
    for alias in TIED_EMBEDDINGS:
        if alias in weights and not np.array_equal(weights.pop(alias), weights[SHARED_EMBEDDING]):
            raise ValueError(f'{alias} differs from {SHARED_EMBEDDING}: OFA ties its input and output embeddings')
    unused = {name for name in weights if not _BUFFER.search(name)}
    variables = {}
    for collection, tree in nn.meta.unbox(abstract_variables(_unrolled(config))).items():
        converted = {}
        for path, leaf in flatten_dict(tree).items():
            name = torch_name(path)
            if name not in weights:
                raise ValueError(
                    f'state dict lacks weight {name} (a {config.encoder_layers}+'
                    f'{config.decoder_layers}-layer, d_model {config.d_model} OFA was inferred)'
                )
            weight = weights[name]
            if name == SHARED_EMBEDDING:  # zero rows up to the padded table
                weight = np.pad(weight, ((0, config.padded_vocab_size - config.vocab_size), (0, 0)))
            converted[path] = to_flax(path, weight, leaf.shape)
            unused.discard(name)
        variables[collection] = scan_layout(unflatten_dict(converted), config)
    if unused:
        raise ValueError(f'state dict has weights this model does not use: {sorted(unused)[:10]}')
    return config, variables


def to_torch_state_dict(config: OFAConfig, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """modelscope-named numpy state dict, lookup buffers included, that `OFAModel.load_state_dict` takes strictly."""
    state = {}
    for collection in ('params', 'batch_stats'):
        tree = scan_layout(nn.meta.unbox(dict(variables[collection])), _unrolled(config))
        for path, value in flatten_dict(tree).items():
            state[torch_name(path)] = to_torch(path, value)
    state[SHARED_EMBEDDING] = state[SHARED_EMBEDDING][: config.vocab_size]  # without the padding rows
    for alias in TIED_EMBEDDINGS:
        state[alias] = state[SHARED_EMBEDDING]
    for name in [n for n in state if n.endswith('.running_mean')]:
        state[name.replace('running_mean', 'num_batches_tracked')] = np.zeros((), np.int64)
    token_buckets = layers.token_relative_buckets(config.token_bucket_size, config.max_positions).astype(np.int64)
    image_ids = np.arange(config.image_bucket_size**2 + 1)
    image_buckets = layers.image_relative_buckets(image_ids, image_ids, config.image_bucket_size).astype(np.int64)
    for stack in ('encoder', 'decoder'):
        state[f'{stack}.token_rp_bucket'] = token_buckets
        state[f'{stack}.image_rp_bucket'] = image_buckets
    code_length = 1 + (config.code_image_size // 8) ** 2 + _CODE_POSITION_PADDING
    state['decoder.image_position_idx'] = layers.code_position_ids(
        code_length, config.code_image_size, config.image_bucket_size
    ).astype(np.int64)
    return state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='OFA checkpoint file (or, with --to_torch, an ofa-jax checkpoint directory)')
    parser.add_argument('out', help='ofa-jax checkpoint directory (or, with --to_torch, a .safetensors file)')
    parser.add_argument('--to_torch', action='store_true', help='convert an ofa-jax checkpoint back to PyTorch')
    args = parser.parse_args(argv)
    from ofa_jax.checkpoint import load_model, save_model

    if args.to_torch:
        from safetensors.numpy import save_file

        config, variables = load_model(args.src)
        save_file({k: np.ascontiguousarray(v) for k, v in to_torch_state_dict(config, variables).items()}, args.out)
        print(f'wrote {args.out}')
    else:
        config, variables = from_torch_state_dict(read_state_dict(args.src))
        save_model(args.out, config, variables)
        print(f'wrote {args.out}: {config}')


if __name__ == '__main__':
    main()
