import argparse
import builtins
import collections
import os
import pickle
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

from ofa_jax.torch_pickle import Opaque, load, load_pickle, state_dict_from


def _save(obj, tmp_path, name='ckpt.pt'):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _assert_same(arr, tensor):
    assert isinstance(arr, np.ndarray)
    assert arr.flags.c_contiguous and arr.flags.writeable
    assert arr.shape == tuple(tensor.shape)
    if tensor.dtype == torch.bfloat16:
        assert arr.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(arr.view(np.int16), tensor.view(torch.int16).numpy())
        np.testing.assert_array_equal(arr.astype(np.float32), tensor.float().numpy())
    else:
        assert arr.dtype == tensor.numpy().dtype
        np.testing.assert_array_equal(arr, tensor.numpy())


def test_dtypes_round_trip_exactly(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        'f32': torch.randn(3, 4, generator=g),
        'f16': torch.randn(5, generator=g).half(),
        'bf16': torch.randn(2, 3, generator=g).bfloat16(),
        'f64': torch.randn(2, generator=g).double(),
        'i64': torch.arange(-3, 7),
        'i32': torch.tensor([1, -2, 3], dtype=torch.int32),
        'u8': torch.tensor([0, 255], dtype=torch.uint8),
        'bool': torch.tensor([True, False, True]),
        'c64': torch.tensor([1 + 2j, -3j], dtype=torch.complex64),
        'u16': torch.tensor([0, 65535], dtype=torch.uint16),  # pickled via _rebuild_tensor_v3
        'scalar': torch.tensor(3.5),
        'empty': torch.zeros(0, 4),
        'empty_i64': torch.zeros(2, 0, dtype=torch.int64),
    }
    loaded = load(_save(tensors, tmp_path))
    assert list(loaded) == list(tensors)
    for key, tensor in tensors.items():
        _assert_same(loaded[key], tensor)
    assert loaded['scalar'].shape == ()


def test_float8_uses_untyped_storage_path(tmp_path):
    t = torch.randn(6).to(torch.float8_e4m3fn)
    arr = load(_save(t, tmp_path))
    assert arr.dtype == ml_dtypes.float8_e4m3fn
    np.testing.assert_array_equal(arr.view(np.uint8), t.view(torch.uint8).numpy())


def test_non_contiguous_views(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    assert _assert_same(load(_save(base.t(), tmp_path)), base.t()) is None
    views = {'t': base.t(), 'slice': base[1:, 2:5], 'step': base[:, ::2], 'row': base[2]}
    loaded = load(_save(views, tmp_path, 'views.pt'))
    for key, view in views.items():
        _assert_same(loaded[key], view)


def test_tensors_sharing_one_storage(tmp_path):
    base = torch.arange(10, dtype=torch.int64)
    obj = {'head': base[:4], 'tail': base[4:].view(3, 2), 'again': base[:4]}
    path = _save(obj, tmp_path)
    assert [n for n in zipfile.ZipFile(path).namelist() if '/data/' in n] == ['ckpt/data/0']
    loaded = load(path)
    for key, tensor in obj.items():
        _assert_same(loaded[key], tensor)
    loaded['head'][0] = 99  # copies: writing one must not corrupt another
    assert loaded['again'][0] == 0 and loaded['tail'][0, 0] == 4


def test_module_state_dict(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    model(torch.randn(8, 4))  # moves running stats and num_batches_tracked
    sd = model.state_dict()
    loaded = load(_save(sd, tmp_path))
    assert isinstance(loaded, collections.OrderedDict)
    assert list(loaded) == list(sd)
    for key, tensor in sd.items():
        _assert_same(loaded[key], tensor)
    assert loaded['1.num_batches_tracked'].dtype == np.int64
    assert loaded['1.num_batches_tracked'].shape == () and loaded['1.num_batches_tracked'] == 1
    assert state_dict_from(loaded).keys() == sd.keys()


def test_parameters_are_plain_arrays(tmp_path):
    p = torch.nn.Parameter(torch.randn(2, 2))
    _assert_same(load(_save({'p': p}, tmp_path))['p'], p.detach())


def test_fairseq_checkpoint(tmp_path):
    weights = collections.OrderedDict(
        [('encoder.embed_tokens.weight', torch.randn(5, 3)), ('decoder.layers.0.fc1.bias', torch.randn(3))]
    )
    args = argparse.Namespace(arch='ofa_large', lr=[1e-4], patch_image_size=480)
    ckpt = {
        'args': args,
        'cfg': {'model': {'_name': 'ofa_large', 'dropout': 0.1}, 'task': {'_name': 'caption'}},
        'model': weights,
        'optimizer_history': [{'criterion_name': 'AdjustLabelSmoothedCrossEntropyCriterion', 'num_updates': 10}],
        'extra_state': {'epoch': 2, 'rng': np.arange(4, dtype=np.uint32), 'best': np.float64(1.5)},
        'last_optimizer_state': {'state': {0: {'exp_avg': torch.zeros(5, 3)}}},
    }
    loaded = load(_save(ckpt, tmp_path))

    ns = loaded['args']
    assert isinstance(ns, Opaque) and not isinstance(ns, argparse.Namespace)
    assert (ns.module, ns.name) == ('argparse', 'Namespace')
    assert ns.state == vars(args)
    assert loaded['cfg'] == ckpt['cfg']
    assert loaded['optimizer_history'] == ckpt['optimizer_history']
    assert isinstance(loaded['extra_state']['rng'], Opaque)  # numpy objects stay opaque
    assert loaded['extra_state']['epoch'] == 2
    np.testing.assert_array_equal(loaded['last_optimizer_state']['state'][0]['exp_avg'], np.zeros((5, 3)))

    sd = state_dict_from(loaded)
    assert list(sd) == list(weights)
    for key, tensor in weights.items():
        _assert_same(sd[key], tensor)


def test_lightning_checkpoint(tmp_path):
    weights = {'model.encoder.weight': torch.randn(2, 3), 'model.encoder.bias': torch.randn(2)}
    ckpt = {
        'epoch': 3,
        'global_step': 120,
        'pytorch-lightning_version': '2.1.0',
        'state_dict': collections.OrderedDict(weights),
        'callbacks': {"ModelCheckpoint{'monitor': 'val_loss'}": {'best_model_score': torch.tensor(0.25)}},
        'optimizer_states': [{'state': {}, 'param_groups': [{'lr': 1e-3, 'betas': (0.9, 0.999)}]}],
        'hyper_parameters': {'lr': 1e-3, 'tags': {'a', 'b'}, 'blob': b'\x00\xff', 'device': torch.device('cpu')},
    }
    loaded = load(_save(ckpt, tmp_path, 'last.ckpt'))
    hp = loaded['hyper_parameters']
    assert hp['lr'] == 1e-3 and hp['tags'] == {'a', 'b'} and hp['blob'] == b'\x00\xff'
    assert isinstance(hp['device'], Opaque) and hp['device'].args == ('cpu',)
    assert loaded['optimizer_states'] == ckpt['optimizer_states']
    sd = state_dict_from(loaded)
    assert sd.keys() == weights.keys()
    for key, tensor in weights.items():
        _assert_same(sd[key], tensor)


def test_plain_state_dict_and_missing_weights():
    arrays = {'w': np.ones(2), 'step': 3}
    assert list(state_dict_from(arrays)) == ['w']
    with pytest.raises(ValueError, match="top-level keys.*'epoch'.*'notes'"):
        state_dict_from({'epoch': 1, 'notes': 'none'})
    with pytest.raises(ValueError, match='no weights'):
        state_dict_from([np.ones(2)])


class _Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _write_archive(path, data_pkl, storages=None, byteorder=None):
    with zipfile.ZipFile(path, 'w') as zf:
        zf.writestr('archive/data.pkl', data_pkl)
        for key, data in (storages or {}).items():
            zf.writestr(f'archive/data/{key}', data)
        if byteorder is not None:
            zf.writestr('archive/byteorder', byteorder)


@pytest.mark.parametrize('protocol', [2, 4])
def test_malicious_pickle_runs_nothing(tmp_path, protocol):
    marker = tmp_path / 'MARKERFILE'
    payloads = {
        'system': _Payload(os.system, f'touch {marker}'),
        'exec': _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        'eval': _Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        'nested': {'model': _Payload(os.system, f'touch {marker}')},
    }
    path = tmp_path / 'evil.pt'
    _write_archive(path, pickle.dumps(payloads, protocol=protocol))
    loaded = load(path)
    assert not marker.exists()
    system = loaded['system']
    assert isinstance(system, Opaque) and system.name == 'system' and system.args == (f'touch {marker}',)
    assert loaded['exec'].module == 'builtins' and loaded['exec'].name == 'exec'
    assert isinstance(loaded['nested']['model'], Opaque)


def test_unknown_module_is_not_imported(tmp_path):
    data = b'\x80\x02cnot_a_real_module_xyz\nThing\n)\x81}X\x01\x00\x00\x00aK\x01sb.'
    path = tmp_path / 'unknown.pt'
    _write_archive(path, data)
    thing = load(path)
    assert (thing.module, thing.name, thing.state) == ('not_a_real_module_xyz', 'Thing', {'a': 1})
    assert 'not_a_real_module_xyz' not in sys.modules


def test_big_endian_archive(tmp_path):
    tensors = {
        'f': torch.randn(3, 2).t(),
        'c': torch.tensor([1 + 2j], dtype=torch.complex64),
        'b': torch.tensor([True]),
    }
    src = _save(tensors, tmp_path)
    with zipfile.ZipFile(src) as zf:
        data_pkl = zf.read('ckpt/data.pkl')
        raw = {k: zf.read(f'ckpt/data/{k}') for k in ('0', '1', '2')}
    swapped = {
        '0': np.frombuffer(raw['0'], '<f4').astype('>f4').tobytes(),
        '1': np.frombuffer(raw['1'], '<f4').astype('>f4').tobytes(),  # complex: each half swapped
        '2': raw['2'],
    }
    path = tmp_path / 'big.pt'
    _write_archive(path, data_pkl, swapped, byteorder='big')
    loaded = load(path)
    for key, tensor in tensors.items():
        _assert_same(loaded[key], tensor)


def test_deflated_archive(tmp_path):
    tensors = {'w': torch.randn(4, 3), 'b': torch.arange(3)}
    src = _save(tensors, tmp_path)
    path = tmp_path / 'deflated.pt'
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    loaded = load(path)
    for key, tensor in tensors.items():
        _assert_same(loaded[key], tensor)


@pytest.mark.parametrize('target', [b'ccollections\nOrderedDict\n', b'cnot_real\nThing\n'])
def test_build_on_a_global_is_refused(tmp_path, target):
    # GLOBAL target; BUILD (None, {"x": 1}) would set attributes on the class itself.
    path = tmp_path / 'build.pt'
    _write_archive(path, b'\x80\x02' + target + b'N}X\x01\x00\x00\x00xK\x01s\x86b.')
    with pytest.raises(ValueError, match='cannot unpickle'):
        load(path)
    assert not hasattr(collections.OrderedDict, 'x')


def test_legacy_and_garbage_files_raise_value_error(tmp_path):
    legacy = tmp_path / 'legacy.pt'
    torch.save({'w': torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    garbage = tmp_path / 'garbage.bin'
    garbage.write_bytes(b'definitely not a checkpoint')
    for path in (legacy, garbage):
        with pytest.raises(ValueError, match=r'torch\.save') as info:
            load(path)
        assert str(path) in str(info.value)
        assert info.value.__cause__ is None


def test_corrupt_archive_raises_value_error(tmp_path):
    path = tmp_path / 'broken.pt'
    with zipfile.ZipFile(path, 'w') as zf:
        zf.writestr('archive/version', '3')
    with pytest.raises(ValueError, match='data.pkl'):
        load(path)
    truncated = tmp_path / 'truncated.pt'
    _write_archive(truncated, pickle.dumps({'a': 1}, protocol=2)[:-3])
    with pytest.raises(ValueError, match=str(truncated)):
        load(truncated)


def test_view_past_storage_is_rejected(tmp_path):
    path = _save({'w': torch.arange(4.0)}, tmp_path)
    with zipfile.ZipFile(path) as zf:
        data_pkl, raw = zf.read('ckpt/data.pkl'), zf.read('ckpt/data/0')
    # Claim a 4-element storage holds a 400-element tensor.
    hostile = data_pkl.replace(b'K\x04\x85', b'M\x90\x01\x85', 1)
    assert hostile != data_pkl
    bad = tmp_path / 'bad.pt'
    _write_archive(bad, hostile, {'0': raw})
    with pytest.raises(ValueError, match='exceeds its storage'):
        load(bad)


def test_an_answer_list_pickle_with_code_runs_nothing(tmp_path):
    # OFA's trainval_ans2label.pkl is a plain {answer: label} dict; a tampered one carries calls among its entries.
    marker = tmp_path / 'MARKERFILE'
    ans2label = {'yes': 0, 'no': 1, '2': 2, 'evil': _Payload(os.system, f'touch {marker}')}
    path = tmp_path / 'trainval_ans2label.pkl'
    path.write_bytes(pickle.dumps(ans2label, protocol=4))
    loaded = load_pickle(path)
    assert not marker.exists()
    assert {k: v for k, v in loaded.items() if k != 'evil'} == {'yes': 0, 'no': 1, '2': 2}
    assert isinstance(loaded['evil'], Opaque) and loaded['evil'].name == 'system'

    whole = pickle.dumps({'yes': 0, 'no': 1}, protocol=4)
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match='trainval_ans2label.pkl: cannot unpickle'):
        load_pickle(path)
    # A string declaring 2**40 bytes in a file of a few: an error, not an allocation.
    path.write_bytes(b'\x80\x04\x8d' + (1 << 40).to_bytes(8, 'little') + b'abc')
    with pytest.raises(ValueError, match='trainval_ans2label.pkl: cannot unpickle'):
        load_pickle(path)
