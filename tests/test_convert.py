"""Weight conversion both ways, size inference, the checkpoint CLI and its errors (nano model, no reference)."""

import argparse
import collections
import dataclasses

import jax
import numpy as np
import pytest
import torch
from flax import linen as nn
from safetensors.numpy import load_file

from ofa_jax import convert
from ofa_jax.checkpoint import load_model, save_model
from ofa_jax.model import OFA, init_variables, model_config, scan_layout

# One test process builds this module's fixtures once (tests/run.sh distributes by group).
pytestmark = pytest.mark.xdist_group('convert')


@pytest.fixture(scope='module')
def nano():
    config = model_config('nano', resnet_blocks=(1, 2, 1), decoder_layers=3, code_image_size=256)
    variables = nn.meta.unbox(init_variables(config, jax.random.key(0)))
    return config, variables


def assert_same_tree(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_round_trip_infers_the_architecture(nano):
    config, variables = nano
    state = convert.to_torch_state_dict(config, variables)
    assert state['decoder.output_projection.weight'] is state['encoder.embed_tokens.weight']
    inferred, converted = convert.from_torch_state_dict(state)
    assert inferred == config
    assert_same_tree(converted, variables)


def test_a_scanned_model_converts_to_the_unrolled_models_state_dict(nano):
    config, variables = nano
    scanned = dataclasses.replace(config, scan_layers=True, scan_resnet=True)
    stacked = {name: scan_layout(tree, scanned) for name, tree in variables.items()}
    assert_same_tree(convert.to_torch_state_dict(scanned, stacked), convert.to_torch_state_dict(config, variables))


def test_a_model_saved_before_the_token_table_was_padded_loads_padded(nano, tmp_path):
    config, variables = nano
    table = variables['params']['embed_tokens']['embedding']
    assert table.shape[0] == config.padded_vocab_size > config.vocab_size
    unpadded = {**variables['params'], 'embed_tokens': {'embedding': table[: config.vocab_size]}}
    save_model(tmp_path / 'model', config, {**variables, 'params': unpadded})
    assert_same_tree(load_model(tmp_path / 'model')[1], variables)


def test_overrides_set_what_weights_cannot_tell(nano):
    config, variables = nano
    inferred, _ = convert.from_torch_state_dict(
        convert.to_torch_state_dict(config, variables), dropout=0.0, dtype='bfloat16'
    )
    assert inferred.dropout == 0.0 and inferred.dtype == 'bfloat16' and inferred.d_model == config.d_model


def test_torch_tensors_and_hf_prefix_are_accepted(nano):
    config, variables = nano
    state = {
        f'model.{k}': torch.from_numpy(np.array(v)) for k, v in convert.to_torch_state_dict(config, variables).items()
    }
    state['model.encoder.embed_tokens.weight'] = state['model.encoder.embed_tokens.weight'].bfloat16()
    _, converted = convert.from_torch_state_dict(
        {
            k: v
            for k, v in state.items()
            if not k.startswith('model.decoder.output_projection') and not k.startswith('model.decoder.embed_tokens')
        }
    )
    embedding = converted['params']['embed_tokens']['embedding']
    np.testing.assert_allclose(embedding, variables['params']['embed_tokens']['embedding'], rtol=1e-2)


def test_bad_state_dicts_name_the_weight(nano):
    config, variables = nano
    state = convert.to_torch_state_dict(config, variables)
    missing = {k: v for k, v in state.items() if k != 'decoder.layers.1.fc2.bias'}
    with pytest.raises(ValueError, match='decoder.layers.1.fc2.bias'):
        convert.from_torch_state_dict(missing)
    with pytest.raises(ValueError, match='does not use.*encoder.extra_head.weight'):
        convert.from_torch_state_dict({**state, 'encoder.extra_head.weight': np.zeros(3)})
    untied = {**state, 'decoder.output_projection.weight': state['encoder.embed_tokens.weight'] + 1}
    with pytest.raises(ValueError, match='ties its input and output embeddings'):
        convert.from_torch_state_dict(untied)
    misshapen = {**state, 'encoder.layers.1.fc2.weight': np.zeros((5, 5), np.float32)}
    with pytest.raises(ValueError, match=r'encoder.layers.1.fc2.weight has shape \(5, 5\)'):
        convert.from_torch_state_dict(misshapen)
    with pytest.raises(ValueError, match='not an OFA'):
        convert.from_torch_state_dict({'linear.weight': np.zeros((2, 2))})


def test_cli_converts_a_fairseq_checkpoint_and_back(nano, tmp_path):
    config, variables = nano
    state = collections.OrderedDict(
        (k, torch.from_numpy(np.array(v))) for k, v in convert.to_torch_state_dict(config, variables).items()
    )
    checkpoint = {
        'args': argparse.Namespace(arch='ofa_nano', lr=[1e-4]),
        'model': state,
        'optimizer_history': [{'num_updates': 10}],
    }
    torch.save(checkpoint, tmp_path / 'ofa.pt')

    convert.main([str(tmp_path / 'ofa.pt'), str(tmp_path / 'ckpt')])
    loaded_config, loaded = load_model(tmp_path / 'ckpt')
    assert loaded_config == config
    assert_same_tree(jax.tree_util.tree_map(np.asarray, loaded), variables)

    convert.main(['--to_torch', str(tmp_path / 'ckpt'), str(tmp_path / 'back.safetensors')])
    back = load_file(str(tmp_path / 'back.safetensors'))
    for name, tensor in state.items():
        np.testing.assert_array_equal(back[name], tensor.numpy(), err_msg=name)

    src = np.array([[0, 10, 20, 2]], np.int32)
    images = np.zeros((1, 32, 32, 3), np.float32)
    model = OFA(loaded_config)
    np.testing.assert_array_equal(
        jax.jit(model.apply)(loaded, src, images, np.array([True]), src[:, :3]),
        jax.jit(model.apply)(variables, src, images, np.array([True]), src[:, :3]),
    )


def test_load_model_rejects_a_directory_without_config(tmp_path):
    with pytest.raises(ValueError, match='config.json is missing'):
        load_model(tmp_path)
