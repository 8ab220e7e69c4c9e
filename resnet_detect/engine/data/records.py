"""Per-image records packed into one buffer, so forked loader workers share them."""
from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np


class PackedRecords:
    """Records pickled into one numpy buffer.

    DataLoader workers fork the dataset; a Python list of dicts gets its pages copied as soon
    as reference counts are touched, multiplying memory by the number of workers. One flat
    buffer is shared copy-on-write.
    """

    def __init__(self, records: Sequence[Any]) -> None:
        # appended one by one: a list of pickles joined at the end held the buffer twice
        buffer, ends = bytearray(), []
        for record in records:
            buffer += pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
            ends.append(len(buffer))
        self._ends = np.array(ends, dtype=np.int64)
        self._buffer = np.frombuffer(buffer, dtype=np.uint8)
        self._buffer.flags.writeable = False

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> Any:
        index = range(len(self))[index]  # negative indices count from the end; IndexError
        start = int(self._ends[index - 1]) if index > 0 else 0
        return pickle.loads(self._buffer[start:int(self._ends[index])].tobytes())

    def digest(self, path_keys: Sequence[str | int]) -> str:
        """A digest of the records' contents, their file paths (the values of `path_keys`:
        dict keys, or tuple positions) made absolute and taken relative to the folder all of
        them share: equal for copies of one dataset in other folders (each node's own disk,
        a relative folder given from elsewhere), other for another file name or label (the
        files' contents are not read)."""
        hasher, paths = hashlib.sha256(), []
        for i in range(len(self)):
            record = self[i]
            keys = ([k for k in path_keys if k in record] if isinstance(record, dict)
                    else [k for k in path_keys if isinstance(k, int) and k < len(record)])
            for key in keys:
                paths.append(os.path.abspath(record[key]))
                hasher.update(f"p{key}".encode())
            _feed(hasher, {k: v for k, v in record.items() if k not in keys}
                  if isinstance(record, dict)
                  else [v for k, v in enumerate(record) if k not in keys])
        if paths:  # the first and last path in sort order share the folder all paths do
            common = os.path.commonprefix([min(paths), max(paths)])
            cut = max(common.rfind("/"), common.rfind(os.sep)) + 1
            for path in paths:
                hasher.update(path[cut:].replace(os.sep, "/").encode() + b"\0")
        return hasher.hexdigest()


def _feed(hasher: Any, value: Any) -> None:
    """Hash `value` by its contents (not its pickle, which differs between numpy versions)."""
    if isinstance(value, str):
        hasher.update(b"s" + value.encode() + b"\0")
    elif isinstance(value, dict):
        hasher.update(b"d%d" % len(value))
        for key in sorted(value, key=str):
            _feed(hasher, key)
            _feed(hasher, value[key])
    elif isinstance(value, (list, tuple)):
        if value and type(value[0]) in (int, float):  # (a polygon's numbers: hashed at once)
            try:
                numbers = np.array(value)
            except ValueError:  # (ragged: [1, [2, 3]])
                numbers = None
            if numbers is not None and numbers.dtype.kind in "if" and numbers.ndim == 1:
                _feed(hasher, numbers)
                return
        hasher.update(b"l%d" % len(value))
        for item in value:
            _feed(hasher, item)
    elif isinstance(value, np.ndarray) and value.dtype.hasobject:  # (bytes: its pointers)
        hasher.update(f"o{value.shape}".encode())
        _feed(hasher, value.ravel().tolist())
    elif isinstance(value, np.ndarray):
        hasher.update(f"a{value.dtype.str}{value.shape}".encode())
        hasher.update(np.ascontiguousarray(value).tobytes())
    else:  # (a numpy scalar as the number it holds: its repr differs between numpy versions)
        hasher.update(f"v{value.item() if isinstance(value, np.generic) else value!r}".encode())
