"""A corrupted run directory ends every host tool with one error naming the file — never a traceback.

Property test (hypothesis): one record of a finished run (each kind: config.yaml, run.json, state.json, every
checkpoint's meta.json, the EA, init, fusion and evaluation records, the EA lineage) is corrupted — wrong types at the
top or one level down, truncation, deep nesting, an empty list or object, bytes that are not UTF-8, a folder or a
missing file in its place — and ``status``, ``lineage``, ``prune --dry-run``, ``launch --resume --dry-run`` and one
round of the Slurm follow loop run on it in this process. Each may still succeed (a record it does not read, or one it
reports as damaged); when it fails, it returns 2 with an error that names the corrupted file or its folder.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from easlurm.errors import EaslurmError
from fake_slurm import FakeSlurm
from hpc_runs import finished_run

#: Record files corrupted, relative to the run (the same kinds exist in every cycle; two cycles are enough).
RECORDS = ["config.yaml", "run.json", "state.json", "pretrain/meta.json", "cycles/000/start/done.json",
           "cycles/000/start/01/meta.json", "cycles/001/start/02/meta.json", "cycles/000/members/01/meta.json",
           "cycles/002/members/02/meta.json", "cycles/001/start/00/meta.json", "cycles/000/ea/done.json",
           "cycles/001/ea/fitness.json", "cycles/001/ea/lineage.jsonl", "fusion/meta.json", "eval/done.json"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


@st.composite
def corruptions(draw: st.DrawFn) -> tuple[str, str, Any]:
    """(record, how, argument)."""
    record = draw(st.sampled_from(RECORDS))
    how = draw(st.sampled_from(["value", "top_key", "nested_key", "truncate", "nest", "empty_list", "empty_object",
                                "empty_file", "not_utf8", "folder", "missing"]))
    arg: Any = None
    if how in ("value", "top_key", "nested_key"):
        arg = (draw(json_values), draw(st.integers(0, 1000)))
    elif how == "truncate":
        arg = draw(st.floats(0.0, 0.99))
    elif how == "nest":
        arg = (draw(st.sampled_from(["[", '{"a":'])), draw(st.integers(1_000, 200_000)))
    return record, how, arg


def _corrupt(path: Path, how: str, arg: Any) -> None:
    original = path.read_bytes()
    if how == "folder":
        path.unlink()
        path.mkdir()
        return
    if how == "missing":
        path.unlink()
        return
    text: bytes
    if how == "value":
        text = json.dumps(arg[0]).encode()
    elif how in ("top_key", "nested_key"):
        data = _parse(path, original)
        target = data
        if how == "nested_key" and isinstance(data, dict):
            nested = [k for k, v in sorted(data.items()) if isinstance(v, dict) and v]
            target = data[nested[arg[1] % len(nested)]] if nested else data
        if isinstance(target, dict) and target:
            keys = sorted(target)
            target[keys[arg[1] % len(keys)]] = arg[0]
        elif isinstance(target, list) and target:
            target[arg[1] % len(target)] = arg[0]
        text = _dump(path, data)
    elif how == "truncate":
        text = original[: int(len(original) * arg)]
    elif how == "nest":
        text = (arg[0] * arg[1]).encode()
    elif how == "empty_list":
        text = b"[]"
    elif how == "empty_object":
        text = b"{}"
    elif how == "empty_file":
        text = b""
    else:  # not_utf8
        text = b"\xff\xfe\x00" + original[:20]
    path.write_bytes(text)


def _parse(path: Path, raw: bytes) -> Any:
    if path.suffix == ".yaml":
        import yaml

        return yaml.safe_load(raw)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    return json.loads(raw)


def _dump(path: Path, data: Any) -> bytes:
    if path.suffix == ".yaml":
        import yaml

        return yaml.safe_dump(data).encode()
    if path.suffix == ".jsonl":
        return "".join(json.dumps(r) + "\n" for r in data).encode()
    return json.dumps(data).encode()


def _restore(path: Path, original: bytes) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    path.write_bytes(original)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, demo_shards: Path) -> Path:
    """A private copy of the shared finished run, with a Slurm submission book (state.json) as a launcher that
    followed it would have left."""
    copy = tmp_path_factory.mktemp("corrupt") / "run"
    shutil.copytree(finished_run(tmp_path_factory, demo_shards), copy, symlinks=True)
    done = copy / "eval" / "done.json"
    kept = done.read_bytes()
    done.unlink()  # the evaluation pending for a moment: one round of the follow loop books its submission
    assert _follow(copy) is None
    done.write_bytes(kept)
    shutil.rmtree(copy / "slurm")
    assert (copy / "state.json").is_file()
    return copy


def _follow(run_dir: Path) -> str | None:
    """One round of the Slurm launcher's follow loop on an in-memory Slurm; the error text, or None."""
    from easlurm.config import load_run_config
    from easlurm.orchestrate.plan import build_plan
    from easlurm.orchestrate.slurm import SlurmExecutor
    from easlurm.store import RunDir

    rd = RunDir(run_dir)
    try:
        cfg = load_run_config(rd.root)
        cfg.executor.kind = "slurm"
        ex = SlurmExecutor(cfg, rd, echo=lambda m: None, python="python", client=FakeSlurm(), clock=lambda: 0.0,
                           sleep=lambda s: None)
        ex.round(build_plan(cfg, rd), adopting=True)
    except EaslurmError as exc:
        return f"easlurm.launch: error: {exc}"
    return None


def _tools(run_dir: Path) -> dict[str, Callable[[], int]]:
    from easlurm import launch, lineage, prune, status

    return {"status": lambda: status.main([str(run_dir), "--no-slurm"]),
            "lineage": lambda: lineage.main([str(run_dir)]),
            "prune": lambda: prune.main([str(run_dir), "--dry-run"]),
            "launch --resume --dry-run": lambda: launch.main(["--resume", str(run_dir), "--dry-run", "--executor",
                                                              "slurm"])}


@pytest.fixture(scope="module")
def quick_lineage() -> Any:
    """lineage's drawing is skipped (it reads no file: the records are read and summarised before it draws)."""
    from easlurm import lineage

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lineage, "plot_lineage", lambda lin, title: b"png")
        mp.setattr(lineage, "_tensorboard", lambda run, png: None)
        yield


def _named(err: str, run_dir: Path, record: str) -> bool:
    path = run_dir / record
    return any(s in err for s in (str(path), record, str(path.parent), str(Path(record).parent) + ":"))


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=corruptions())
def test_a_corrupted_record_ends_each_tool_with_one_error_naming_it(run, quick_lineage, case):
    record, how, arg = case
    path = run / record
    original = path.read_bytes()
    slurm_before = (run / "state.json").read_bytes()
    _corrupt(path, how, arg)
    try:
        outcomes = {}
        for name, tool in _tools(run).items():
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = tool()  # any exception escaping here fails the test with its traceback
            outcomes[name] = (rc, err.getvalue())
        follow_err = _follow(run)
        outcomes["follow loop"] = (0 if follow_err is None else 2, follow_err or "")
    finally:
        _restore(path, original)
        (run / "state.json").write_bytes(slurm_before)
        shutil.rmtree(run / "slurm", ignore_errors=True)
    for name, (rc, err) in outcomes.items():
        assert "Traceback" not in err, (name, record, how, err)
        assert rc in (0, 2), (name, record, how, rc, err)
        if rc == 2:
            assert err.count("error:") == 1, (name, record, how, err)
            assert _named(err, run, record), (name, record, how, err)
