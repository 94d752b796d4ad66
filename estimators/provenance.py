"""What a number depends on: the code that computed it, named by a hash of its source.

A finished sweep cell or a cached oracle truth is reused only when the code that would compute
it now is the code that computed it then. :func:`code_version` names the package's code: a hash
of every ``.py`` file of the installed ``estimators`` package (relative path and bytes, in sorted
order) and of torch's version (its kernels and generators are part of the computation). Any edit
of the maths -- an estimator, a baseline, a problem, the engine, the statistics -- changes it;
the analysis and plotting code, which only reads results, does not take part.

A problem or an estimator from outside the package (a user's class, cost, distribution or
registered factory) is keyed too: :func:`fingerprint` hashes the object and everything it reads
-- functions by bytecode, constants, default arguments, closure values and the globals they
use; classes by their methods; instances by their attributes; tensors by their bytes; installed
libraries by name and version -- and :func:`cell_version` appends it to :func:`code_version`
(``7086f487b454+problem:3fa2c1d0``). Where a part cannot be hashed honestly (a builtin of
unknown origin, an open file in a closure), the part is ``unhashable`` and its cells and
oracles are never reused, with the reason said in one line.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import os
import pickle
import site
import sys
import sysconfig
import types
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

PACKAGE = Path(__file__).resolve().parent


def source_hash(*files: str | Path, extra: str = "", digest_size: int = 6) -> str:
    """Hex blake2b of ``extra`` and the files' names (relative to the package) and bytes, in order."""
    h = hashlib.blake2b(extra.encode(), digest_size=digest_size)
    for path in map(Path, files):
        name = path.resolve().relative_to(PACKAGE) if path.resolve().is_relative_to(PACKAGE) else path.name
        h.update(str(name).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@lru_cache(maxsize=1)
def code_version() -> str:
    """12 hex digits naming the package's source and torch's version (see the module docstring)."""
    files = sorted(PACKAGE.rglob("*.py"), key=lambda p: p.relative_to(PACKAGE).as_posix())
    return source_hash(*files, extra=f"torch {torch.__version__}")


# ------------------------------------------------------------------------------------------------
# Code outside the package: a user's estimator or problem
# ------------------------------------------------------------------------------------------------
#: objects visited at most while fingerprinting one estimator or problem; past it, the object is
#: called too large to hash (and its cells are never reused) rather than hashed in part
MAX_OBJECTS = 200_000

_SKIP_CLASS_ATTRIBUTES = frozenset({"__dict__", "__weakref__", "__doc__", "__module__", "__qualname__",
                                    "__annotations__", "__firstlineno__", "__static_attributes__",
                                    "__parameters__", "__orig_bases__", "_abc_impl",
                                    "__abstractmethods__", "__slots__",
                                    "__slotnames__"})   # copyreg caches it on the class when pickling


@dataclass(frozen=True)
class Fingerprint:
    """A hash of everything that computes an object's numbers, or why it cannot be hashed.

    ``digest`` is 8 hex digits, or None when some part cannot be hashed honestly; ``reason`` then
    says which part, in one phrase (e.g. ``"cost.__closure__[0]: a TextIOWrapper"``)."""

    digest: str | None
    reason: str = ""


class _Unhashable(Exception):
    pass


@lru_cache(maxsize=None)
def _site_dirs() -> tuple[Path, ...]:
    paths = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    with contextlib.suppress(AttributeError):          # site.getsitepackages is absent in some venvs
        paths.update(site.getsitepackages())
    with contextlib.suppress(AttributeError):
        paths.add(site.getusersitepackages())
    return tuple(Path(p).resolve() for p in paths if p)


@lru_cache(maxsize=None)
def library_version(module: str) -> str | None:
    """``"numpy 2.1.0"`` for a module of an installed distribution (or ``"python 3.11"`` for the
    standard library and builtins); None for anything else: the package's own code, a user's
    module (a script, an editable install, a notebook)."""
    top = module.split(".")[0]
    if top in ("builtins", "__builtin__") or top in sys.stdlib_module_names:
        return f"python {sys.version_info[0]}.{sys.version_info[1]}"
    if top == PACKAGE.name or top == "gradnoise":
        return None
    from .plugins import plugin_packages
    if top in plugin_packages():         # a plugin's code is hashed by source: an edit without a new
        return None                      # version still recomputes its cells
    mod = sys.modules.get(top)
    file = getattr(mod, "__file__", None)
    if file is None or not any(Path(file).resolve().is_relative_to(d) for d in _site_dirs()):
        return None                      # not installed: a script, an editable install, a notebook
    dists = _distributions().get(top, [])
    versions = []
    for dist in sorted(set(dists)):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
    return ", ".join(versions) or None


@lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _in_package(module: str | None) -> bool:
    return bool(module) and (module == "gradnoise" or module.startswith("gradnoise."))


class _Hasher:
    """Feeds an object graph into a blake2b hash: code by its bytecode, constants, names, default
    arguments, closure values and the globals it reads (so an edit of a comment changes nothing,
    an edit of a number does); the package's own code and installed libraries by name (their
    source is :func:`code_version`'s, their version is hashed); tensors and arrays by their bytes;
    other objects by their class and attributes. Anything else raises :class:`_Unhashable`."""

    def __init__(self):
        self.h = hashlib.blake2b(digest_size=4)
        self.seen: dict[int, int] = {}
        self.keep: list = []                 # keeps visited objects alive, so ids are not reused

    def put(self, *parts) -> None:
        for part in parts:
            self.h.update(repr(part).encode() + b"\0")

    def add(self, obj, where: str) -> None:
        if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
            self.put(type(obj).__name__, obj)
            return
        if id(obj) in self.seen:
            self.put("ref", self.seen[id(obj)])
            return
        if len(self.seen) >= MAX_OBJECTS:
            raise _Unhashable(f"{where}: more than {MAX_OBJECTS} objects to hash")
        self.seen[id(obj)] = len(self.seen)
        self.keep.append(obj)
        self._add(obj, where)

    def _add(self, obj, where: str) -> None:
        if isinstance(obj, torch.Tensor):
            if obj.layout != torch.strided:
                raise _Unhashable(f"{where}: a {obj.layout} tensor")
            t = obj.detach().cpu().contiguous()
            self.put("tensor", t.dtype, tuple(t.shape), obj.requires_grad)
            self.h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            return
        if isinstance(obj, (torch.dtype, torch.device, torch.Size, torch.layout)):
            self.put(type(obj).__name__, str(obj))
            return
        if type(obj).__module__ == "numpy" and hasattr(obj, "tobytes") and hasattr(obj, "dtype"):
            self.put("ndarray", str(obj.dtype), getattr(obj, "shape", ()))
            if getattr(obj.dtype, "hasobject", False):
                raise _Unhashable(f"{where}: a numpy array of Python objects")
            self.h.update(obj.tobytes())
            return
        if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
            self.put(type(obj).__name__, len(obj))
            for i, item in enumerate(obj):
                self.add(item, f"{where}[{i}]")
            return
        if isinstance(obj, (set, frozenset)) and type(obj) in (set, frozenset):
            self.put(type(obj).__name__, len(obj))
            for item in sorted(obj, key=repr):
                self.add(item, f"{where}{{}}")
            return
        if isinstance(obj, (dict, types.MappingProxyType)):
            self.put("dict", len(obj))
            for key, value in sorted(obj.items(), key=lambda kv: repr(kv[0])):
                self.add(key, f"{where} key")
                self.add(value, f"{where}[{key!r}]")
            return
        if isinstance(obj, types.ModuleType):
            self._module(obj, where)
            return
        if isinstance(obj, types.CodeType):
            self._code(obj, where)
            return
        if isinstance(obj, types.FunctionType):
            self._function(obj, where)
            return
        if isinstance(obj, (types.MethodType,)):
            self.put("method")
            self.add(obj.__func__, f"{where}.__func__")
            self.add(obj.__self__, f"{where}.__self__")
            return
        if isinstance(obj, functools.partial):
            self.put("partial")
            self.add(obj.func, f"{where}.func")
            self.add(obj.args, f"{where}.args")
            self.add(obj.keywords, f"{where}.keywords")
            return
        if isinstance(obj, (staticmethod, classmethod)):
            self.put(type(obj).__name__)
            self.add(obj.__func__, f"{where}.__func__")
            return
        if isinstance(obj, property):
            self.put("property")
            for part in ("fget", "fset", "fdel"):
                self.add(getattr(obj, part), f"{where}.{part}")
            return
        if isinstance(obj, type):
            self._class(obj, where)
            return
        if isinstance(obj, (types.BuiltinFunctionType, types.BuiltinMethodType, types.WrapperDescriptorType,
                            types.MethodDescriptorType, types.MethodWrapperType, types.GetSetDescriptorType,
                            types.MemberDescriptorType, types.ClassMethodDescriptorType)):
            self._named(obj, where, "a builtin")
            return
        self._instance(obj, where)

    def _named(self, obj, where: str, what: str) -> None:
        """An object known by module and name: the package's (its source is in code_version) or
        an installed library's (its version is hashed); anything else cannot be hashed."""
        module = getattr(obj, "__module__", None)
        owner = getattr(obj, "__self__", None)
        if module is None and owner is not None and not isinstance(owner, types.ModuleType):
            module = getattr(type(owner), "__module__", None) if not isinstance(owner, type) else owner.__module__
        if module is None and isinstance(owner, types.ModuleType):
            module = owner.__name__
        name = getattr(obj, "__qualname__", getattr(obj, "__name__", None))
        if module and name and _in_package(module):
            self.put("gradnoise", module, name)
            return
        version = library_version(module) if module else None
        if version is None or name is None:
            raise _Unhashable(f"{where}: {what} {name or type(obj).__name__!r} of unknown origin "
                              f"(module {module!r}, not an installed library)")
        self.put("library", module, name, version)

    def _module(self, module: types.ModuleType, where: str) -> None:
        if _in_package(module.__name__):
            self.put("gradnoise module", module.__name__)
            return
        version = library_version(module.__name__)
        if version is not None:
            self.put("library module", module.__name__, version)
            return
        file = getattr(module, "__file__", None)
        if not file or not os.path.isfile(file) or not file.endswith(".py"):
            raise _Unhashable(f"{where}: module {module.__name__!r} has no Python source to hash")
        self.put("module", module.__name__)
        self.h.update(Path(file).read_bytes())

    def _code(self, code: types.CodeType, where: str) -> None:
        self.put("code", code.co_name, code.co_argcount, code.co_kwonlyargcount, code.co_flags, code.co_names,
                 code.co_varnames)
        self.h.update(code.co_code)
        for i, const in enumerate(code.co_consts):
            self.add(const, f"{where}.co_consts[{i}]")

    def _function(self, fn: types.FunctionType, where: str) -> None:
        if _in_package(fn.__module__):
            self.put("gradnoise", fn.__module__, fn.__qualname__)
            return
        if fn.__module__ and library_version(fn.__module__) is not None:
            self._named(fn, where, "function")
            return
        self.put("function", fn.__qualname__, sys.version_info[:2])
        self._code(fn.__code__, f"{where}")
        self.add(fn.__defaults__, f"{where}.__defaults__")
        self.add(fn.__kwdefaults__, f"{where}.__kwdefaults__")
        for i, cell in enumerate(fn.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:                      # an empty cell (a name assigned later)
                self.put("empty cell")
                continue
            self.add(value, f"{where}.__closure__[{i}] ({fn.__code__.co_freevars[i]})")
        names = set()
        stack = [fn.__code__]
        while stack:
            code = stack.pop()
            names.update(code.co_names)
            stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        for name in sorted(names):
            if name in fn.__globals__:
                self.put("global", name)
                self.add(fn.__globals__[name], f"{where} global {name}")

    def _class(self, cls: type, where: str) -> None:
        if _in_package(cls.__module__) or library_version(cls.__module__) is not None:
            self._named(cls, where, "class")
            return
        self.put("class", cls.__qualname__)
        for i, base in enumerate(cls.__bases__):
            self.add(base, f"{where}.__bases__[{i}]")
        for name, value in sorted(vars(cls).items()):
            if name not in _SKIP_CLASS_ATTRIBUTES:
                self.put("attribute", name)
                self.add(value, f"{where}.{name}")

    def _instance(self, obj, where: str) -> None:
        cls = type(obj)
        if is_builtin(obj):                # a built-in problem or estimator inside a user's object
            self.put("registered", getattr(obj, "spec", None), getattr(obj, "name", None))
            return
        self.add(cls, f"{where} (its class)")
        state = getattr(obj, "__dict__", None)
        slots = [s for c in cls.__mro__ for s in getattr(c, "__slots__", ()) if isinstance(s, str)]
        if state is None and not slots:
            # an object of a library's compiled class (a numpy ufunc, an enum member): by pickle
            try:
                blob = pickle.dumps(obj, protocol=4)
            except Exception:
                raise _Unhashable(f"{where}: a {cls.__module__}.{cls.__qualname__}") from None
            self.h.update(blob)
            return
        skip = getattr(obj, "fingerprint_exclude", ())
        for name in sorted(state or {}):
            if name not in skip:
                self.put("attribute", name)
                self.add(state[name], f"{where}.{name}")
        for name in slots:
            if hasattr(obj, name) and name not in ("__dict__", "__weakref__"):
                self.put("slot", name)
                self.add(getattr(obj, name), f"{where}.{name}")


def fingerprint(obj, where: str = "") -> Fingerprint:
    """A :class:`Fingerprint` of ``obj`` and everything its numbers depend on (see :class:`_Hasher`)."""
    hasher = _Hasher()
    try:
        hasher.add(obj, where or type(obj).__name__)
    except _Unhashable as err:
        return Fingerprint(None, str(err))
    except RecursionError:
        return Fingerprint(None, f"{where or type(obj).__name__}: nested too deeply to hash")
    return Fingerprint(hasher.h.hexdigest())


def is_builtin(obj) -> bool:
    """Whether ``obj`` (a problem or an estimator) was built by a registry entry of the package's
    own code: then its name (spec) and :func:`code_version` say everything that computes it."""
    factory = getattr(obj, "fingerprint_factory", None)
    return factory is not None and _in_package(getattr(factory, "__module__", None))


def part_fingerprint(obj, label: str) -> Fingerprint | None:
    """None for a built-in problem or estimator; else the fingerprint of the object and, when it
    came from a registry entry, of that entry's factory (``label`` names it in the reason)."""
    if is_builtin(obj):
        return None
    parts = (obj, getattr(obj, "fingerprint_factory", None))
    return fingerprint(parts, label)


@dataclass(frozen=True)
class CellVersion:
    """What a cell's numbers are keyed by: :func:`code_version` plus, for a problem or an
    estimator from outside the package, its :class:`Fingerprint`.

    ``text`` is the ``code_version`` column: ``7086f487b454`` for built-ins,
    ``7086f487b454+problem:3fa2c1d0+estimator:unhashable`` otherwise. ``reason`` says why a part
    could not be hashed (then the cell is never reused)."""

    text: str
    reason: str = ""

    @property
    def reusable(self) -> bool:
        return "unhashable" not in self.text


def plugin_origin(obj):
    """The :class:`~gradnoise.plugins.Origin` of a problem or estimator built by a plugin's registry
    entry (an entry point, ``--plugin``, ``$GRADNOISE_PLUGINS``), else None."""
    factory = getattr(obj, "fingerprint_factory", None)
    if factory is None:
        return None
    from . import registry
    for entry in [*registry._ESTIMATORS.values(), *registry._PROBLEMS.values()]:
        if entry.factory is factory:
            return entry.origin if entry.origin.is_plugin else None
    return None


def cell_version(problem, estimator) -> CellVersion:
    """The :class:`CellVersion` of cells of ``problem`` and ``estimator``.

    A part built by a plugin also names the plugin after its fingerprint (``+estimator:09e11aa3
    +estimator-from:my-dist==0.2.0``; a file's path or a module's name otherwise), so that its rows
    say where they come from and record the distribution's version."""
    text, reasons = code_version(), []
    for label, obj, name in (("problem", problem, getattr(problem, "spec", "?")),
                             ("estimator", estimator, getattr(estimator, "name", "?"))):
        part = part_fingerprint(obj, f"{label} {name}")
        if part is None:
            continue
        text += f"+{label}:{part.digest or 'unhashable'}"
        origin = plugin_origin(obj)
        if origin is not None:
            text += f"+{label}-from:{origin.tag}"
        if part.digest is None:
            reasons.append(part.reason)
    return CellVersion(text, "; ".join(reasons))


def version_parts(text: str) -> dict[str, str]:
    """``{"package": ..., "problem": ..., "estimator": ...}`` of a ``code_version`` text (the
    parts present)."""
    head, *rest = str(text).split("+")
    parts = {"package": head}
    for item in rest:
        key, _, value = item.partition(":")
        parts[key] = value
    return parts
