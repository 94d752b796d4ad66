"""Registries of estimators and problems, filled by decorators, each with one public door.

As in ``torch.distributions.kl`` (``register_kl`` fills a private dict, ``kl_divergence`` is the
door): ``@register_estimator("reinforce-loo")`` and ``@register_problem("gaussian-cos")`` fill
private dicts; :func:`get_estimator` and :func:`make_problem` build from a name (with options),
and an unknown name raises an error that lists the valid ones. Benchmarks, analysis and tests
iterate over :func:`estimator_names` and :func:`problem_names`.

Options use one string form, shared with the command line::

    gaussian-cos:k=5,loc=1,scale=2        reinforce-ema:beta=0.99

Each option's type is taken from its default (int, float, bool or str).

Each entry records its :class:`~gradnoise.plugins.Origin`: built in, or the plugin (an installed
distribution's entry point, a module or a file: :mod:`gradnoise.plugins`) whose import registered
it. Plugins are loaded on the first look-up or listing (:func:`gradnoise.plugins.ensure_loaded`),
not by ``import gradnoise``. Registering the same code again (the same function of the same
source file, or of a copy: a plugin loaded as an entry point and as a file, or imported again on
a Dask worker; :func:`same_code`) is a no-op; a name taken by other code is a
:class:`RegistryClash` naming both origins.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from .base import GradientEstimator, Problem
from . import plugins
from .plugins import BUILT_IN, Origin


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    summary: str
    in_default_sweep: bool = True
    origin: Origin = field(default=BUILT_IN)

    def defaults(self) -> dict[str, Any]:
        sig = inspect.signature(self.factory)
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.default is not inspect.Parameter.empty and p.kind is p.KEYWORD_ONLY
        }


_ESTIMATORS: dict[str, Entry] = {}
_PROBLEMS: dict[str, Entry] = {}


def _summary(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class RegistryClash(ValueError):
    """A name registered by two different factories; the message names both origins."""


def _identity(factory) -> tuple:
    """What makes two factories the same code: their source file and qualified name (a module
    imported twice, e.g. as an entry point and as a ``--plugin`` file, gives two function objects
    of one identity)."""
    try:
        source = os.path.realpath(inspect.getsourcefile(factory) or "")
    except TypeError:
        source = ""
    return (source or getattr(factory, "__module__", None), getattr(factory, "__qualname__", repr(factory)))


def same_code(a, b) -> bool:
    """Whether two factories are the same code: the same source file and name, or (a plugin
    installed as a distribution and the same file given with ``--plugin``, two copies) the same
    name and the same :func:`~gradnoise.provenance.fingerprint` (bytecode, constants, the globals
    they read). Called only when a name is registered twice."""
    if _identity(a) == _identity(b):
        return True
    if getattr(a, "__qualname__", None) != getattr(b, "__qualname__", None):
        return False
    from .provenance import fingerprint

    fa, fb = fingerprint(a), fingerprint(b)
    return fa.digest is not None and fa.digest == fb.digest


def _describe(origin: Origin, factory) -> str:
    where = f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', '?')}"
    return f"{'the built-in' if origin.kind == 'built in' else origin} ({where})"


def _register(table: dict[str, Entry], kind: str, name: str, in_default_sweep: bool = True):
    def decorator(factory):
        origin = plugins.origin_of(getattr(factory, "__module__", None))
        if name in table:
            old = table[name]
            if same_code(old.factory, factory):
                # the same code registered again: a no-op, except that an installed distribution's
                # name and version, when it comes, is the origin its rows record
                if origin.kind == "distribution" and old.origin.kind != "distribution" and old.origin != BUILT_IN:
                    table[name] = dataclasses.replace(old, origin=origin)
                return factory
            raise RegistryClash(
                f"{kind} {name!r} of {_describe(origin, factory)} clashes with {kind} {name!r} of "
                f"{_describe(old.origin, old.factory)}; rename one of them")
        table[name] = Entry(name, factory, _summary(factory), in_default_sweep, origin)
        return factory

    return decorator


def forget(origin: Origin) -> None:
    """Drop every name ``origin`` registered (a plugin whose import failed half-way)."""
    for table in (_ESTIMATORS, _PROBLEMS):
        for name in [n for n, e in table.items() if e.origin == origin]:
            del table[name]


def register_estimator(name: str):
    """Decorator: register a factory ``(*, option=default, ...) -> GradientEstimator``."""
    return _register(_ESTIMATORS, "estimator", name)


def register_problem(name: str, *, in_default_sweep: bool = True):
    """Decorator: register a factory ``(*, option=default, ...) -> Problem``.

    ``in_default_sweep=False`` keeps an expensive problem (one trained on data) out of the
    commands' default grids; it is still used whenever named.
    """
    return _register(_PROBLEMS, "problem", name, in_default_sweep)


def _convert(key: str, raw: str, default: Any, where: str) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes"):
                return True
            if raw.lower() in ("0", "false", "no"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ValueError(
            f"option {key}={raw!r} of {where} must be a {type(default).__name__}"
        ) from None
    return raw


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``"name:key=value,key=value"`` into the name and raw option strings."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"expected a name such as 'gaussian-cos:k=5', got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    options: dict[str, str] = {}
    if rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key.strip() or not value.strip():
                raise ValueError(
                    f"malformed option {item!r} in {spec!r}: expected key=value pairs separated "
                    f"by commas, e.g. 'gaussian-cos:k=5,loc=1'"
                )
            if key.strip() in options:
                raise ValueError(f"option {key.strip()!r} given twice in {spec!r}")
            options[key.strip()] = value.strip()
    elif _:
        raise ValueError(f"malformed spec {spec!r}: nothing after ':'")
    return name.strip(), options


def _build(table: dict[str, Entry], kind: str, spec: str, overrides: dict[str, Any]):
    name, raw = parse_spec(spec)
    plugins.ensure_loaded()
    if name not in table:
        failed = plugins.failures()
        raise KeyError(
            f"unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(table))}"
            + (f" (plugins that failed to import: {', '.join(failed)})" if failed else "")
        )
    entry = table[name]
    defaults = entry.defaults()
    unknown = sorted(set(raw) - set(defaults)) + sorted(set(overrides) - set(defaults))
    if unknown:
        valid = ", ".join(f"{k}={v}" for k, v in defaults.items()) or "none"
        raise ValueError(f"unknown option(s) {unknown} for {kind} {name!r}; valid options: {valid}")
    options = {k: _convert(k, v, defaults[k], f"{kind} {name!r}") for k, v in raw.items()}
    options.update(overrides)
    return entry, options


#: options that change how a problem's truth is computed, not the problem: listed in a spec only
#: when they differ from their default, so that adding one leaves every other spec (and so every
#: cell's seed) as it was
TRUTH_OPTIONS = ("oracle_samples",)


def canonical_spec(name: str, options: dict[str, Any], defaults: dict[str, Any]) -> str:
    """``name:key=value,...`` listing every option (defaults included, except :data:`TRUTH_OPTIONS`
    at their default), sorted by key."""
    merged = {**defaults, **options}
    merged = {k: v for k, v in merged.items() if not (k in TRUTH_OPTIONS and v == defaults.get(k))}
    if not merged:
        return name
    text = lambda v: f"{v:g}" if isinstance(v, float) else str(v)  # noqa: E731  (2.0 -> "2")
    return name + ":" + ",".join(f"{k}={text(merged[k])}" for k in sorted(merged))


def get_estimator(spec: str | GradientEstimator, **options) -> GradientEstimator:
    """The estimator registered under ``spec`` (e.g. ``"reinforce-ema:beta=0.99"``).

    An estimator object passes through unchanged. Raises ``KeyError`` listing the valid names
    for an unknown name and ``ValueError`` for a malformed or unknown option.
    """
    if isinstance(spec, GradientEstimator):
        return spec
    entry, opts = _build(_ESTIMATORS, "estimator", spec, options)
    estimator = entry.factory(**opts)
    estimator.fingerprint_factory = entry.factory    # what, beside the name, keys its cells
    if opts:
        estimator.name = canonical_spec(entry.name, opts, {})
    else:
        estimator.name = entry.name
    return estimator


def make_problem(spec: str | Problem, **options) -> Problem:
    """The problem registered under ``spec`` (e.g. ``"gaussian-cos:k=5,loc=1,scale=2"``).

    A problem object passes through unchanged. Its ``spec`` is canonical: every option, sorted,
    so the same problem always has the same name (and so the same random streams).
    """
    if isinstance(spec, Problem):
        return spec
    entry, opts = _build(_PROBLEMS, "problem", spec, options)
    problem = entry.factory(**opts)
    problem.spec = canonical_spec(entry.name, opts, entry.defaults())
    problem.cacheable_truth = True   # a registered problem is a deterministic function of its spec
    problem.fingerprint_factory = entry.factory      # ... and of its factory's code
    return problem


def estimator_names() -> list[str]:
    plugins.ensure_loaded()
    return list(_ESTIMATORS)


def problem_names(*, default_sweep: bool = False) -> list[str]:
    """Registered problem names; with ``default_sweep=True`` only those in default grids."""
    plugins.ensure_loaded()
    return [n for n, e in _PROBLEMS.items() if e.in_default_sweep or not default_sweep]


def estimator_entries() -> list[Entry]:
    plugins.ensure_loaded()
    return list(_ESTIMATORS.values())


def problem_entries() -> list[Entry]:
    plugins.ensure_loaded()
    return list(_PROBLEMS.values())


def estimator_origin(name: str) -> Origin:
    """The origin of the estimator ``name`` (a spec's options ignored); ``KeyError`` if unknown."""
    return _entry(_ESTIMATORS, "estimator", name).origin


def problem_origin(spec: str) -> Origin:
    """The origin of the problem ``spec`` (options and an ``@hash`` point suffix ignored)."""
    return _entry(_PROBLEMS, "problem", spec.partition("@")[0]).origin


def _entry(table: dict[str, Entry], kind: str, spec: str) -> Entry:
    name = spec.partition(":")[0].strip()
    plugins.ensure_loaded()
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(table))}")
    return table[name]
