"""CI smoke of the load generator (bench/loadgen) against a real gurukul-fast subprocess.

A few seconds of the fanout scenario at a low fixed rate, in immediate and `?batch=1`
mode: every message must reach every member of its chat exactly once and in seq order.
Speed is not asserted here — a benchmark is not a timed test (DESIGN §9); `tox -e bench`
measures it.
"""

from __future__ import annotations

import pytest

from bench.loadgen import scenarios, session


@pytest.fixture(autouse=True)
def _spawn_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test process may already run threads; forking it could deadlock the worker.
    monkeypatch.setattr(session, "START_METHOD", "spawn")


@pytest.mark.parametrize("batch", [False, True], ids=["immediate", "batch"])
def test_fanout_delivers_every_message_once_in_order(batch: bool) -> None:
    clients, room_size, rate, measure_s = 40, 10, 400.0, 2.0
    result = scenarios.fanout(
        "gurukul",
        clients=clients,
        room_size=room_size,
        rate=rate,
        warmup_s=0.5,
        measure_s=measure_s,
        batch=batch,
    )
    assert result["connect"]["connected"] == clients
    assert result["sent"] > 0
    assert result["loss"] == 0
    assert result["gaps"] == 0
    assert result["reordered"] == 0
    assert result["fifo_errors"] == 0
    assert result["errors"] == 0
    assert result["closed"] == 0
    # Every message sent in the window reached all members of its room.
    assert result["measured"] % room_size == 0
    assert result["measured"] >= 0.5 * rate * measure_s
