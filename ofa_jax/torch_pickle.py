"""Read PyTorch ``torch.save`` checkpoints as numpy, without torch and without running pickled code.

OFA weights ship as fairseq, HF/modelscope and Lightning checkpoints written by
``torch.save``. ``torch.load`` needs torch and, unless ``weights_only=True``,
calls whatever the pickle names. This module reads the zip layout itself and
unpickles ``data.pkl`` against a small allow-list: tensors become numpy arrays,
a few harmless builtins are rebuilt, and every other global becomes an inert
:class:`Opaque` record (nothing is imported or called).
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import io
import operator
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import ml_dtypes
import numpy as np
from etils import epath

__all__ = ['Opaque', 'load', 'load_pickle', 'state_dict_from']


class _StorageType(NamedTuple):
    # A tuple, so a hostile BUILD opcode cannot mutate the shared instances.
    name: str
    dtype: np.dtype


class _DType(NamedTuple):
    name: str
    dtype: np.dtype


_STORAGES = {
    name: _StorageType(name, np.dtype(dt))
    for name, dt in {
        'DoubleStorage': np.float64,
        'FloatStorage': np.float32,
        'HalfStorage': np.float16,
        'BFloat16Storage': ml_dtypes.bfloat16,
        'LongStorage': np.int64,
        'IntStorage': np.int32,
        'ShortStorage': np.int16,
        'CharStorage': np.int8,
        'ByteStorage': np.uint8,
        'BoolStorage': np.bool_,
        'ComplexFloatStorage': np.complex64,
        'ComplexDoubleStorage': np.complex128,
        'UntypedStorage': np.uint8,
    }.items()
}

# torch dtypes pickle as globals named by their canonical name (``torch float32``);
# the newer dtypes reach _rebuild_tensor_v3 that way, paired with an UntypedStorage.
_DTYPES = {
    name: _DType(name, np.dtype(dt))
    for name, dt in {
        'float64': np.float64,
        'float32': np.float32,
        'float16': np.float16,
        'bfloat16': ml_dtypes.bfloat16,
        'int64': np.int64,
        'int32': np.int32,
        'int16': np.int16,
        'int8': np.int8,
        'uint64': np.uint64,
        'uint32': np.uint32,
        'uint16': np.uint16,
        'uint8': np.uint8,
        'bool': np.bool_,
        'complex64': np.complex64,
        'complex128': np.complex128,
        'float8_e4m3fn': ml_dtypes.float8_e4m3fn,
        'float8_e5m2': ml_dtypes.float8_e5m2,
        'float8_e4m3fnuz': ml_dtypes.float8_e4m3fnuz,
        'float8_e5m2fnuz': ml_dtypes.float8_e5m2fnuz,
        'float8_e8m0fnu': ml_dtypes.float8_e8m0fnu,
    }.items()
}


class Opaque:
    """Inert stand-in for a pickled object whose global is not on the allow-list.

    Each such global gets its own subclass with ``module`` and ``name`` set; an
    instance records what the pickle did with it: constructor ``args``/``kwargs``,
    ``__setstate__`` ``state``, appended ``listitems`` and set ``dictitems``.
    """

    module: ClassVar[str] = ''
    name: ClassVar[str] = ''
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    listitems: list[Any]
    dictitems: dict[Any, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        self = super().__new__(cls)
        self.args, self.kwargs, self.state = args, kwargs, None
        self.listitems, self.dictitems = [], {}
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # __new__ already recorded the arguments

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.listitems.append(item)

    def extend(self, items: Any) -> None:
        self.listitems.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.dictitems[key] = value

    def __repr__(self) -> str:
        return f'<Opaque {self.module}.{self.name} args={self.args!r} state={self.state!r}>'


def _encode(text: Any, encoding: str = 'utf-8') -> bytes:
    # Protocol 2 pickles bytes as _codecs.encode(str, "latin1"); allow only plain text codecs.
    if not isinstance(text, str) or encoding not in ('latin1', 'latin-1', 'utf-8', 'utf8', 'ascii'):
        raise pickle.UnpicklingError(f'refusing _codecs.encode({type(text).__name__}, {encoding!r})')
    return codecs.encode(text, encoding)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> Any:
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    # func came from find_class, so it is an allow-listed builder or an Opaque class.
    return func(*args)


def _byteswap_inplace(arr: np.ndarray) -> None:
    unit = arr.dtype.itemsize // 2 if arr.dtype.kind == 'c' else arr.dtype.itemsize
    if unit > 1:
        arr.reshape(-1).view(f'u{unit}').byteswap(inplace=True)


def _text(value: Any) -> Any:
    return value.decode('ascii') if isinstance(value, bytes) else value


class _Unpickler(pickle.Unpickler):
    def __init__(
        self, data: bytes, read_storage: Callable[[str], np.ndarray], big_endian: bool, encoding: str = 'ASCII'
    ) -> None:
        super().__init__(io.BytesIO(data), encoding=encoding)
        self._read_storage = read_storage
        self._big_endian = big_endian
        self._raw: dict[str, np.ndarray] = {}
        self._opaque: dict[tuple[str, str], type[Opaque]] = {}
        self._allowed: dict[tuple[str, str], Any] = {
            ('collections', 'OrderedDict'): collections.OrderedDict,
            ('collections', 'defaultdict'): collections.defaultdict,
            ('builtins', 'set'): set,
            ('builtins', 'frozenset'): frozenset,
            ('builtins', 'slice'): slice,
            ('builtins', 'complex'): complex,
            ('builtins', 'range'): range,
            ('builtins', 'bytes'): bytes,
            ('builtins', 'bytearray'): bytearray,
            ('_codecs', 'encode'): _encode,
            ('torch._utils', '_rebuild_tensor'): self._rebuild_tensor,
            ('torch._utils', '_rebuild_tensor_v2'): self._rebuild_tensor_v2,
            ('torch._utils', '_rebuild_tensor_v3'): self._rebuild_tensor_v3,
            ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
            ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
            ('torch._tensor', '_rebuild_from_type_v2'): _rebuild_from_type_v2,
            ('torch.tensor', '_rebuild_from_type_v2'): _rebuild_from_type_v2,
        }

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 2 (torch's default) writes Python 2 names such as ``__builtin__ set``.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        else:
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if module in ('torch', 'torch.storage', 'torch.cuda') and name in _STORAGES:
            return _STORAGES[name]
        if module == 'torch' and name in _DTYPES:
            return _DTYPES[name]
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        cls = self._opaque.get((module, name))
        if cls is None:
            namespace = {'module': module, 'name': name, '__module__': __name__}
            cls = self._opaque[(module, name)] = type(str(name), (Opaque,), namespace)
        return cls

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and _text(pid[0]) == 'storage'):
            raise pickle.UnpicklingError(f'unsupported persistent id {pid!r}')
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f'unsupported storage type {storage_type!r}')
        key = str(_text(key))
        if key not in self._raw:
            self._raw[key] = self._read_storage(key)
        raw = self._raw[key]
        nbytes = operator.index(numel) * storage_type.dtype.itemsize
        if not 0 <= nbytes <= raw.size:
            raise pickle.UnpicklingError(f'storage {key} holds {raw.size} bytes, pickle expects {nbytes}')
        return raw[:nbytes].view(storage_type.dtype)

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any) -> np.ndarray:
        return self._tensor(storage, offset, size, stride)

    def _rebuild_tensor_v2(
        self, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, metadata: Any = None
    ) -> np.ndarray:
        return self._tensor(storage, offset, size, stride)

    def _rebuild_tensor_v3(
        self,
        storage: Any,
        offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any,
        hooks: Any,
        dtype: Any,
        metadata: Any = None,
    ) -> np.ndarray:
        if not isinstance(dtype, _DType):
            raise pickle.UnpicklingError(f'unsupported tensor dtype {dtype!r}')
        if isinstance(storage, np.ndarray) and storage.ndim == 1:
            raw = storage.view(np.uint8)
            storage = raw[: raw.size - raw.size % dtype.dtype.itemsize].view(dtype.dtype)
        return self._tensor(storage, offset, size, stride)

    def _tensor(self, storage: Any, offset: Any, size: Any, stride: Any) -> np.ndarray:
        if not isinstance(storage, np.ndarray) or storage.ndim != 1:
            raise pickle.UnpicklingError('tensor storage is not a storage record')
        offset = operator.index(offset)
        shape = tuple(operator.index(n) for n in size)
        steps = tuple(operator.index(s) for s in stride)
        if len(shape) != len(steps) or offset < 0 or any(v < 0 for v in shape + steps):
            raise pickle.UnpicklingError(f'bad tensor geometry: offset={offset} size={shape} stride={steps}')
        if 0 in shape:
            return np.empty(shape, storage.dtype)
        # as_strided does no bounds checking, so a hostile view must not reach past the storage.
        if offset + sum((n - 1) * s for n, s in zip(shape, steps)) >= storage.size:
            raise pickle.UnpicklingError(f'tensor view size={shape} stride={steps} exceeds its storage')
        item = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(storage[offset:], shape, tuple(s * item for s in steps), writeable=False)
        out = np.array(view, order='C')  # contiguous, writable, detached from the file mapping
        if self._big_endian:
            _byteswap_inplace(out)
        return out


def _legacy_error(path: str) -> ValueError:
    return ValueError(
        f'{path} is not a zip-format PyTorch checkpoint (legacy pre-1.6 torch.save format, or not a '
        'checkpoint at all); re-save it with a current torch: torch.save(torch.load(path), path)'
    )


def load(path: str | os.PathLike[str]) -> Any:
    """Load a ``torch.save`` zip checkpoint; tensors become contiguous numpy arrays.

    Globals outside the allow-list load as :class:`Opaque` records. Raises
    ``ValueError`` for non-zip (legacy or corrupt) files and undecodable pickles.
    """
    path = os.fspath(path)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise _legacy_error(path) from None
    with zf:
        names = zf.namelist()
        pickles = [n for n in names if n.count('/') == 1 and n.endswith('/data.pkl')]
        if len(pickles) != 1:
            raise ValueError(f'{path}: expected one <folder>/data.pkl in the archive, found {pickles}')
        prefix = pickles[0][: -len('data.pkl')]
        if prefix + 'constants.pkl' in names:
            raise ValueError(f'{path} is a TorchScript archive (torch.jit.save); save a state_dict instead')
        byteorder = zf.read(prefix + 'byteorder').strip() if prefix + 'byteorder' in names else b'little'
        if byteorder not in (b'little', b'big'):
            raise ValueError(f'{path}: unknown byteorder record {byteorder!r}')
        mapped: list[np.memmap] = []

        def read_storage(key: str) -> np.ndarray:
            try:
                info = zf.getinfo(f'{prefix}data/{key}')
            except KeyError:
                raise pickle.UnpicklingError(f'storage data/{key} is missing from the archive') from None
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
                return np.frombuffer(zf.read(info), np.uint8)
            # Stored entries are mapped, not read, so the file is paged in once, as tensors copy it.
            if not mapped:
                mapped.append(np.memmap(path, dtype=np.uint8, mode='r'))
            mm = mapped[0]
            header = mm[info.header_offset : info.header_offset + 30].tobytes()
            if len(header) != 30 or header[:4] != b'PK\x03\x04':
                raise pickle.UnpicklingError(f'corrupt zip header for data/{key}')
            name_len, extra_len = struct.unpack('<HH', header[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            if start + info.file_size > mm.size:
                raise pickle.UnpicklingError(f'data/{key} runs past the end of the file')
            return mm[start : start + info.file_size]

        unpickler = _Unpickler(zf.read(pickles[0]), read_storage, big_endian=byteorder == b'big')
        try:
            return unpickler.load()
        except Exception as e:  # any decoding failure, reported against the file
            raise ValueError(f'{path}: cannot unpickle {pickles[0]}: {type(e).__name__}: {e}') from e


def state_dict_from(obj: Any) -> dict[str, np.ndarray]:
    """Return the weights of a loaded checkpoint as ``{name: array}``.

    Looks in ``obj["model"]`` (fairseq), ``obj["state_dict"]`` (Lightning), then
    ``obj`` itself (plain state dict); non-array entries are dropped.
    """
    candidates: list[Mapping[Any, Any]] = []
    if isinstance(obj, Mapping):
        candidates += [obj[k] for k in ('model', 'state_dict') if isinstance(obj.get(k), Mapping)]
        candidates.append(obj)
    for candidate in candidates:
        weights = {k: v for k, v in candidate.items() if isinstance(k, str) and isinstance(v, np.ndarray)}
        if weights:
            return weights
    seen = list(obj.keys()) if isinstance(obj, Mapping) else f'a {type(obj).__name__}, not a mapping'
    raise ValueError(f'no weights found in checkpoint; top-level keys: {seen}')


def load_pickle(path: str | os.PathLike[str]) -> Any:
    """Load a plain pickle file (RefCOCO's ``refs(unc).p``, OFA's ``trainval_ans2label.pkl``) against the same
    allow-list: data comes back, any other global is an inert :class:`Opaque`, nothing is imported or called.
    Python 2 byte strings decode as UTF-8 (falling back to Latin-1). Raises ``ValueError`` naming the file."""
    path = os.fspath(path)
    data = epath.Path(path).read_bytes()  # a local or a remote (gs://) file

    def no_storage(key: str) -> np.ndarray:
        raise pickle.UnpicklingError(f'a plain pickle holds no tensor storage, but it asks for {key!r}')

    for encoding in ('utf-8', 'latin1'):
        try:
            return _Unpickler(data, no_storage, big_endian=False, encoding=encoding).load()
        except UnicodeDecodeError:
            continue
        except Exception as e:  # any decoding failure, reported against the file
            raise ValueError(f'{path}: cannot unpickle: {type(e).__name__}: {e}') from e
    raise ValueError(f'{path}: cannot unpickle: its byte strings are neither UTF-8 nor Latin-1')
