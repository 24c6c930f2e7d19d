"""One command line: ``easlurm COMMAND …`` (the console script, and ``python -m easlurm``), RUN positional."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from easlurm.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("launch", "status", "lineage", "prune", "bill", "evaluate", "upscale", "export", "run-task"):
        assert f"  {name} " in out
    assert main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_answers_help(name):
    res = subprocess.run([sys.executable, "-m", "easlurm", name, "--help"], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("usage:"), res.stderr


def test_the_console_script_is_installed():
    script = Path(sys.executable).with_name("easlurm")
    res = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "commands:" in res.stdout


def test_the_run_directory_is_positional_everywhere_and_the_old_flags_still_work(make_run, capsys):
    from easlurm.bill import main as bill_main

    run = make_run()
    assert main(["bill", str(run)]) == 0 and "# bill: " in capsys.readouterr().out
    assert bill_main(["--run", str(run)]) == 0 and "# bill: " in capsys.readouterr().out
    assert main(["status", str(run), "--no-slurm"]) == 0 and "not started" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["evaluate"])
    assert stop.value.code == 2 and "the run directory is needed: easlurm evaluate RUN" in capsys.readouterr().err
