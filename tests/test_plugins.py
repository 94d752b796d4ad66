"""Plugins (gradnoise.plugins): entry points, --plugin, $GRADNOISE_PLUGINS; origins, repeat-safe
registration, clashes, broken plugins, Dask workers, provenance and the asv grid.

The example plugin (examples/plugin) is used twice: as files given with --plugin (and the
environment variable), and installed with its entry points (``pip install --no-deps --target``,
then PYTHONPATH in subprocesses: entry points are found through the installed metadata, as in a
venv). Tests that load plugins into this process restore the registries afterwards.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import gradnoise as gn
from gradnoise import plugins, provenance, registry
from gradnoise.analysis.cli import build_parser, main
from gradnoise.analysis.studies import base as studies_base

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin"
FILES = [EXAMPLE / "src" / "gn_example_plugin" / f"{m}.py" for m in ("estimators", "problems", "studies")]
SWEEP = ["--problem", "exponential-quadratic", "--problem", "gaussian-cos", "--estimator", "reinforce-split",
         "--estimator", "reinforce", "--budget", "2", "--budget", "10", "--replicates", "200", "--quiet"]


@pytest.fixture
def isolated(monkeypatch):
    """The registries and the plugin loader's state as they were, after the test."""
    monkeypatch.setattr(registry, "_ESTIMATORS", dict(registry._ESTIMATORS))
    monkeypatch.setattr(registry, "_PROBLEMS", dict(registry._PROBLEMS))
    monkeypatch.setattr(studies_base, "_STUDIES", dict(studies_base._STUDIES))
    for name in ("_LOADED", "_FAILED"):
        monkeypatch.setattr(plugins, name, dict(getattr(plugins, name)))
    monkeypatch.setattr(plugins, "_PACKAGES", set(plugins._PACKAGES))
    monkeypatch.setattr(plugins, "_DONE", set())          # $GRADNOISE_PLUGINS and entry points read anew
    monkeypatch.delenv(plugins.ENV, raising=False)
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(plugins.FILE_MODULE_PREFIX) or name.startswith("gn18_"):
            del sys.modules[name]
    provenance.library_version.cache_clear()


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def env(**extra) -> dict:
    """This process's environment for a subprocess: one thread, no plugins but those in ``extra``."""
    out = {k: v for k, v in os.environ.items() if k != plugins.ENV}
    return {**out, "OMP_NUM_THREADS": "1", **extra}


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradnoise.analysis", *map(str, args)], capture_output=True,
                          text=True, cwd=kwargs.pop("cwd", ROOT), env=kwargs.pop("env", env()), **kwargs)


# ---------------------------------------------------------------------------------------------
# Registry: origins, repeats, clashes, broken plugins, laziness
# ---------------------------------------------------------------------------------------------
def test_import_gradnoise_loads_no_plugin():
    code = ("import gradnoise, gradnoise.analysis.cli as c; from gradnoise import plugins; c.build_parser(); "
            "print(sorted(plugins._DONE), plugins.specs())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env(**{plugins.ENV: os.pathsep.join(map(str, FILES))}))
    assert out.stdout.strip() == "[] []"


def test_builtins_are_built_in_and_plugins_name_their_file(isolated):
    assert registry.estimator_origin("reinforce") == plugins.BUILT_IN
    plugins.load(str(FILES[0]))
    origin = registry.estimator_origin("reinforce-split")
    assert origin.kind == "file" and origin.name == str(FILES[0]) and origin.is_plugin


def test_the_same_plugin_twice_is_no_clash(isolated, tmp_path):
    plugins.load(str(FILES[0]))
    plugins.load(str(FILES[0]))                          # again: nothing happens
    copy = tmp_path / "pkg"
    shutil.copytree(EXAMPLE / "src" / "gn_example_plugin", copy / "gn18_example")
    edited = copy / "gn18_edited"
    shutil.copytree(EXAMPLE / "src" / "gn_example_plugin", edited)
    source = (edited / "estimators.py").read_text()
    (edited / "estimators.py").write_text(source.replace("f.shape[0] // 2", "(f.shape[0] + 1) // 2"))
    sys.path.insert(0, str(copy))
    try:
        plugins.load("gn18_example.estimators")          # a copy of the same code (installed + file): no clash
        with pytest.raises(registry.RegistryClash, match=r"^estimator 'reinforce-split' of plugin module "
                           r"gn18_edited.estimators \(gn18_edited.*\) clashes with estimator 'reinforce-split' "
                           r"of file .*estimators.py \(gradnoise_plugin_estimators.reinforce_split\)"):
            plugins.load("gn18_edited.estimators")       # other code under the same name: a clash
    finally:
        sys.path.remove(str(copy))
    assert registry.estimator_origin("reinforce-split").kind == "file"     # the first origin is kept


def test_a_clash_with_a_built_in_is_one_line_naming_both(isolated, tmp_path, capsys):
    clash = write(tmp_path / "clash.py", """
        import gradnoise as gn
        @gn.register_estimator("reinforce")
        def mine():
            "My own reinforce."
            return gn.ScoreFunction()
    """)
    assert main(["list", "--plugin", str(clash)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "estimator 'reinforce' of file" in err and str(clash) in err and "the built-in" in err
    assert "reinforce" in gn.estimator_names() and registry.estimator_origin("reinforce") == plugins.BUILT_IN


def test_a_broken_plugin_is_one_line_and_the_rest_works(isolated, tmp_path, capsys, monkeypatch):
    broken = write(tmp_path / "broken.py", """
        import gradnoise as gn
        @gn.register_estimator("half-registered")
        def half():
            "Registered before the failure."
            return gn.ScoreFunction()
        import gn18_no_such_module
    """)
    assert main(["list", "--plugin", str(broken)]) == 2              # asked for: an error
    err = capsys.readouterr().err.strip()
    assert err == (f"gradnoise list: error: plugin file {broken} failed to import "
                   f"(ModuleNotFoundError: No module named 'gn18_no_such_module')")
    assert "half-registered" not in registry._ESTIMATORS            # nothing half-registered stays
    monkeypatch.setenv(plugins.ENV, os.pathsep.join([str(broken), str(FILES[0])]))
    assert main(["list"]) == 0                                      # from the environment: one line, go on
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"gradnoise: plugin file {broken} failed to import (ModuleNotFoundError: No module named "
        f"'gn18_no_such_module') (from ${plugins.ENV}); its names are unavailable"]
    assert "reinforce-split" in captured.out and "reinforce-loo" in captured.out
    with pytest.raises(KeyError, match="plugins that failed to import"):
        gn.get_estimator("half-registered")


def test_every_command_takes_plugin():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"sweep", "list", "fit", "plot", "report", "study", "compare", "history"} <= set(commands)
    for name, sub in commands.items():
        assert any("--plugin" in a.option_strings for a in sub._actions), name


def test_list_shows_names_and_sources(isolated, capsys):
    assert main(["list", *[a for f in FILES[:2] for a in ("--plugin", str(f))]]) == 0
    lines = capsys.readouterr().out.splitlines()
    split = next(line for line in lines if line.strip().startswith("reinforce-split"))
    assert f"[file {FILES[0]}]" in split
    assert "[built in]" in next(line for line in lines if line.strip().startswith("reinforce-loo"))
    assert f"[file {FILES[1]}]" in next(line for line in lines if "exponential-quadratic" in line)


# ---------------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------------
def test_a_plugins_cells_name_it_and_its_code(isolated):
    for f in FILES[:2]:
        plugins.load(str(f))
    text = provenance.cell_version(gn.make_problem("exponential-quadratic"), gn.get_estimator("reinforce-split")).text
    parts = provenance.version_parts(text)
    assert parts["problem-from"] == "problems.py" and parts["estimator-from"] == "estimators.py"
    assert len(parts["estimator"]) == 8
    assert provenance.cell_version(gn.make_problem("gaussian-cos"), gn.get_estimator("reinforce")).text == \
        provenance.code_version()                                  # built-ins: as before


def test_a_plugin_package_is_hashed_by_source_not_by_version(isolated):
    assert provenance.library_version("numpy") is not None
    plugins._PACKAGES.add("numpy")                                   # as if numpy were a loaded plugin
    provenance.library_version.cache_clear()
    assert provenance.library_version("numpy") is None


def test_pickling_an_object_leaves_its_fingerprint(isolated):
    import cloudpickle

    plugins.load(str(FILES[0]))
    estimator = gn.get_estimator("reinforce-split")
    before = provenance.cell_version(gn.make_problem("gaussian-cos"), estimator).text
    cloudpickle.dumps(estimator)                 # copyreg caches __slotnames__ on the class
    assert provenance.cell_version(gn.make_problem("gaussian-cos"), estimator).text == before


def test_editing_the_plugin_recomputes_its_cells_only(tmp_path):
    folder = tmp_path / "plugin"
    shutil.copytree(FILES[0].parent, folder)
    args = ["sweep", *SWEEP, "--out", tmp_path / "s.csv", "--plugin", folder / "estimators.py",
            "--plugin", folder / "problems.py"]
    first = run(*args)
    assert first.returncode == 0, first.stderr
    source = (folder / "estimators.py").read_text()
    (folder / "estimators.py").write_text(source.replace("# (1, R) each", "# (1, R) each, edited"))
    assert "8 reused" in run(*args).stdout                           # a comment: the same code
    (folder / "estimators.py").write_text(source.replace("h = f.shape[0] // 2", "h = (f.shape[0] + 1) // 2"))
    again = run(*args)
    assert again.returncode == 0, again.stderr
    assert "4 of them recomputed because their code changed since: the code of estimator reinforce-split (4 cells)" \
        in again.stdout, again.stdout


# ---------------------------------------------------------------------------------------------
# Dask workers
# ---------------------------------------------------------------------------------------------
def test_sweep_with_workers_is_bitwise_the_sequential_one_with_plugin_files(tmp_path):
    plugin_args = [a for f in FILES[:2] for a in ("--plugin", f)]
    for name, extra in (("seq.csv", []), ("par.csv", ["--workers", "2"])):
        done = run("sweep", *SWEEP, "--out", tmp_path / name, *plugin_args, *extra)
        assert done.returncode == 0, done.stderr
    seq, par = (pd.read_csv(tmp_path / n).drop(columns="seconds_per_estimate") for n in ("seq.csv", "par.csv"))
    assert len(seq) == 12 and "reinforce-split" in set(seq.estimator)      # 8 cells, gaussian-cos has 2 params
    pd.testing.assert_frame_equal(seq, par)


def test_a_worker_without_the_plugin_is_one_error_naming_it(isolated, tmp_path):
    from gradnoise.cluster import open_client

    write(tmp_path / "gn18_client_only.py", """
        import gradnoise as gn
        from gradnoise.baselines import LeaveOneOut
        @gn.register_estimator("gn18-loo")
        def loo():
            "Leave-one-out, from a module only the client can import."
            return gn.ScoreFunction(LeaveOneOut())
    """)
    with open_client(workers=1, local="dask") as client:
        sys.path.insert(0, str(tmp_path))            # after the worker started: it cannot import the module
        try:
            plugins.load("gn18_client_only")
            with pytest.raises(ValueError, match=r"^Dask worker .*: plugin module 'gn18_client_only' cannot be "
                                                 r"imported on this worker \(ModuleNotFoundError: .*install the plugin"):
                gn.measure("gaussian-cos", ["gn18-loo"], [2], replicates=20, client=client)
        finally:
            sys.path.remove(str(tmp_path))


def test_load_plugins_on_a_worker_names_a_missing_file():
    from gradnoise.cluster import load_plugins

    assert load_plugins([]) is None
    assert load_plugins(["/nonexistent/gn18.py"]) == "plugin file '/nonexistent/gn18.py' does not exist"


# ---------------------------------------------------------------------------------------------
# asv: a plugin's cells join the grid, no built-in's tracked number moves
# ---------------------------------------------------------------------------------------------
def test_asv_grid_takes_plugins_and_keeps_the_builtins_bias_threshold():
    code = ("import json, benchmarks.common as c, benchmarks.memory as m; print(json.dumps([c.BIAS_Z_THRESHOLD, "
            "c.BUILTIN_CELLS, list(c.CELLS), list(m.CELLS), c.bias_threshold([{'problem': 'gaussian-cos:k=2', "
            "'estimator': 'reinforce'}]) == c.BIAS_Z_THRESHOLD]))")
    import json

    outs = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                                      env=env(**extra)).stdout)
            for extra in ({}, {plugins.ENV: os.pathsep.join(map(str, FILES[:2]))})]
    (z0, builtin0, cells0, mem0, same0), (z1, builtin1, cells1, mem1, same1) = outs
    assert z0 == z1 and builtin0 == builtin1 == cells0 and same0 and same1
    added = set(cells1) - set(cells0)
    assert "exponential-quadratic, reinforce-split, 10" in added and "gaussian-cos, reinforce-split, 100" in added
    assert "exponential-quadratic, reparam, 1" in added and not set(cells0) - set(cells1)
    assert "gaussian-cos, reinforce-split" in mem1 and "exponential-quadratic, reinforce" in mem1


# ---------------------------------------------------------------------------------------------
# Installed with its entry points
# ---------------------------------------------------------------------------------------------
def pip_install(source: Path, target: Path) -> None:
    """``pip install --no-deps --target`` of a copy of ``source`` (pip builds in the source folder)."""
    import importlib.util

    build = target.parent / f"build-{source.name}"
    shutil.copytree(source, build)
    # setuptools of this environment when it has one (no download), else pip's isolated build
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *isolation, "--target", str(target),
                    str(build)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example plugin installed (no dependencies: gradnoise is this one) into a folder of its own."""
    target = tmp_path_factory.mktemp("site") / "site"
    pip_install(EXAMPLE, target)
    return env(PYTHONPATH=str(target))


def test_a_broken_installed_plugin_is_one_line_and_the_rest_works(installed, tmp_path):
    source = tmp_path / "broken"
    (source / "gn18_broken").mkdir(parents=True)
    write(source / "pyproject.toml", """
        [project]
        name = "gn18-broken-plugin"
        version = "0.3.0"
        [project.entry-points."gradnoise.estimators"]
        broken = "gn18_broken.estimators"
        [tool.setuptools]
        packages = ["gn18_broken"]
    """)
    write(source / "gn18_broken" / "__init__.py", "")
    write(source / "gn18_broken" / "estimators.py", "raise RuntimeError('deliberately broken')\n")
    target = tmp_path / "site"
    pip_install(source, target)
    both = {**installed, "PYTHONPATH": os.pathsep.join([installed["PYTHONPATH"], str(target)])}
    out = run("list", env=both)
    assert out.returncode == 0 and "reinforce-split" in out.stdout and "reinforce-loo" in out.stdout
    assert out.stderr.strip().splitlines() == [
        "gradnoise: plugin gn18-broken-plugin 0.3.0 (gn18_broken.estimators) failed to import "
        "(RuntimeError: deliberately broken); its names are unavailable"]


def test_installed_plugin_is_listed_with_its_distribution(installed):
    out = run("list", env=installed)
    assert out.returncode == 0, out.stderr
    split = next(line for line in out.stdout.splitlines() if line.strip().startswith("reinforce-split"))
    assert "[gradnoise-example-plugin 0.1.0]" in split
    studies = run("study", "--list", env=installed)
    assert "[gradnoise-example-plugin 0.1.0]" in studies.stdout and "split-baseline" in studies.stdout


def test_installed_plugin_sweeps_on_workers_bitwise_and_records_its_version(installed, tmp_path):
    for name, extra in (("seq.csv", []), ("par.csv", ["--workers", "2"])):
        done = run("sweep", *SWEEP, "--out", tmp_path / name, *extra, env=installed)
        assert done.returncode == 0, done.stderr
    seq, par = (pd.read_csv(tmp_path / n).drop(columns="seconds_per_estimate") for n in ("seq.csv", "par.csv"))
    pd.testing.assert_frame_equal(seq, par)
    versions = set(seq[seq.estimator == "reinforce-split"].code_version)
    assert all("+estimator-from:gradnoise-example-plugin==0.1.0" in v for v in versions), versions
    # the same plugin also given as a file: no clash, the same numbers
    again = run("sweep", *SWEEP, "--out", tmp_path / "seq.csv", "--plugin", FILES[0], env=installed)
    assert again.returncode == 0 and "8 reused" in again.stdout, again.stdout + again.stderr


def test_installed_plugins_own_tests_pass(installed):
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                          capture_output=True, text=True, env=installed, cwd=EXAMPLE)
    assert done.returncode == 0, done.stdout[-2000:]


# ---------------------------------------------------------------------------------------------
# asv run --quick: the plugin's cells are benchmarked, with no edit to benchmarks/
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["files", "entry points"])
def test_asv_quick_run_benchmarks_the_plugins_cells(how, tmp_path, request):
    """``asv run --python=same --quick`` of this commit in this environment (no virtualenv built),
    the plugin given by $GRADNOISE_PLUGINS or installed with its entry points."""
    import json

    extra = ({plugins.ENV: os.pathsep.join(map(str, FILES[:2]))} if how == "files"
             else request.getfixturevalue("installed"))
    config = tmp_path / "asv.conf.json"
    from asv import util as asv_util

    settings = asv_util.load_json(str(ROOT / "asv.conf.json"), js_comments=True)     # the suite's, its output moved
    config.write_text(json.dumps({
        **settings, "repo": str(ROOT), "benchmark_dir": str(ROOT / "benchmarks"), "env_dir": str(tmp_path / "env"),
        "results_dir": str(tmp_path / "results"), "html_dir": str(tmp_path / "html"),
        }))
    asv = [sys.executable, "-m", "asv", "--config", str(config)]
    # asv drops PYTHONPATH from the benchmarks' environment and reads ASV_PYTHONPATH instead
    environ = env(**extra) if how == "files" else {**extra, "ASV_PYTHONPATH": extra["PYTHONPATH"]}
    subprocess.run([*asv, "machine", "--yes", "--machine", "gn-plugin-test"], check=True, capture_output=True,
                   env=environ, cwd=tmp_path)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
    done = subprocess.run([*asv, "run", "--python=same", "--quick", "--set-commit-hash", commit, "--machine",
                           "gn-plugin-test", "--bench", r"timing.TimeOneEstimate.*exponential-quadratic, reinforce-split"],
                          capture_output=True, text=True, env=environ, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [results] = [p for p in (tmp_path / "results" / "gn-plugin-test").glob("*.json") if p.name != "machine.json"]
    data = json.loads(results.read_text())
    times, params = data["results"]["timing.TimeOneEstimate.time_one_estimate"][:2]
    timed = {label: t for label, t in zip(params[0], times) if t == t}         # not NaN: run
    assert set(timed) == {"'exponential-quadratic, reinforce-split, 10'", "'exponential-quadratic, reinforce-split, 100'"}
    assert all(0 < t < 10 for t in timed.values())


def test_a_script_without_a_main_guard_is_told_so(tmp_path):
    script = write(tmp_path / "no_guard.py", """
        import gradnoise as gn
        from gradnoise.cluster import open_client
        with open_client(workers=1, local="dask") as client:
            gn.measure("gaussian-cos", ["reinforce"], [2], replicates=20, client=client)
    """)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env(), cwd=tmp_path,
                          timeout=300)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: the local Dask workers failed to start (RuntimeError: Nanny failed to start.)")
    assert f"{script} runs again in each worker process" in last and 'if __name__ == "__main__":' in last
