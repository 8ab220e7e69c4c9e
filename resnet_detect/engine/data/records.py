"""Per-image records packed into one buffer, so forked loader workers share them."""
from __future__ import annotations

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
