"""Another commit of thrifty, runnable next to this checkout: its tree exported with ``git
archive`` into a temp dir, run by this venv's Python with that tree first on ``PYTHONPATH``.

This venv's packages serve it where they satisfy the commit's ``pyproject.toml``; what they do
not (``msgspec`` before the pipeline redesign, say) is installed with ``pip --target`` into a
side directory that goes on ``PYTHONPATH`` after the tree, so this venv is never changed.
Both directories are kept in the temp dir, keyed by commit and by requirements, for the next run.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(tempfile.gettempdir())


@dataclass(frozen=True)
class Side:
    """One thrifty to run: its source tree and the environment its processes need."""

    label: str
    commit: str
    root: Path
    env: dict[str, str]


def resolve(rev: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def export(commit: str) -> Path:
    """The commit's tree in ``$TMPDIR/thrifty-ab-<sha>`` (made once; a marker file says it is whole)."""
    dest = CACHE / f"thrifty-ab-{commit[:12]}"
    marker = dest / ".exported"
    if marker.exists():
        return dest
    dest.mkdir(exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tempfile.TemporaryFile() as f:
        f.write(archive)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(dest, filter="data")
    marker.write_text(commit + "\n")
    return dest


def unmet(root: Path) -> list[str]:
    """The tree's runtime requirements that this interpreter's installed packages do not meet."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    missing = []
    for spec in project.get("dependencies", []):
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(spec)
            continue
        if not req.specifier.contains(version, prereleases=True):
            missing.append(spec)
    return missing


def side_packages(requirements: list[str]) -> Path:
    """A ``pip --target`` directory holding ``requirements`` (installed once per set)."""
    key = hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:12]
    dest = CACHE / f"thrifty-ab-deps-{key}"
    marker = dest / ".installed"
    if not marker.exists():
        print(f"installing {', '.join(requirements)} into {dest} ...", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--target",
                str(dest),
                *requirements,
            ],
            check=True,
        )
        marker.write_text("\n".join(requirements) + "\n")
    return dest


def side(label: str, commit: str, root: Path) -> Side:
    """``root`` runnable by this interpreter; checked: ``import thrifty`` finds ``root``'s."""
    paths = [str(root)]
    missing = unmet(root)
    if missing:
        paths.append(str(side_packages(missing)))
    env = {"PYTHONPATH": os.pathsep.join(paths)}
    found = subprocess.run(
        [sys.executable, "-c", "import thrifty; print(thrifty.__file__)"],
        cwd=root,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"{label}: import thrifty found {found}, not the tree in {root}")
    return Side(label, commit, root, env)


def this_checkout() -> Side:
    """This working tree as it is (uncommitted changes included)."""
    head = resolve("HEAD")
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return side(f"{head[:9]}{'+changes' if dirty else ''}", head, ROOT)


def other_commit(rev: str) -> Side:
    commit = resolve(rev)
    return side(commit[:9], commit, export(commit))
