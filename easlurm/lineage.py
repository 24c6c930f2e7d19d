"""``python -m easlurm.lineage RUN``: the ancestry of the final population across cycles, drawn and summarised.

Reads (never writes) the run's records: every cycle's start entries and trained members
(:func:`easlurm.population.read_member`; a start entry's ``origin`` is ``ea:<child id>``, ``carried:<G.pt path>``
or the initial generator) and every EA phase's ``cycles/C/ea/lineage.jsonl`` (a child's parents are
``{"child": id}`` or ``{"checkpoint": path, "sha256"}`` of a member that entered the phase; its first parent is the
slot's own genome, the second the SBX partner's). Writes ``RUN/lineage/lineage.png`` (byte-stable),
``RUN/lineage/summary.txt``, ``RUN/lineage/ancestry.json`` and the picture to TensorBoard (``RUN/tb/lineage``).

Nodes: ``start c/J`` (slot J's start entry of cycle c), ``member c/J`` (after cycle c's Adam phase), EA children
(``c3-g12-s2``) and ``init`` (the PSNR-oriented generator every slot starts from). Summary per final member: its
*primary line* (first parents back to ``init``), the slot that line ran in at each cycle — "survived N cycles in
slot J" counts the cycles, back from the end, in which the line stayed in its own slot (a MOEA/D child that
replaces a neighbour starts a new line there) — and the crossovers and mutations along it (with the partners'
slots).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, load_run_config
from .errors import CheckpointError, EaslurmError, record_shape
from .population import adam_cycles, after_adam, final_cycle, member_file, read_member
from .store import RunDir, atomic_write_bytes, atomic_write_json, atomic_write_text, read_json

__all__ = ["Node", "Lineage", "build_lineage", "primary_line", "summarise", "plot_lineage", "main"]

INIT = "init"


@dataclass
class Node:
    """One genome on the way: ``kind`` start | member | child | init; ``parents``: node ids, the primary first
    (a crossover's partner second); ``objectives``: (mean L1, mean perceptual) on the fitness set when measured
    (start: by the EA that wrote it; member: by the next EA phase; child: when the EA evaluated it)."""
    id: str
    kind: str
    cycle: int
    slot: int
    parents: list[str] = field(default_factory=list)
    objectives: list[float] | None = None
    generation: int | None = None
    operators: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Lineage:
    """Every node of the run and the final population's node ids in slot order."""
    nodes: dict[str, Node]
    final: list[str]
    generations: int
    cycles: int

    def ancestors(self, ids: list[str]) -> set[str]:
        """``ids`` and everything they descend from."""
        seen: set[str] = set()
        todo = list(ids)
        while todo:
            n = todo.pop()
            if n in seen or n not in self.nodes:
                continue
            seen.add(n)
            todo.extend(self.nodes[n].parents)
        return seen


def _sid(c: int, j: int) -> str:
    return f"start {c}/{j:02d}"


def _mid(c: int, j: int) -> str:
    return f"member {c}/{j:02d}"


def _g_paths(cfg: Config, run: RunDir, c: int) -> dict[str, int]:
    """Where each member of cycle c keeps its generator after the Adam phase (run-relative path of the real file)
    → slot."""
    out: dict[str, int] = {}
    for k in range(cfg.population.size):
        folder, _ = after_adam(cfg, run, c, k)
        meta = read_member(folder)
        if meta is None:
            raise CheckpointError(f"{folder / 'meta.json'}: not found (cycle {c} has not got that far)")
        if "G.pt" in meta.files.get("sha256", {}):
            out.setdefault(run.rel(member_file(folder, meta, "G.pt").path), k)
    return out


def _rows(run: RunDir, c: int) -> list[dict[str, Any]]:
    path = run.ea(c) / "lineage.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: not found (the EA phase of cycle {c} has not finished)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read ({exc})") from exc
    rows = []
    for k, line in enumerate(text.splitlines()):
        if line.strip():
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as exc:
                raise CheckpointError(f"{path}: line {k + 1} is not JSON ({type(exc).__name__})") from exc
            if not isinstance(row, dict):
                raise CheckpointError(f"{path}: line {k + 1} is not a JSON object")
            rows.append(row)
    return rows


def build_lineage(cfg: Config, run: RunDir) -> Lineage:
    """Read the whole run's lineage. Raises :class:`CheckpointError` naming the first missing record."""
    n = cfg.population.size
    nodes: dict[str, Node] = {INIT: Node(INIT, "init", 0, -1)}
    wanted: dict[str, tuple[Path, Path]] = {}  # child id → (the start record naming it, the file that must hold it)
    last = final_cycle(cfg)
    cycles = adam_cycles(cfg)
    for c in range(last + 1):
        paths = _g_paths(cfg, run, c - 1) if c > 0 else {}
        initial: list[Any] = []
        if c < cfg.run.cycles and (run.ea(c) / "fitness.json").exists():
            with record_shape(run.ea(c) / "fitness.json"):
                initial = list(read_json(run.ea(c) / "fitness.json").get("initial") or [])
                if not all(_numbers(row) for row in initial):
                    raise TypeError("'initial' is not a list of objective pairs")
        for j in range(n):
            start = read_member(run.start(c, j))
            if start is None:
                raise CheckpointError(f"{run.start(c, j)}: not found (the run has not reached cycle {c})")
            kind, _, rest = start.origin.partition(":")
            if kind == "ea":
                parents = [rest]
                wanted[rest] = (run.start(c, j) / "meta.json", run.ea(c - 1) / "lineage.jsonl")
            elif kind == "carried":
                if rest not in paths:
                    raise CheckpointError(f"{run.start(c, j) / 'meta.json'}: carried genome {rest} is no member "
                                          f"of cycle {c - 1}")
                parents = [_mid(c - 1, paths[rest])]
            else:
                parents = [INIT]
            nodes[_sid(c, j)] = Node(_sid(c, j), "start", c, j, parents,
                                     list(start.ea_objectives) if start.ea_objectives else None)
            if c in cycles:
                with record_shape(run.ea(c) / "fitness.json"):
                    nodes[_mid(c, j)] = Node(_mid(c, j), "member", c, j, [_sid(c, j)],
                                             list(initial[j]) if j < len(initial) else None)
        if c < cfg.run.cycles:
            own = _g_paths(cfg, run, c)
            for r in _rows(run, c):
                with record_shape(run.ea(c) / "lineage.jsonl"):
                    _add_child(nodes, r, c, own, run)
    for child, (named_by, holder) in sorted(wanted.items()):
        if child not in nodes:
            raise CheckpointError(f"{holder}: holds no child {child!r}, the parent {named_by} names")
    for node in nodes.values():
        for parent in node.parents:
            if parent not in nodes:
                raise CheckpointError(f"{run.ea(node.cycle) / 'lineage.jsonl'}: {node.id!r} names a parent "
                                      f"{parent!r} no record holds")
    final = [(_mid if cfg.adam.final_phase else _sid)(last, j) for j in range(n)]
    return Lineage(nodes, final, cfg.ea.generations, last)


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)


def _add_child(nodes: dict[str, Node], r: dict[str, Any], c: int, own: dict[str, int], run: RunDir) -> None:
    """One row of an EA phase's lineage.jsonl as a node (its shape checked here: the summary trusts it)."""
    ops = r.get("operators", [])
    if not isinstance(r["id"], str) or not isinstance(r["parents"], list) or not isinstance(ops, list):
        raise TypeError(f"row {str(r.get('id'))[:40]!r}: id, parents or operators of the wrong type")
    for op in ops:
        if not isinstance(op, dict) or (op.get("op") == "sbx" and not isinstance(op.get("partner"), int)):
            raise TypeError(f"row {r['id']!r}: operator {str(op)[:60]} is not an operator record")
    if r.get("objectives") is not None and not _numbers(r["objectives"]):
        raise TypeError(f"row {r['id']!r}: objectives {str(r['objectives'])[:60]} are not numbers")
    parents = []
    for p in r["parents"]:
        if "child" in p:
            parents.append(str(p["child"]))
        elif p.get("checkpoint") in own:
            parents.append(_mid(c, own[p["checkpoint"]]))
        else:
            raise CheckpointError(f"{run.ea(c) / 'lineage.jsonl'}: child {r['id']} has parent "
                                  f"{p.get('checkpoint')!r}, no member of cycle {c}")
    nodes[r["id"]] = Node(r["id"], "child", c, int(r["slot"]), parents, r.get("objectives"),
                          int(r["generation"]), list(ops))


def primary_line(lin: Lineage, node: str) -> list[str]:
    """``node`` and its first parents back to ``init`` (newest first)."""
    out = [node]
    while lin.nodes[out[-1]].parents:
        out.append(lin.nodes[out[-1]].parents[0])
    return out


def summarise(lin: Lineage) -> list[dict[str, Any]]:
    """Per final member: the slots its primary line ran in per cycle, how many cycles it survived in its own slot,
    the crossovers (partner slots) and mutations along it, and its objectives."""
    out = []
    for j, fid in enumerate(lin.final):
        line = primary_line(lin, fid)
        members = [lin.nodes[x] for x in line if lin.nodes[x].kind == "member"]
        slots = [(m.cycle, m.slot) for m in members]
        survived = 0
        for _, s in slots:
            if s != j:
                break
            survived += 1
        partners: Counter[int] = Counter()
        mutations = copies = 0
        for x in line:
            node = lin.nodes[x]
            for op in node.operators:
                if op.get("op") == "sbx":
                    partners[int(op["partner"])] += 1
                elif op.get("op") == "mutation":
                    mutations += 1
                elif op.get("op") == "copy":
                    copies += 1
        origin = next((m for m in slots if m[1] != j), None)
        out.append({"slot": j, "node": fid, "line": line, "slots_by_cycle": [s for _, s in reversed(slots)],
                    "survived_cycles": survived, "cycles": len(slots),
                    "joined_from": None if origin is None else {"cycle": origin[0], "slot": origin[1]},
                    "crossovers": sum(partners.values()), "crossover_partners": dict(sorted(partners.items())),
                    "mutations": mutations, "copies": copies,
                    "ea_objectives": lin.nodes[_sid(lin.cycles, j)].objectives})
    return out


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def format_summary(rows: list[dict[str, Any]]) -> str:
    """One line per final member (see :func:`summarise`)."""
    lines = []
    for r in rows:
        partners = ", ".join(f"slot {k} ×{v}" for k, v in r["crossover_partners"].items())
        joined = (f"; before that its line came from slot {r['joined_from']['slot']} (cycle "
                  f"{r['joined_from']['cycle']})" if r["joined_from"] else "")
        obj = r["ea_objectives"]
        f = "-" if obj is None else f"({obj[0]:.5g}, {obj[1]:.5g})"
        lines.append(f"member {r['slot']:02d}: line survived {r['survived_cycles']} of {r['cycles']} cycles in slot "
                     f"{r['slot']}{joined}; {_count(r['crossovers'], 'crossover')}"
                     f"{f' (with {partners})' if partners else ''}, {_count(r['mutations'], 'mutation')}; "
                     f"slots by cycle {'→'.join(map(str, r['slots_by_cycle']))}; last EA objectives "
                     f"(L1, perceptual) {f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# The picture


def _x(node: Node, generations: int) -> float:
    if node.kind == "start":
        return float(node.cycle)
    if node.kind == "member":
        return node.cycle + 0.3
    if node.kind == "child":
        return node.cycle + 0.35 + 0.55 * ((node.generation or 0) + 1) / max(1, generations)
    return -0.4


def _color(node: Node) -> str:
    ops = {o.get("op") for o in node.operators}
    if "sbx" in ops and "mutation" in ops:
        return "tab:red"
    if "sbx" in ops:
        return "tab:orange"
    if "mutation" in ops:
        return "tab:green"
    return "0.6"


def plot_lineage(lin: Lineage, title: str) -> bytes:
    """PNG bytes: the final population's ancestry, cycles left to right, slots bottom to top. Start entries are
    squares, trained members circles, EA children dots coloured by operator (SBX orange, mutation green, both red,
    copy grey); a crossover's partner edge is dashed; final members are labelled with their last EA objectives.
    Byte-stable: fixed size per run length and dpi, Agg renderer, no "Software" metadata."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    keep = sorted(lin.ancestors(lin.final))
    n = 1 + max(node.slot for node in lin.nodes.values())
    fig = Figure(figsize=(min(40.0, 3.0 + 1.8 * (lin.cycles + 1)), 1.8 + 0.7 * n), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pos = {k: (_x(lin.nodes[k], lin.generations), float(lin.nodes[k].slot if k != INIT else (n - 1) / 2))
           for k in keep}
    for k in keep:
        for i, p in enumerate(lin.nodes[k].parents):
            if p in pos:
                (x0, y0), (x1, y1) = pos[p], pos[k]
                ax.plot([x0, x1], [y0, y1], "--" if i else "-", color="0.55" if i else "0.25",
                        linewidth=0.6 if i else 0.9, zorder=1)
    style = {"start": ("s", 36, "white", "tab:blue"), "member": ("o", 40, "tab:blue", "tab:blue"),
             "init": ("D", 50, "black", "black")}
    for k in keep:
        node = lin.nodes[k]
        x, y = pos[k]
        if node.kind == "child":
            ax.scatter([x], [y], s=14, color=_color(node), zorder=3)
        else:
            m, s, face, edge = style[node.kind]
            ax.scatter([x], [y], marker=m, s=s, facecolors=face, edgecolors=edge, zorder=2)
    for j, fid in enumerate(lin.final):
        obj = lin.nodes[_sid(lin.cycles, j)].objectives
        label = f"slot {j}" + ("" if obj is None else f"\n({obj[0]:.4g}, {obj[1]:.4g})")
        ax.annotate(label, pos[fid], textcoords="offset points", xytext=(8, -4), fontsize=7, color="tab:blue")
    ax.set_xticks(range(lin.cycles + 1))
    ax.set_xlim(-0.6, lin.cycles + 0.9)
    ax.set_yticks(range(n))
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel("cycle (start entry ▪, after Adam ●, then the EA phase's children by generation)")
    ax.set_ylabel("slot")
    ax.set_title(title, fontsize=10)
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=t, markersize=5)
               for c, t in (("tab:orange", "SBX"), ("tab:green", "mutation"), ("tab:red", "SBX + mutation"),
                            ("0.6", "copy"))]
    handles.append(Line2D([], [], linestyle="--", color="0.55", label="crossover partner"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(True, axis="x", linewidth=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _tensorboard(run: RunDir, png: bytes) -> None:
    import numpy as np
    from PIL import Image

    from .runtime import tb_writer

    folder = run.tb / "lineage"
    for old in sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []:
        old.unlink()  # this folder holds only the latest picture
    with Image.open(io.BytesIO(png)) as im:
        img = np.asarray(im.convert("RGB"))
    tb = tb_writer(folder)
    try:
        tb.add_image("lineage", img, 0, dataformats="HWC")
    finally:
        tb.close()


def write_lineage(run_dir: str | Path) -> tuple[Path, str]:
    """Build, draw and summarise the lineage of a finished run's final population; return (PNG path, summary)."""
    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    lin = build_lineage(cfg, run)
    rows = summarise(lin)
    text = format_summary(rows)
    png = plot_lineage(lin, f"{cfg.run.name}: ancestry of the final population ({cfg.run.cycles} EA phases, "
                            f"{cfg.ea.selection}, N={cfg.population.size})")
    out = run.root / "lineage"
    atomic_write_bytes(out / "lineage.png", png)
    atomic_write_text(out / "summary.txt", text + "\n")
    keep = sorted(lin.ancestors(lin.final))
    atomic_write_json(out / "ancestry.json", {"final": lin.final, "summary": rows,
                                              "nodes": {k: vars(lin.nodes[k]) for k in keep}})
    _tensorboard(run, png)
    return out / "lineage.png", text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m easlurm.lineage", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run directory whose final population exists")
    args = ap.parse_args(argv)
    try:
        png, text = write_lineage(args.run)
    except EaslurmError as exc:
        print(f"easlurm.lineage: error: {exc}", file=sys.stderr)
        return 2
    print(text)
    print(f"lineage picture: {png} (and TensorBoard: {RunDir(args.run).tb / 'lineage'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
