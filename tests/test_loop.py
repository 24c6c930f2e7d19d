"""The one training loop (easlurm.engine.loop.run_loop) with a small real Trainee: cadence, finiteness, preemption."""
from __future__ import annotations

import os
import signal
from typing import Any

import pytest
import torch
import torch.nn as nn

from easlurm.errors import TrainingError
from easlurm.engine.loop import Cadence, run_loop
from easlurm.engine.preempt import Preempted, Preemption


class Line:
    """A real (tiny) trainee: least squares with one linear layer. ``poison_at``: after that iteration's step a
    weight is set to +inf (as a diverged optimizer step would); ``nan_loss_at``: that iteration reports a NaN loss."""

    where = "toy stage member 07"

    def __init__(self, poison_at: int | None = None, nan_loss_at: int | None = None,
                 on_step: Any = None) -> None:
        torch.manual_seed(0)
        self.net = nn.Linear(3, 1)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1)
        self.poison_at, self.nan_loss_at, self.on_step = poison_at, nan_loss_at, on_step
        self.steps: list[int] = []

    def step(self, iteration: int) -> dict[str, torch.Tensor]:
        self.steps.append(iteration)
        x = torch.randn(4, 3)
        loss = (self.net(x) - x.sum(1, keepdim=True)).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        if iteration == self.poison_at:
            with torch.no_grad():
                self.net.weight[0, 1] = float("inf")
        if iteration == self.nan_loss_at:
            loss = loss * float("nan")
        if self.on_step is not None:
            self.on_step(iteration)
        return {"mse": loss.detach(), "half": 0.5 * loss.detach()}  # "half": derived, bad whenever mse is

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def checkpoint_files(self) -> dict[str, bytes]:
        return {"net.pt": repr(self.net.weight.tolist()).encode()}

    def sample_image(self) -> torch.Tensor | None:
        return torch.zeros(3, 2, 6)


class Board:
    """Records what the loop hands TensorBoard (the real writer is exercised by the stage tests)."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []
        self.images: list[int] = []
        self.closed = False

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def add_image(self, tag: str, img: torch.Tensor, step: int) -> None:
        self.images.append(step)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _run(trainee: Line, total: int = 7, start: int = 0, preempt: Preemption | None = None,
         **cadence: int) -> tuple[list[tuple[int, set[str]]], Board]:
    commits: list[tuple[int, set[str]]] = []
    tb = Board()
    c = {"checkpoint_every": 3, "log_every": 2, "image_every": 4, **cadence}
    run_loop(trainee, start=start, cadence=Cadence(total, c["checkpoint_every"], c["log_every"], c["image_every"]),
             commit=lambda done, files: commits.append((done, set(files))), tb=tb, tb_step0=100, preempt=preempt,
             extra_scalars=lambda: {"lr/x": 0.1})
    return commits, tb


def test_cadence_of_commits_logs_and_images():
    t = Line()
    commits, tb = _run(t, total=7)
    assert t.steps == list(range(7))
    assert commits == [(3, {"net.pt", "rng.pt"}), (6, {"net.pt", "rng.pt"}), (7, {"net.pt", "rng.pt"})]
    assert sorted({s for tag, _, s in tb.scalars if tag == "loss/mse"}) == [102, 104, 106, 107]
    assert {tag for tag, _, _ in tb.scalars} == {"loss/mse", "loss/half", "lr/x", "speed/iters_per_s"}
    assert tb.images == [104, 107]
    # A resumed loop starts at the committed iteration and keeps the same cadence.
    t2 = Line()
    commits, _ = _run(t2, total=7, start=3)
    assert t2.steps == [3, 4, 5, 6] and [d for d, _ in commits] == [6, 7]


def test_non_finite_weights_are_never_committed():
    t = Line(poison_at=5)  # poisoned right after the step that ends at 6 finished iterations, a checkpoint step
    commits: list[int] = []
    with pytest.raises(TrainingError) as err:
        run_loop(t, start=0, cadence=Cadence(9, 3, 100), tb=Board(),
                 commit=lambda done, files: commits.append(done))
    assert commits == [3]  # the last good checkpoint stays the last one written
    msg = str(err.value)
    assert msg.startswith("toy stage member 07: non-finite weights at iteration 6 in net.weight")
    assert "not committed" in msg


def test_first_non_finite_loss_is_named_with_its_iteration_and_term():
    t = Line(nan_loss_at=4)
    commits: list[int] = []
    with pytest.raises(TrainingError, match=r"^toy stage member 07: mse loss is not finite at iteration 4; "):
        run_loop(t, start=0, cadence=Cadence(9, 3, 100), tb=Board(),
                 commit=lambda done, files: commits.append(done))
    # Both terms went bad at iteration 4: the trainee's first one is named (the cause, not what it poisoned).
    # Checked without a host sync per iteration: found at the next checkpoint step (6), which is then not written.
    assert commits == [3] and t.steps == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGTERM])
def test_preemption_commits_after_the_current_iteration_then_exits(sig):
    t = Line(on_step=lambda it: os.kill(os.getpid(), sig) if it == 4 else None)
    with Preemption() as pre:
        with pytest.raises(Preempted) as exc:
            _run(t, total=50, preempt=pre, checkpoint_every=1000)
    assert exc.value.code == 128 + sig
    assert t.steps == [0, 1, 2, 3, 4]
    # The handlers are restored after the hand-off.
    assert signal.getsignal(sig) is not pre._handler


def test_a_resumed_writer_sorts_after_the_file_it_purges(tmp_path):
    """TensorBoard reads event files in name order; a writer created in the same second as the previous one must
    still sort after it, or its purge of the rewritten steps drops the resumed steps instead (names end in host, pid
    and a counter compared as text, so a same-second successor can sort first: here a host name 'zzz' forces it)."""
    import socket

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from easlurm.runtime import tb_writer

    first = tb_writer(tmp_path)
    for step in range(1, 7):
        first.add_scalar("loss", float(step), step)
    first.close()
    [made] = sorted(tmp_path.iterdir())
    made.rename(tmp_path / made.name.replace(f".{socket.gethostname()}.", ".zzz."))
    resumed = tb_writer(tmp_path, purge_step=4)
    for step in range(4, 9):
        resumed.add_scalar("loss", 10.0 * step, step)
    resumed.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert ".zzz." in names[0]
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0),
                                                                 (6, 60.0), (7, 70.0), (8, 80.0)]
