"""easlurm.progress: silent on non-terminals except rare plain lines, a tqdm bar on terminals, exact counts."""
from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from easlurm.data.shards import build_shards
from easlurm.progress import Progress, format_duration, progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_non_terminal_is_silent_when_the_loop_is_quick() -> None:
    out = io.StringIO()
    items = list(progress(range(1000), desc="quick", stream=out, clock=Clock()))
    assert items == list(range(1000))
    assert out.getvalue() == ""


def test_non_terminal_writes_a_line_per_tenth_and_at_most_every_30_s() -> None:
    out, clock = io.StringIO(), Clock()
    for i in progress(range(100), desc="build", unit="images", stream=out, clock=clock):
        clock.now = (i + 1) * 1.0  # item i takes one second
    lines = out.getvalue().splitlines()
    # 10 % steps are 10 s apart; the 30 s floor lets only every third through.
    assert [ln.split(" ")[1] for ln in lines] == ["30/100", "60/100", "90/100"]
    assert lines[0] == "build: 30/100 images (30%), 1.00 images/s, elapsed 30s, ETA 1m10s"
    assert "\r" not in out.getvalue()

    out, clock = io.StringIO(), Clock()
    for i in progress(range(100), desc="slow", stream=out, clock=clock):
        clock.now = (i + 1) * 60.0  # a minute per item: every 10 % step gets its line
    lines = out.getvalue().splitlines()
    assert [ln.split(" ")[1] for ln in lines] == [f"{k}/100" for k in range(10, 101, 10)]
    assert lines[-1].endswith("ETA 0s") and "elapsed 1h40m" in lines[-1]


def test_unknown_total_reports_every_interval() -> None:
    def gen() -> Iterator[int]:
        yield from range(10)

    out, clock = io.StringIO(), Clock()
    with Progress(None, "poll", unit="checks", stream=out, clock=clock) as p:
        for _ in gen():
            clock.now += 20.0
            p.update()
    assert p.n == 10
    lines = out.getvalue().splitlines()
    assert lines == [f"poll: {n} checks, 0.05 checks/s, elapsed {format_duration(20.0 * n)}" for n in (2, 4, 6, 8, 10)]


def test_terminal_gets_a_bar_with_the_right_count() -> None:
    out = FakeTerminal()
    with Progress(7, "tiles", unit="tiles", stream=out) as p:
        for _ in range(7):
            p.update()
    assert p.n == 7
    assert "tiles: 100%" in out.getvalue() and "7/7" in out.getvalue()


def test_disabled_is_silent_everywhere() -> None:
    for out in (io.StringIO(), FakeTerminal()):
        clock = Clock()
        for i in progress(range(20), desc="x", stream=out, enabled=False, clock=clock):
            clock.now = i * 100.0
        assert out.getvalue() == ""


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 59.9, 60, 595, 3599, 3600, 4140, float("inf"))] == \
        ["0s", "59s", "1m00s", "9m55s", "59m59s", "1h00m", "1h09m", "?"]


def test_shard_build_is_quiet_when_stderr_is_not_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    (tmp_path / "hr").mkdir()
    for k in range(3):
        Image.fromarray(np.full((16, 16, 3), k, np.uint8)).save(tmp_path / "hr" / f"{k}.png")
    build_shards(tmp_path / "hr", tmp_path / "out", 4)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_bar_shows_on_a_pseudo_terminal_that_reports_no_size() -> None:
    pty = pytest.importorskip("pty")
    import os

    master, slave = pty.openpty()  # a fresh pty reports 0x0, as under `script` or some batch `--pty` sessions
    try:
        with os.fdopen(slave, "w", closefd=False) as stream:
            assert os.get_terminal_size(slave).columns == 0
            with Progress(3, "pty", unit="images", stream=stream) as p:
                for _ in range(3):
                    p.update()
        os.set_blocking(master, False)  # no output must fail the test, not hang it
        try:
            out = os.read(master, 65536).decode("utf-8", "replace")
        except BlockingIOError:
            out = ""
    finally:
        os.close(slave)
        os.close(master)
    assert "pty: 100%" in out and "3/3" in out
