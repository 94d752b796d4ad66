"""Plugins: a researcher's estimators, problems and studies, found the way pytest finds its plugins.

Three doors, all loading ordinary Python modules whose import registers names through the usual
decorators (``@register_estimator``, ``@register_problem``, ``@study``):

* **entry points** (:mod:`importlib.metadata`) of an installed distribution, in the groups
  :data:`GROUPS` (``gradnoise.estimators``, ``gradnoise.problems``, ``gradnoise.studies``), e.g. in
  its ``pyproject.toml``::

      [project.entry-points."gradnoise.estimators"]
      reinforce-mean-baseline = "my_package.estimators"

  Loaded lazily: on the first look-up or listing of a registry (:func:`ensure_loaded`), never by
  ``import gradnoise``, so a command that needs no name pays nothing for them;
* ``--plugin MODULE_OR_FILE`` (repeatable) on every ``gradnoise`` command (:func:`load`);
* the environment variable :data:`ENV` (``GRADNOISE_PLUGINS``): the same items separated by
  ``os.pathsep`` (``:`` on Linux and macOS, ``;`` on Windows, as in ``PYTHONPATH``), for asv and
  scripts; loaded with the entry points.

Each registered name records its :class:`Origin` (built in; a distribution's name and version; a
module; a file). Loading the same code twice (an entry point and the same file given with
``--plugin``, or again on a Dask worker) registers nothing new; a name that clashes with a built-in
or another plugin's is one error naming both origins (:class:`gradnoise.registry.RegistryClash`).
A plugin that fails to import is one line naming it and the cause: an error for ``--plugin``, a
line on stderr for an entry point or :data:`ENV` (its names are then unavailable; the other names
and commands still work).

A file ``path/to/my_plugin.py`` is imported as the module ``gradnoise_plugin_my_plugin`` (a name
that depends on the file's name alone, so that a Dask worker that imports the same file gives the
same module name to the objects sent to it). :func:`specs` lists what this process loaded, for
the workers (:func:`gradnoise.cluster.check_plugins`).
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

#: the entry-point groups a distribution declares its modules in
GROUPS = ("gradnoise.estimators", "gradnoise.problems", "gradnoise.studies")
#: the environment variable listing plugins (modules or files), separated by ``os.pathsep``
ENV = "GRADNOISE_PLUGINS"
#: the prefix of the module name a plugin file is imported as
FILE_MODULE_PREFIX = "gradnoise_plugin_"


@dataclass(frozen=True)
class Origin:
    """Where a registered name comes from.

    ``kind`` is ``"built in"`` (the package itself), ``"distribution"`` (an entry point of an
    installed distribution: ``name`` and ``version`` are the distribution's), ``"module"`` (a module
    imported by name: ``--plugin``, :data:`ENV`, or a user's own ``import``) or ``"file"`` (a
    ``.py`` file given by path: ``name`` is its absolute path)."""

    kind: str
    name: str = ""
    version: str = ""

    def __str__(self) -> str:
        if self.kind == "built in":
            return "built in"
        if self.kind == "distribution":
            return f"{self.name} {self.version}"
        return f"{self.kind} {self.name}"

    @property
    def is_plugin(self) -> bool:
        """Loaded through a plugin door (an entry point, ``--plugin``, :data:`ENV`)."""
        return self.kind in ("distribution", "plugin module", "file")

    @property
    def tag(self) -> str:
        """The origin in a ``code_version`` part: ``name==version``, the file's name (not its folder: the
        same file elsewhere is the same code) or the module's name."""
        text = {"distribution": f"{self.name}=={self.version}", "file": Path(self.name).name}.get(self.kind, self.name)
        return text.replace("+", "%2B")


BUILT_IN = Origin("built in")

#: the origin of the plugin being imported now (a name registered meanwhile is the plugin's)
_LOADING: contextvars.ContextVar[Origin | None] = contextvars.ContextVar("gradnoise_plugin_loading", default=None)
#: what this process loaded: ``{spec: module name}``, spec a module name or a file's absolute path
_LOADED: dict[str, str] = {}
#: top-level packages of loaded plugins: their code is hashed by source, never by version
_PACKAGES: set[str] = set()
#: ``{plugin: one line}`` for every plugin that failed to import in this process
_FAILED: dict[str, str] = {}
_DONE: set[str] = set()


def current_origin() -> Origin | None:
    """The origin of the plugin being imported right now, if any."""
    return _LOADING.get()


def origin_of(module: str | None) -> Origin:
    """The origin of a name registered by code of ``module`` outside a plugin door: built in for
    the package's own modules, else ``module NAME`` (a user's script or module)."""
    loading = _LOADING.get()
    if loading is not None:
        return loading
    if module and (module == "gradnoise" or module.startswith("gradnoise.")):
        return BUILT_IN
    return Origin("module", module or "?")


def plugin_packages() -> frozenset[str]:
    """Top-level package names of the plugins loaded in this process (hashed by source)."""
    return frozenset(_PACKAGES)


def failures() -> dict[str, str]:
    """``{plugin: why}`` for the plugins that failed to import in this process."""
    return dict(_FAILED)


def specs() -> list[str]:
    """What this process loaded, as :func:`load` takes it (module names, files' absolute paths), in order."""
    return list(_LOADED)


def _is_file(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec or (os.altsep is not None and os.altsep in spec)


#: ``forget(origin)`` of every registry (estimators and problems; studies add theirs): called when
#: a plugin's import fails, so that no half-registered plugin stays
FORGET: list = []


def _forget(origin: Origin) -> None:
    from . import registry

    for forget in [registry.forget, *FORGET]:
        forget(origin)


@contextlib.contextmanager
def _loading(origin: Origin, label: str):
    from . import registry

    token = _LOADING.set(origin)
    try:
        yield
    except (registry.RegistryClash, PluginError):
        _forget(origin)
        raise
    except Exception as err:                     # any error of the plugin's own import is its error
        _forget(origin)                          # no half-registered plugin
        raise PluginError(f"plugin {label} failed to import ({type(err).__name__}: {err})") from err
    finally:
        _LOADING.reset(token)


class PluginError(ImportError):
    """A plugin that failed to import; the message is one line naming it and the cause."""


def load(spec: str, origin: Origin | None = None) -> str:
    """Import the plugin ``spec`` (a module name such as ``my_package.estimators``, or the path of a
    ``.py`` file) once per process; returns the module's name. Raises :class:`PluginError` (one
    line naming it and the cause) when it cannot be imported, and
    :class:`~gradnoise.registry.RegistryClash` when one of its names is taken."""
    spec = spec.strip()
    if not spec:
        raise ValueError("empty plugin name: give a module (my_package.estimators) or a file (path/to/plugin.py)")
    if _is_file(spec):
        path = Path(spec).expanduser().resolve()
        key = str(path)
        if key in _LOADED:
            return _LOADED[key]
        if not path.is_file():
            raise PluginError(f"plugin file {spec!r} does not exist" + (f" ({path})" if str(path) != spec else ""))
        name = FILE_MODULE_PREFIX + "".join(c if c.isalnum() else "_" for c in path.stem)
        other = sys.modules.get(name)
        if other is not None:
            raise PluginError(f"plugin file {key} would be imported as module {name!r}, already imported from "
                              f"{getattr(other, '__file__', '?')}; rename one of the files")
        origin = origin or Origin("file", key)
        with _loading(origin, f"file {key}"):
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except Exception:
                sys.modules.pop(name, None)
                raise
        _LOADED[key] = name
        return name
    if spec in _LOADED:
        return spec
    top = spec.split(".")[0]
    origin = origin or Origin("plugin module", spec)
    already, known = spec in sys.modules, top in _PACKAGES
    _PACKAGES.add(top)                   # hashed by source from now on, its own registration included
    _clear_provenance_cache()
    try:
        with _loading(origin, f"module {spec!r}" if origin.kind != "distribution" else f"{origin} ({spec})"):
            # imported before by the user's own code: its names are registered already
            module = sys.modules[spec] if already else importlib.import_module(spec)
    except Exception:
        if not known:
            _PACKAGES.discard(top)
            _clear_provenance_cache()
        raise
    _LOADED[spec] = module.__name__
    return module.__name__


def _clear_provenance_cache() -> None:
    with contextlib.suppress(ImportError, AttributeError):
        from . import provenance
        provenance.library_version.cache_clear()


def _warn(label: str, message: str) -> None:
    if label not in _FAILED:
        _FAILED[label] = message
        print(f"gradnoise: {message}; its names are unavailable", file=sys.stderr)


def from_environment() -> list[str]:
    """The plugins :data:`ENV` names (empty items ignored)."""
    return [item.strip() for item in os.environ.get(ENV, "").split(os.pathsep) if item.strip()]


def ensure_loaded(*groups: str) -> None:
    """Load, once per process, the plugins of :data:`ENV` and the entry points of ``groups``
    (default: the estimators' and problems' groups). A plugin that fails to import is one line on
    stderr (:func:`failures`), not an error; a clash is an error."""
    groups = groups or GROUPS[:2]
    todo = ([ENV] if ENV not in _DONE else []) + [g for g in groups if g not in _DONE]
    if not todo or _LOADING.get() is not None:     # nothing new, or called from inside a plugin's import
        return
    _DONE.update(todo)
    if ENV in todo:
        for spec in from_environment():
            try:
                load(spec)
            except PluginError as err:
                _warn(spec, f"{err} (from ${ENV})")
    for group in todo:
        if group == ENV:
            continue
        for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: (e.value, e.name)):
            dist = getattr(ep, "dist", None)
            origin = Origin("distribution", getattr(dist, "name", None) or ep.value,
                            getattr(dist, "version", None) or "?")
            try:
                load(ep.module, origin)
            except PluginError as err:
                _warn(f"{origin} ({ep.module})", str(err))


def load_all(items) -> None:
    """:func:`load` each of ``items`` (``--plugin`` values), in order; errors as :func:`load`'s."""
    for spec in items or ():
        load(spec)
