"""Behaviour of the Flax OFA model itself (the nano preset, tiny images): sizes, masking, modes, errors."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ofa_jax import layers, resnet
from ofa_jax.decode import DecodeSettings, generate, sample_codes
from ofa_jax.model import OFA, PRESETS, count_params, init_variables, model_config, scan_layout

# One test process builds this module's fixtures once (tests/run.sh distributes by group).
pytestmark = pytest.mark.xdist_group('model')

PUBLISHED_PARAMS = {'tiny': 33.5e6, 'medium': 92.9e6, 'base': 182.2e6, 'large': 473.0e6, 'huge': 929.5e6}


@pytest.mark.parametrize('size', sorted(PUBLISHED_PARAMS))
def test_parameter_counts_match_ofa(size):
    assert abs(count_params(model_config(size)) / PUBLISHED_PARAMS[size] - 1) <= 0.01


def test_model_config_rejects_unknown_names():
    with pytest.raises(ValueError, match='unknown size'):
        model_config('gigantic')
    with pytest.raises(ValueError, match='unknown override'):
        model_config('tiny', d_modle=3)
    assert model_config('base', dropout=0.2).dropout == 0.2


def test_init_std_sets_every_linear_and_embedding_and_leaves_the_image_trunk_alone():
    """OFA's N(0, 0.02) by default; init_std replaces it in every Linear and Embedding (the token table's padding rows
    stay zero), not in the ResNet's convolutions, biases or norms."""
    key = jax.random.key(0)
    base = nn.meta.unbox(init_variables(model_config('nano'), key)['params'])
    wide = nn.meta.unbox(init_variables(model_config('nano', init_std=0.125), key)['params'])
    vocab_size = model_config('nano').vocab_size

    def check(path, leaf, other):
        name = jax.tree_util.keystr(path)
        if name.endswith("['embedding']") and 'embed_tokens' in name:
            leaf, other = leaf[:vocab_size], other[:vocab_size]
        if (name.endswith("['kernel']") or name.endswith("['embedding']")) and 'embed_images' not in name:
            assert np.std(leaf) == pytest.approx(0.02, rel=0.2), name
            assert np.std(other) == pytest.approx(0.125, rel=0.2), name
        else:
            np.testing.assert_array_equal(leaf, other, err_msg=name)

    jax.tree_util.tree_map_with_path(check, base, wide)


@pytest.fixture(scope='module')
def nano():
    config = model_config('nano', dropout=0.0)
    return OFA(config), init_variables(config, jax.random.key(0))


@functools.cache
def jitted(model: OFA):
    """One compiled apply per model configuration (modules compare and hash by their fields)."""
    return jax.jit(model.apply, static_argnames=('train', 'mutable', 'sample_patch_num'))


def inputs(batch=2, src_len=6, tgt_len=5, image=32, seed=0):
    rng = np.random.default_rng(seed)
    src = rng.integers(4, 50000, (batch, src_len)).astype(np.int32)
    src[:, 0], src[:, -1] = 0, 2
    tgt = rng.integers(4, 50000, (batch, tgt_len)).astype(np.int32)
    tgt[:, 0] = 0
    images = rng.uniform(-1, 1, (batch, image, image, 3)).astype(np.float32)
    return src, images, np.ones((batch,), bool), tgt


def test_every_parameter_carries_logical_axis_names(nano):
    _, variables = nano
    boxed = jax.tree_util.tree_leaves(variables['params'], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in boxed)
    assert all(len(leaf.names) == leaf.value.ndim for leaf in boxed)
    names = {name for leaf in boxed for name in leaf.names if name is not None}
    assert {'vocab', 'embed', 'mlp', 'heads', 'kv'} <= names
    assert all(leaf.value.dtype == jnp.float32 for leaf in boxed)


def test_logits_shape_and_padding_does_not_change_real_positions(nano):
    model, variables = nano
    src, images, masks, tgt = inputs()
    logits = jitted(model)(variables, src, images, masks, tgt)
    assert logits.shape == (2, 5, model.config.vocab_size) and logits.dtype == jnp.float32
    padded_src = np.concatenate([src, np.ones((2, 3), np.int32)], axis=1)
    padded_tgt = np.concatenate([tgt, np.ones((2, 2), np.int32)], axis=1)
    padded = jitted(model)(variables, padded_src, images, masks, padded_tgt)
    np.testing.assert_allclose(padded[:, :5], logits, rtol=1e-5, atol=1e-5)


def test_logits_of_chosen_token_ids_are_those_columns_of_the_full_logits(nano):
    """What scoring closed answer lists computes: only the columns of the answers' tokens."""
    model, variables = nano
    src, images, masks, tgt = inputs()
    full = jitted(model)(variables, src, images, masks, tgt)
    encoded = model.apply(variables, src, images, masks, method=OFA.encode)
    ids = np.array([2, 7, 4000, 59456, 123])
    chosen = model.apply(variables, encoded, tgt, vocab_ids=ids, method=OFA.decode)
    assert chosen.shape == (2, 5, 5) and chosen.dtype == jnp.float32
    np.testing.assert_allclose(chosen, np.asarray(full)[..., ids], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('attention', ['einsum', 'xla'])
def test_targets_sharing_a_source_decode_as_with_the_source_repeated(nano, attention):
    """Many answers to one question share its encoder output (keys and values projected once): the logits are those
    of decoding each answer against its own copy; the second source row has padding."""
    model, variables = nano
    model = OFA(dataclasses.replace(model.config, attention=attention))
    src, images, masks, _ = inputs()
    src[1, 3:] = 1
    src[1, 2] = 2
    tgt = inputs(batch=6, seed=1)[3]
    tgt[4, 3:] = 1
    encoded = model.apply(variables, src, images, masks, method=OFA.encode)
    ids = np.arange(4, 40)
    shared = model.apply(variables, encoded, tgt, vocab_ids=ids, targets_per_source=3, method=OFA.decode)
    repeated = jax.tree_util.tree_map(lambda x: jnp.repeat(x, 3, axis=0), encoded)
    separate = model.apply(variables, repeated, tgt, vocab_ids=ids, method=OFA.decode)
    np.testing.assert_allclose(shared, separate, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='batch 6 but the source has batch 2 and 2 targets per source row'):
        model.apply(variables, encoded, tgt, targets_per_source=2, method=OFA.decode)
    with pytest.raises(ValueError, match='code_masks'):
        model.apply(variables, encoded, tgt, np.zeros(6, bool), targets_per_source=3, method=OFA.decode)
    attention = layers.MultiHeadAttention(num_heads=2, init_std=0.02)
    queries, keys = jnp.ones((5, 3, 8)), jnp.ones((2, 4, 8))
    with pytest.raises(ValueError, match='5 rows of queries cannot share 2 rows of keys and values'):
        attention.init(jax.random.key(0), queries, keys, jnp.zeros(()), jnp.ones((), bool), True)


@pytest.mark.parametrize('channels, features, stride', [(4, 16, 1), (16, 4, 1), (8, 8, 2), (4, 16, 2)])
def test_a_1x1_convolution_has_the_gradients_of_xla_s_convolution(channels, features, stride):
    """The 1x1 convolutions run as matmuls with their own backward pass: its input and kernel gradients are
    those of the convolution, widening or narrowing, strided or not."""
    conv = resnet.Conv(features, 1, stride)
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, channels))
    variables = conv.init(jax.random.key(1), x)
    weights = jax.random.normal(jax.random.key(2), (2, -(-5 // stride), -(-6 // stride), features))

    def ours(x, kernel):
        return jnp.sum(conv.apply({'params': {'kernel': kernel}}, x) * weights)

    def xla(x, kernel):
        dims = ('NHWC', 'HWIO', 'NHWC')
        return jnp.sum(
            jax.lax.conv_general_dilated(x, kernel, (stride, stride), 'VALID', dimension_numbers=dims) * weights
        )

    kernel = nn.meta.unbox(variables)['params']['kernel']
    for got, expected in zip(jax.grad(ours, (0, 1))(x, kernel), jax.grad(xla, (0, 1))(x, kernel)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    'policy, saved', [('dots_saveable', 9), ('dots_with_no_batch_dims_saveable', 9), ('nothing_saveable', 0)]
)
def test_the_dots_remat_policies_keep_the_1x1_convolutions_outputs(capsys, policy, saved):
    """The 1x1 convolutions' own backward pass hides their matmul from the policies: they keep it by name."""
    trunk = resnet.ResNet((1, 1, 1), width=4, remat=True, remat_policy=policy)
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = trunk.init(jax.random.key(1), images, False)

    def loss(params):
        out, _ = trunk.apply({**variables, 'params': params}, images, True, mutable=['batch_stats'])
        return jnp.sum(out)

    jax.ad_checkpoint.print_saved_residuals(loss, variables['params'])
    assert capsys.readouterr().out.count(f"named '{layers.SAVEABLE_MATMUL}'") == saved  # 3 stages x 3 1x1s


def test_decoder_is_causal(nano):
    model, variables = nano
    src, images, masks, tgt = inputs()
    changed = tgt.copy()
    changed[:, 3:] = 7
    a = jitted(model)(variables, src, images, masks, tgt)
    b = jitted(model)(variables, src, images, masks, changed)
    np.testing.assert_allclose(a[:, :3], b[:, :3], rtol=1e-5, atol=1e-5)
    assert not np.allclose(a[:, 3:], b[:, 3:])


def test_row_with_masked_image_equals_text_only_encoding(nano):
    model, variables = nano
    src, images, _, tgt = inputs()
    masked = jitted(model)(variables, src, images, np.array([False, False]), tgt)
    text_only = jitted(model)(variables, src, None, None, tgt)
    np.testing.assert_allclose(masked, text_only, rtol=1e-5, atol=1e-5)
    with_image = jitted(model)(variables, src, images, np.array([True, True]), tgt)
    assert not np.allclose(with_image, text_only, atol=1e-3)


def test_sampling_every_patch_in_random_order_changes_nothing(nano):
    model, variables = nano
    src, images, masks, tgt = inputs()
    full = jitted(model)(variables, src, images, masks, tgt)
    sampled = jitted(model)(variables, src, images, masks, tgt, sample_patch_num=4, rngs={'dropout': jax.random.key(1)})
    shuffled = jitted(model)(
        variables, src, images, masks, tgt, sample_patch_num=(32 // 16) ** 2, rngs={'dropout': jax.random.key(1)}
    )
    np.testing.assert_allclose(shuffled, full, rtol=1e-4, atol=1e-5)
    assert sampled.shape == full.shape


def test_train_mode_updates_batch_norm_unless_frozen(nano):
    model, variables = nano
    src, images, masks, tgt = inputs()
    _, updates = jitted(model)(variables, src, images, masks, tgt, train=True, mutable='batch_stats')
    moved = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b), updates['batch_stats'], variables['batch_stats'])
    assert all(jax.tree_util.tree_leaves(moved))
    frozen = OFA(dataclasses.replace(model.config, freeze_batch_norm=True))
    _, updates = jitted(frozen)(variables, src, images, masks, tgt, train=True, mutable='batch_stats')
    jax.tree_util.tree_map(np.testing.assert_array_equal, updates['batch_stats'], variables['batch_stats'])


def test_dropout_and_drop_path_are_random_in_training_only(nano):
    _, variables = nano
    config = model_config(
        'nano', dropout=0.1, encoder_drop_path_rate=0.3, decoder_drop_path_rate=0.3, resnet_drop_path_rate=0.3
    )
    model = OFA(config)
    src, images, masks, tgt = inputs()

    def run(seed):
        out, _ = jitted(model)(
            variables,
            src,
            images,
            masks,
            tgt,
            train=True,
            mutable='batch_stats',
            rngs={'dropout': jax.random.key(seed)},
        )
        return out

    assert not np.allclose(run(0), run(1))
    np.testing.assert_array_equal(run(2), run(2))
    np.testing.assert_allclose(
        jitted(model)(variables, src, images, masks, tgt),
        jitted(OFA(model_config('nano', dropout=0.0)))(variables, src, images, masks, tgt),
        rtol=1e-6,
    )


@pytest.mark.slow  # two backward passes of the whole model
@pytest.mark.parametrize('policy', ['nothing_saveable', 'dots_saveable'])
def test_rematerialized_layers_give_the_same_loss_and_gradients(nano, policy):
    model, variables = nano
    remat = OFA(dataclasses.replace(model.config, remat=True, remat_policy=policy))
    src, images, masks, tgt = inputs()

    def loss(m, params):
        logits = m.apply({**variables, 'params': params}, src, images, masks, tgt)
        return jnp.mean(jax.nn.logsumexp(logits, -1))

    params = nn.meta.unbox(variables['params'])
    plain = jax.jit(jax.value_and_grad(lambda p: loss(model, p)))(params)
    recomputed = jax.jit(jax.value_and_grad(lambda p: loss(remat, p)))(params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), plain, recomputed)


def test_an_unknown_remat_policy_names_the_choices(nano):
    message = r"remat_policy 'dots': expected one of \('nothing_saveable'"
    with pytest.raises(ValueError, match=message):
        model_config('nano', remat_policy='dots')
    model, variables = nano
    unknown = OFA(dataclasses.replace(model.config, remat=True, remat_policy='dots'))
    with pytest.raises(ValueError, match=message):
        unknown.apply(variables, *inputs())


def test_bfloat16_compute_keeps_float32_parameters(nano):
    model, variables = nano
    src, images, masks, tgt = inputs()
    bf16 = OFA(dataclasses.replace(model.config, dtype='bfloat16'))
    fast = jax.jit(bf16.apply)(variables, src, images, masks, tgt)
    exact = jax.jit(model.apply)(variables, src, images, masks, tgt)
    assert fast.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(fast - exact)) / jnp.max(jnp.abs(exact))) < 0.1
    agreement = np.mean(np.argmax(fast, -1) == np.argmax(exact, -1))
    assert agreement >= 0.8


def test_fused_attention_gives_the_einsum_paths_logits_gradients_and_beams(nano):
    """jax.nn.dot_product_attention (the path cuDNN's kernel takes on a GPU, here XLA's) against the spelled-out
    attention: padded sources and targets (masked keys), the causal decoder, gradients and cached beam search."""
    model, variables = nano
    fused = OFA(dataclasses.replace(model.config, attention='xla'))
    src, images, masks, tgt = inputs()
    src = np.concatenate([src, np.ones((2, 3), np.int32)], axis=1)
    tgt[1, 3:] = 1
    np.testing.assert_allclose(
        jitted(fused)(variables, src, images, masks, tgt), jitted(model)(variables, src, images, masks, tgt), atol=2e-5
    )

    def loss(m, params):
        logits = m.apply({**variables, 'params': params}, src, images, masks, tgt)
        return jnp.mean(jax.nn.logsumexp(logits, -1))

    params = nn.meta.unbox(variables['params'])
    spelled, grads = (
        jax.jit(jax.grad(lambda p: loss(model, p)))(params),
        jax.jit(jax.grad(lambda p: loss(fused, p)))(params),
    )
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), spelled, grads)
    settings = DecodeSettings(beam_size=3, max_length=6)
    for a, b in zip(
        generate(model, variables, src, images, masks, settings),
        generate(fused, variables, src, images, masks, settings),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    with pytest.raises(ValueError, match="attention 'xla' has no attention dropout"):
        OFA(dataclasses.replace(fused.config, attention_dropout=0.1)).apply(
            variables, src, images, masks, tgt, train=True, mutable='batch_stats', rngs={'dropout': jax.random.key(0)}
        )


@pytest.mark.slow  # compiles both layouts forward, backward and decoding
def test_scanned_layers_compute_what_the_unrolled_layers_compute():
    """scan_layers and scan_resnet stack the same parameters (`scan_layout`, both ways): the same logits for image,
    text-only and image-code rows, gradients, batch statistics, cached beams and sampled code grids; training with
    drop path and remat runs."""
    unrolled = OFA(model_config('nano', dropout=0.0, resnet_blocks=(2, 1, 3), code_image_size=16))
    scanned = OFA(dataclasses.replace(unrolled.config, scan_layers=True, scan_resnet=True))
    variables = nn.meta.unbox(init_variables(unrolled.config, jax.random.key(0)))
    stacked = {name: scan_layout(tree, scanned.config) for name, tree in variables.items()}
    fresh = nn.meta.unbox(init_variables(scanned.config, jax.random.key(0)))
    assert jax.tree_util.tree_structure(stacked) == jax.tree_util.tree_structure(fresh)
    assert stacked['params']['decoder']['layers']['layer']['fc1']['kernel'].shape == (2, 64, 256)
    assert stacked['batch_stats']['encoder']['embed_images']['layer3_rest']['bn1']['mean'].shape == (2, 64)
    for name, tree in stacked.items():
        jax.tree_util.tree_map(np.testing.assert_array_equal, scan_layout(tree, unrolled.config), variables[name])
        assert scan_layout(tree, scanned.config) == tree

    src, images, masks, tgt = inputs()
    codes = np.array([True, False])
    for args in ((src, images, masks, tgt, codes), (src, None, None, tgt)):
        np.testing.assert_allclose(jitted(scanned)(stacked, *args), jitted(unrolled)(variables, *args), atol=1e-6)

    def train_loss(model, tree, params):
        logits, updates = model.apply(
            {**tree, 'params': params}, src, images, masks, tgt, codes, train=True, mutable='batch_stats'
        )
        return jnp.mean(jax.nn.logsumexp(logits, -1)), updates['batch_stats']

    (loss, stats), grads = jax.jit(
        jax.value_and_grad(functools.partial(train_loss, unrolled, variables), has_aux=True)
    )(variables['params'])
    (scan_loss, scan_stats), scan_grads = jax.jit(
        jax.value_and_grad(functools.partial(train_loss, scanned, stacked), has_aux=True)
    )(stacked['params'])
    np.testing.assert_allclose(scan_loss, loss, rtol=1e-6)
    for got, want in ((scan_grads, grads), (scan_stats, stats)):
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), scan_layout(got, unrolled.config), want
        )

    settings = DecodeSettings(beam_size=3, max_length=6)
    for a, b in zip(
        generate(unrolled, variables, src, images, masks, settings),
        generate(scanned, stacked, src, images, masks, settings),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    draws = [
        sample_codes(m, v, src, (100, 200), 2, jax.random.key(3))
        for m, v in ((unrolled, variables), (scanned, stacked))
    ]
    np.testing.assert_array_equal(draws[0][0], draws[1][0])

    regularized = OFA(
        dataclasses.replace(
            scanned.config,
            remat=True,
            dropout=0.1,
            encoder_drop_path_rate=0.2,
            decoder_drop_path_rate=0.2,
            resnet_drop_path_rate=0.2,
        )
    )
    logits, _ = jax.jit(functools.partial(regularized.apply, train=True, mutable='batch_stats'))(
        stacked, src, images, masks, tgt, codes, rngs={'dropout': jax.random.key(1)}
    )
    assert np.all(np.isfinite(logits)) and not np.allclose(
        logits, jitted(scanned)(stacked, src, images, masks, tgt, codes)
    )


def test_the_token_table_is_padded_and_its_padding_never_reaches_logits_or_gradients(nano):
    model, variables = nano
    table = variables['params']['embed_tokens']['embedding']
    assert table.value.shape == (59520, 64) and table.names == ('vocab', 'embed')  # 465 x 128: shards over tensor
    assert not np.any(np.asarray(table.value[59457:])) and np.all(np.any(np.asarray(table.value[:59457]), axis=1))
    src, images, masks, tgt = inputs()
    logits = jitted(model)(variables, src, images, masks, tgt)
    assert logits.shape == (2, 5, 59457)
    params = nn.meta.unbox(variables['params'])
    noisy = jax.tree_util.tree_map(lambda x: x, params)
    noisy['embed_tokens']['embedding'] = params['embed_tokens']['embedding'].at[59457:].set(5.0)
    np.testing.assert_array_equal(jitted(model)({**variables, 'params': noisy}, src, images, masks, tgt), logits)
    grads = jax.grad(lambda p: jnp.sum(model.apply({**variables, 'params': p}, src, images, masks, tgt) ** 2))(params)
    assert not np.any(np.asarray(grads['embed_tokens']['embedding'][59457:]))


def test_image_code_rows_differ_from_text_rows(nano):
    model, variables = nano
    src, images, masks, tgt = inputs()
    text = jitted(model)(variables, src, images, masks, tgt, code_masks=np.array([False, False]))
    np.testing.assert_allclose(text, jitted(model)(variables, src, images, masks, tgt), rtol=1e-6)
    mixed = jitted(model)(variables, src, images, masks, tgt, code_masks=np.array([True, False]))
    np.testing.assert_allclose(mixed[1], text[1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(mixed[0], text[0])


@pytest.mark.parametrize(
    'change, message',
    [
        (dict(images=np.zeros((2, 40, 32, 3), np.float32)), 'patch_images height 40'),
        (dict(images=np.zeros((2, 688, 688, 3), np.float32)), '42 patches'),
        (dict(images=np.zeros((2, 3, 32, 32), np.float32)), 'NHWC'),
        (dict(images=np.zeros((2, 32, 32, 3), np.uint8)), 'floating point'),
        (dict(images=np.zeros((3, 32, 32, 3), np.float32)), 'patch_images has batch 3'),
        (dict(src=np.full((2, 4), 59457, np.int32)), 'src_tokens holds ids outside'),
        (dict(src=np.zeros((2, 4), np.float32)), 'src_tokens must hold integer'),
        (dict(src=np.zeros((2, 4, 1), np.int32)), 'src_tokens must have shape'),
        (dict(tgt=np.full((2, 3), -1, np.int32)), 'prev_output_tokens holds ids outside'),
        (dict(tgt=np.zeros((3, 3), np.int32)), 'prev_output_tokens has batch 3'),
        (dict(masks=np.ones((2,), np.int32)), 'patch_masks must be a bool'),
        (dict(codes=np.ones((3,), bool)), 'code_masks must be a bool'),
    ],
)
def test_bad_input_names_the_argument(nano, change, message):
    model, variables = nano
    src, images, masks, tgt = inputs()
    args = dict(src=src, images=images, masks=masks, tgt=tgt, codes=None, **{})
    args.update(change)
    with pytest.raises(ValueError, match=message):
        model.apply(variables, args['src'], args['images'], args['masks'], args['tgt'], code_masks=args['codes'])


def test_shape_errors_surface_under_jit_before_compiling(nano):
    model, variables = nano
    src, images, masks, tgt = inputs()
    with pytest.raises(ValueError, match='patch_images width 24'):
        jax.jit(model.apply)(variables, src, images[:, :, :24], masks, tgt)


def test_relative_buckets():
    buckets = layers.token_relative_buckets(256)
    assert buckets.shape == (1024, 1024) and buckets.min() == 0 and buckets.max() == 510
    assert buckets[0, 0] == 255 and buckets[5, 3] == 257 and buckets[3, 5] == 253
    ids = layers.image_position_ids(2, 3, 42)
    np.testing.assert_array_equal(ids, [1, 2, 3, 43, 44, 45])
    image = layers.image_relative_buckets(np.array([0, 1, 44]), np.array([0, 1, 44]), 42)
    assert image[0, 0] == 6891 and image[1, 0] == 6890 and image[0, 1] == 6889
    assert image[1, 1] == 41 * 83 + 41 and image[2, 1] == 42 * 83 + 42
    assert list(layers.code_position_ids(4, 16, 42)) == [0, 1, 2, 43]
    assert layers.code_position_ids(8, 16, 42)[-1] == layers.CODE_POSITION_OVERFLOW_ID


def test_presets_are_complete():
    assert set(PRESETS) == {'nano', 'micro', 'mini', 'tiny', 'medium', 'base', 'large', 'huge'}
    # Ablation sizes grow in parameters, from nano through huge.
    order = ['nano', 'micro', 'mini', 'tiny', 'medium', 'base', 'large', 'huge']
    counts = [count_params(dataclasses.replace(PRESETS[name], vocab_size=9676)) for name in order[:4]]
    assert counts == sorted(counts) and len(set(counts)) == 4
