"""Real asv results of a throwaway git repository: one session-scoped fixture shared by the slow tests.

The repository is a copy of this project (the working tree's tracked and untracked, not ignored
files) with four commits:

* ``good``: the project as it is;
* ``docs``: a change to docs only, never benchmarked (a gap in the history);
* ``comment``: a comment added to ``estimators/baselines.py``, nothing else (unchanged code);
* ``broken``: the leave-one-out baseline zeroed (``reinforce-loo`` becomes REINFORCE with the
  leave-one-out estimator's N/(N-1) factor: noisier wherever the mean cost is far from zero).

``good``, ``comment`` and ``broken`` are benchmarked with ``asv run --set-commit-hash
--record-samples`` on the quality tracks (``quality.*``: variance, MSE, bias excess, 1/SNR; one
``setup_cache`` measures all their cells), each commit installed (non-editable) into one
environment before its run. That environment is a fresh ``venv`` whose ``.pth`` file adds the
running interpreter's site-packages with ``site.addsitedir``: torch and the other dependencies
come from whichever Python runs the tests (a machine-wide one or a virtual environment; a
``--system-site-packages`` venv would reach the *base* interpreter from inside a venv). A commit
is installed by copying its packages (``[tool.setuptools] packages``, pure Python) into the
environment's site-packages, which come first on ``sys.path``, ahead of any editable install of
the working tree; nothing is built, so no build backend or wheel tool is needed.
"""
from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MACHINE = "gradnoise-regression-test"
BENCH = r"^quality\."

# The one line of estimators/baselines.py that the broken commit changes.
LOO_LINE = "return (f.sum(0, keepdim=True) - f) / (n - 1)"
LOO_BROKEN = "return torch.zeros_like(f)  # deliberately broken: no baseline"
COMMENT = "# A comment, and nothing else, changes in this commit."


@dataclass
class AsvRepository:
    """The throwaway repository, its asv results and how to run asv on it."""

    repo: Path
    results_dir: Path
    env: dict
    commits: dict[str, str]            # good, docs, comment, broken -> full hash
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def asv(self) -> list[str]:
        return [sys.executable, "-m", "asv"]


def run(cmd: list, cwd: Path, env: dict | None = None) -> str:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out.stdout


def git(repo: Path, *args: str) -> str:
    who = ["-c", "user.name=gradnoise test", "-c", "user.email=test@example.invalid"]
    return run(["git", *who, *args], repo).strip()


def project_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    return [p for p in listed if p and (ROOT / p).is_file()]


def throwaway_repository(repo: Path) -> dict[str, str]:
    """The four commits of the module docstring; returns their full hashes."""
    for rel in project_files():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, repo / rel)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "baseline")
    commits = {"good": git(repo, "rev-parse", "HEAD")}

    (repo / "docs" / "benchmarks.md").write_text((repo / "docs" / "benchmarks.md").read_text() + "\nA docs change.\n")
    git(repo, "commit", "-q", "-am", "docs: a sentence")
    commits["docs"] = git(repo, "rev-parse", "HEAD")

    baselines = repo / "estimators" / "baselines.py"
    source = baselines.read_text()
    first_import = source.index("\nimport ")
    baselines.write_text(source[:first_import] + "\n" + COMMENT + source[first_import:])
    git(repo, "commit", "-q", "-am", "comment only")
    commits["comment"] = git(repo, "rev-parse", "HEAD")

    source = baselines.read_text()
    assert source.count(LOO_LINE) == 1, "LeaveOneOut.value changed: update LOO_LINE in tests/asv_repository.py"
    baselines.write_text(source.replace(LOO_LINE, LOO_BROKEN))
    git(repo, "commit", "-q", "-am", "break the leave-one-out baseline")
    commits["broken"] = git(repo, "rev-parse", "HEAD")
    return commits


def environment_borrowing_this_interpreter(env_dir: Path) -> tuple[str, Path]:
    """A venv whose ``.pth`` adds this interpreter's site-packages; ``(python, its site-packages)``."""
    run([sys.executable, "-m", "venv", "--without-pip", env_dir], env_dir.parent)
    python = str(env_dir / "bin" / "python")
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env_dir.parent).strip())
    parents = [p for p in [*site.getsitepackages(), site.getusersitepackages()] if os.path.isdir(p)]
    (purelib / "_borrowed_site_packages.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in parents))
    return python, purelib


def install_commit(repo: Path, purelib: Path) -> None:
    """Copy the checked-out commit's package folders into ``purelib`` as ``pyproject.toml``'s
    ``package-dir`` maps them (``estimators/`` -> ``gradnoise/``, ``analysis/`` ->
    ``gradnoise/analysis/``): a non-editable install, nothing built."""
    try:
        import tomllib
        package_dir = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    except ImportError:                  # Python 3.10: the project's mapping
        package_dir = {"gradnoise": "estimators", "gradnoise.analysis": "analysis"}
    shutil.rmtree(purelib / "gradnoise", ignore_errors=True)
    for name, folder in sorted(package_dir.items(), key=lambda item: item[0].count(".")):
        shutil.copytree(repo / folder, purelib / name.replace(".", "/"), ignore=shutil.ignore_patterns("__pycache__"))


@pytest.fixture(scope="session")
def asv_repository(tmp_path_factory) -> AsvRepository:
    """Build the repository and benchmark ``good``, ``comment`` and ``broken`` (once per session)."""
    start = time.perf_counter()
    tmp = tmp_path_factory.mktemp("asv-repository")
    repo, home, env_dir = tmp / "repo", tmp / "home", tmp / "env"
    repo.mkdir(), home.mkdir()
    commits = throwaway_repository(repo)
    python, purelib = environment_borrowing_this_interpreter(env_dir)
    env = {**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1"}   # asv's machine file goes to this HOME
    out = AsvRepository(repo, repo / ".asv" / "results", env, commits)
    run([*out.asv, "machine", "--yes", "--machine", MACHINE], repo, env)
    for name in ("good", "comment", "broken"):
        commit = commits[name]
        git(repo, "checkout", "-q", commit)
        install_commit(repo, purelib)
        where = run([python, "-c", "import gradnoise; print(gradnoise.__file__)"], tmp, env)
        assert where.startswith(str(purelib)), f"benchmarks would import {where}, not commit {commit}"
        t0 = time.perf_counter()
        run([*out.asv, "run", "--environment", f"existing:{python}", "--set-commit-hash", commit,
             "--record-samples", "--machine", MACHINE, "--bench", BENCH, "--show-stderr"], repo, env)
        out.seconds[name] = time.perf_counter() - t0
    git(repo, "checkout", "-q", "main")
    out.seconds["total"] = time.perf_counter() - start
    print(f"asv repository: {', '.join(f'{k} {v:.0f} s' for k, v in out.seconds.items())}")
    return out


#: A grid cell in an asv benchmark name: ``...track_variance('bernoulli-toy, reinforce-loo, 10')``.
CELL = re.compile(r"\('(?P<problem>[^,']+), (?P<estimator>[^,']+), (?P<n>\d+)'\)$")
