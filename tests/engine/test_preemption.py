"""SIGTERM / SIGINT: the first signal lets the step in flight finish, the second stops at once."""
import os
import signal

import pytest
import torch

from engine.data import build_test_loader
from engine.preemption import stop_on_signals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_is_a_request_the_second_stops_at_once(signum: int) -> None:
    before = signal.getsignal(signum)
    with stop_on_signals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signum)  # delivered before the next bytecode
        assert stop.requested and stop.signal_name == signal.Signals(signum).name
        expected = KeyboardInterrupt if signum == signal.SIGINT else SystemExit
        with pytest.raises(expected) as stopped:
            os.kill(os.getpid(), signum)
            for _ in range(1000):  # the handler runs here at the latest
                pass
        if expected is SystemExit:
            assert stopped.value.code == 128 + signum
    assert signal.getsignal(signum) is before


class _WorkerSignalHandlers(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, key: object) -> dict:
        return {"handlers": [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]}


def test_loader_workers_leave_ctrl_c_to_the_main_process() -> None:
    """Ctrl-C reaches the whole process group; a worker that died on it would fail the step in
    flight instead of letting the run stop cleanly. SIGTERM must still end a worker: it is how
    multiprocessing ends the workers left at interpreter exit."""
    loader = build_test_loader(_WorkerSignalHandlers(), batch_size=2, num_workers=1)
    (batch,) = list(loader)
    assert [s["handlers"] for s in batch] == [[signal.SIG_IGN, signal.SIG_DFL]] * 2
