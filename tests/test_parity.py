"""ofa-jax against modelscope's PyTorch OFA: same random weights, same inputs, same logits (float32)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import OFAConfig, OFAModel, torch

from ofa_jax.convert import FAIRSEQ_RENAMES, from_torch_state_dict, to_torch_state_dict
from ofa_jax.model import OFA

# Compares with modelscope's PyTorch OFA; one test process builds the module's fixtures once.
pytestmark = [pytest.mark.parity, pytest.mark.xdist_group('parity')]

TOLERANCE = 1e-5


def relative_error(ours, reference) -> float:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def reference_tiny(**overrides) -> OFAModel:
    """OFA-Tiny with every float weight and BatchNorm statistic randomized, so no part of the model is trivial."""
    config = OFAConfig(
        d_model=256,
        encoder_layers=4,
        decoder_layers=4,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=1024,
        decoder_ffn_dim=1024,
        resnet_type='resnet50',
        dropout=0.0,
        **overrides,
    )
    torch.manual_seed(0)
    model = OFAModel(config)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith('running_var'):
                tensor.uniform_(0.5, 1.5)
            elif tensor.ndim == 1:  # norms, biases, head scales, running means
                tensor.add_(0.1 * torch.randn_like(tensor))
            elif 'rel_pos_table' in name:
                tensor.normal_(0.0, 0.5)  # large enough that a wrong bucket shows in the logits
    return model.eval()


@pytest.fixture(scope='module')
def reference():
    return reference_tiny()


@pytest.fixture(scope='module')
def converted(reference):
    config, variables = from_torch_state_dict(reference.state_dict())
    return OFA(config), variables


def make_inputs(batch=2, image_size=256, src_lens=(12, 12), tgt_lens=(7, 7), with_images=True, seed=0):
    rng = np.random.default_rng(seed)
    src = np.ones((batch, max(src_lens)), np.int64)
    tgt = np.ones((batch, max(tgt_lens)), np.int64)
    for row, (s, t) in enumerate(zip(src_lens, tgt_lens)):
        src[row, :s] = np.concatenate([[0], rng.integers(4, 50000, s - 2), [2]])
        tgt[row, :t] = np.concatenate([[0], rng.integers(4, 59457, t - 1)])
    images = rng.uniform(-1, 1, (batch, image_size, image_size, 3)).astype(np.float32) if with_images else None
    return src, images, tgt


def run_reference(model, src, images, patch_masks, tgt, code_masks=None):
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(src),
            patch_images=None if images is None else torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
            patch_masks=None if patch_masks is None else torch.from_numpy(patch_masks),
            decoder_input_ids=torch.from_numpy(tgt),
            code_masks=None if code_masks is None else torch.from_numpy(code_masks),
        )
    return out.logits.numpy()


def run_ours(converted, src, images, patch_masks, tgt, code_masks=None):
    model, variables = converted
    apply = jax.jit(lambda v, *a: model.apply(v, *a))
    return np.asarray(
        apply(variables, jnp.asarray(src, jnp.int32), images, patch_masks, jnp.asarray(tgt, jnp.int32), code_masks)
    )


@pytest.mark.parametrize('image_size', [256, 384])
def test_images_at_pretraining_and_finetuning_sizes(reference, converted, image_size):
    src, images, tgt = make_inputs(image_size=image_size)
    masks = np.array([True, True])
    assert (
        relative_error(run_ours(converted, src, images, masks, tgt), run_reference(reference, src, images, masks, tgt))
        <= TOLERANCE
    )


def test_text_of_unequal_lengths_with_padding(reference, converted):
    src, images, tgt = make_inputs(batch=3, src_lens=(20, 9, 14), tgt_lens=(9, 4, 6), image_size=128)
    masks = np.array([True, True, True])
    ours, theirs = run_ours(converted, src, images, masks, tgt), run_reference(reference, src, images, masks, tgt)
    assert relative_error(ours, theirs) <= TOLERANCE


@pytest.mark.parametrize('patch_masks', [[False, False], [True, False]], ids=['text_only_rows', 'mixed_rows'])
def test_rows_without_images(reference, converted, patch_masks):
    src, images, tgt = make_inputs(image_size=128, src_lens=(10, 15), tgt_lens=(6, 5))
    masks = np.array(patch_masks)
    assert (
        relative_error(run_ours(converted, src, images, masks, tgt), run_reference(reference, src, images, masks, tgt))
        <= TOLERANCE
    )


def test_text_only_batch_without_image_input(reference, converted):
    src, _, tgt = make_inputs(with_images=False, src_lens=(16, 11), tgt_lens=(8, 8))
    assert (
        relative_error(run_ours(converted, src, None, None, tgt), run_reference(reference, src, None, None, tgt))
        <= TOLERANCE
    )


@pytest.mark.parametrize('code_masks', [[True, True], [True, False]], ids=['code_rows', 'mixed_code_and_text'])
def test_image_code_targets(reference, converted, code_masks):
    src, images, _ = make_inputs(image_size=128)
    rng = np.random.default_rng(1)
    tgt = np.concatenate([np.zeros((2, 1), np.int64), rng.integers(50265, 58457, (2, 40))], axis=1)
    masks, codes = np.array([True, True]), np.array(code_masks)
    assert (
        relative_error(
            run_ours(converted, src, images, masks, tgt, codes),
            run_reference(reference, src, images, masks, tgt, codes),
        )
        <= TOLERANCE
    )


def test_train_mode_batch_norm_statistics(reference, converted):
    _, variables = converted
    model = OFA(dataclasses.replace(converted[0].config, dropout=0.0))  # as the reference, so train mode compares
    src, images, tgt = make_inputs(image_size=128, src_lens=(12, 8))
    masks = np.array([True, False])
    reference_copy = reference_tiny()
    reference_copy.train()
    theirs = run_reference(reference_copy, src, images, masks, tgt)

    @jax.jit
    def train_forward(v):
        return model.apply(
            v,
            jnp.asarray(src, jnp.int32),
            images,
            masks,
            jnp.asarray(tgt, jnp.int32),
            train=True,
            mutable=['batch_stats'],
        )

    ours, updates = train_forward(variables)
    assert relative_error(ours, theirs) <= TOLERANCE
    # The running statistics moved exactly as PyTorch's did (unbiased variance, momentum 0.1).
    torch_state = to_torch_state_dict(model.config, {**variables, **updates})
    for name, value in reference_copy.state_dict().items():
        if name.endswith(('running_mean', 'running_var')):
            assert relative_error(torch_state[name], value.numpy()) <= TOLERANCE, name


def test_reverse_conversion_loads_strictly_into_reference(reference, converted):
    model, variables = converted
    state = {k: torch.from_numpy(np.array(v)) for k, v in to_torch_state_dict(model.config, variables).items()}
    fresh = reference_tiny()
    torch.manual_seed(123)
    for tensor in fresh.state_dict().values():
        if tensor.is_floating_point():
            tensor.normal_()
    fresh.load_state_dict(state, strict=True)
    src, images, tgt = make_inputs(image_size=128)
    masks = np.array([True, True])
    np.testing.assert_array_equal(
        run_reference(fresh.eval(), src, images, masks, tgt), run_reference(reference, src, images, masks, tgt)
    )


def test_fairseq_names_convert_to_the_same_variables(reference, converted):
    modelscope_to_fairseq = {
        'encoder': {'self_attn_mid_layer_norm': 'attn_ln'},
        'decoder': {
            'self_attn_mid_layer_norm': 'self_attn_ln',
            'cross_attn': 'encoder_attn',
            'cross_attn_layer_norm': 'encoder_attn_layer_norm',
            'cross_attn_mid_layer_norm': 'cross_attn_ln',
        },
    }
    fairseq_state = {}
    for name, tensor in reference.state_dict().items():
        parts = name.split('.')
        renames = {**modelscope_to_fairseq[parts[0]], 'ffn_layer_norm': 'ffn_layernorm'}
        fairseq_name = '.'.join(renames.get(p, p) for p in parts)
        fairseq_state[fairseq_name] = tensor
    assert set(FAIRSEQ_RENAMES.values()) >= {'self_attn_mid_layer_norm', 'cross_attn', 'ffn_layer_norm'}
    fairseq_state['encoder.version'] = torch.tensor([3.0])
    _, variables = from_torch_state_dict(fairseq_state)
    _, expected = converted
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, expected)


def test_relative_position_tables_equal_the_reference(reference):
    from modelscope.models.multi_modal.ofa.modeling_ofa import make_image_bucket_position, make_token_bucket_position

    from ofa_jax import layers

    np.testing.assert_array_equal(layers.token_relative_buckets(256), make_token_bucket_position(256).numpy())
    ids = np.arange(42 * 42 + 1)
    np.testing.assert_array_equal(
        layers.image_relative_buckets(ids, ids, 42), make_image_bucket_position(42, 83 * 83 + 3).numpy()
    )
    np.testing.assert_array_equal(layers.code_position_ids(1025, 128, 42), reference.decoder.image_position_idx.numpy())
