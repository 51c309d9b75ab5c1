"""Methods by name: registration, parsing of config names, construction.

Sample pruners and token pruners register themselves by name
(:func:`register_sample_pruner`, :func:`register_token_pruner`), Q-Tuning as a
joint method (:func:`register_joint_method`).  A method name in the config is
``full``, a joint method's name, ``<sample>``, ``<token>`` or
``<sample>+<token>``; :func:`parse_method` resolves it and :func:`build_method`
turns it into a :class:`~qtbench.methods.base.Method`.

The registry finds its members by discovery (:func:`load_registry`): it imports
``qtbench.methods.q_tuning`` and every module of the top-level ``baselines``
package by name, so no interface module imports a method.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from qtbench.methods.base import Budget, Method, PairMethod, SamplePruner, TokenPruner, KeepAllSamples, KeepAllTokens

#: Modules that register methods besides the ``baselines`` package.
BUILTIN_METHOD_MODULES = ("qtbench.methods.q_tuning",)


SAMPLE_PRUNERS: dict[str, type[SamplePruner]] = {}
TOKEN_PRUNERS: dict[str, type[TokenPruner]] = {}
JOINT_METHODS: dict[str, Callable[..., Method]] = {}


def register_sample_pruner(name: str) -> Callable[[type[SamplePruner]], type[SamplePruner]]:
    """Class decorator: make a sample pruner available under ``name``."""
    return _registrar(SAMPLE_PRUNERS, name, SamplePruner)


def register_token_pruner(name: str) -> Callable[[type[TokenPruner]], type[TokenPruner]]:
    """Class decorator: make a token pruner available under ``name``."""
    return _registrar(TOKEN_PRUNERS, name, TokenPruner)


def register_joint_method(name: str) -> Callable[[Callable[..., Method]], Callable[..., Method]]:
    """Register a method that decides samples and tokens jointly (Q-Tuning).
    The factory is called as ``factory(budget, options, seed)``."""

    def decorate(factory: Callable[..., Method]) -> Callable[..., Method]:
        _check_name(name)
        JOINT_METHODS[name] = factory
        return factory

    return decorate


def _registrar(table: dict, name: str, base: type) -> Callable:
    def decorate(cls: type) -> type:
        _check_name(name)
        if not issubclass(cls, base):
            raise TypeError(f"{cls.__name__} must subclass {base.__name__} to register as {name!r}")
        if name in table and table[name] is not cls and table[name].__qualname__ != cls.__qualname__:
            raise ValueError(f"{base.__name__} {name!r} is registered twice ({table[name].__module__}, {cls.__module__})")
        cls.name = name
        table[name] = cls
        return cls

    return decorate


def _check_name(name: str) -> None:
    if not name or not all(c.islower() or c.isdigit() or c == "_" for c in name) or not name[0].isalpha():
        raise ValueError(f"method names are lower-case letters, digits and '_', got {name!r}")
    if name in ("full", "none"):
        raise ValueError(f"{name!r} is reserved")


def load_registry() -> None:
    """Import Q-Tuning and every module of the ``baselines`` package (each
    registers its methods when imported)."""
    for module in BUILTIN_METHOD_MODULES:
        importlib.import_module(module)
    importlib.import_module("baselines").discover()


def registered_names() -> dict[str, list[str]]:
    load_registry()
    return {
        "joint": sorted(JOINT_METHODS),
        "sample": sorted(SAMPLE_PRUNERS),
        "token": sorted(TOKEN_PRUNERS),
    }


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method name: which sample and token pruners, or a joint method."""

    name: str
    family: str  # "full", "joint", "sample", "token" or "pair"
    sample: str = "none"
    token: str = "none"


def parse_method(name: str) -> MethodSpec:
    """Resolve a config method name against the registry.

    ``full`` keeps everything; a joint method's name stands alone; ``a+b`` is a
    (sample, token) pair; a lone sample pruner gets token method ``none`` and a
    lone token pruner sample method ``none``.  A name that is both a sample and
    a token pruner (``random``) alone means the sample pruner: write
    ``none+random`` for the token one."""
    load_registry()
    if name == "full":
        return MethodSpec(name, "full")
    if name in JOINT_METHODS:
        return MethodSpec(name, "joint")
    if "+" in name:
        sample, _, token = name.partition("+")
        if sample != "none" and sample not in SAMPLE_PRUNERS:
            raise ValueError(_unknown("sample pruner", sample, name, SAMPLE_PRUNERS))
        if token != "none" and token not in TOKEN_PRUNERS:
            raise ValueError(_unknown("token pruner", token, name, TOKEN_PRUNERS))
        if sample == "none" and token == "none":
            return MethodSpec(name, "full")
        family = "pair" if sample != "none" and token != "none" else ("sample" if token == "none" else "token")
        return MethodSpec(name, family, sample, token)
    if name in SAMPLE_PRUNERS:
        return MethodSpec(name, "sample", sample=name)
    if name in TOKEN_PRUNERS:
        return MethodSpec(name, "token", token=name)
    known = ["full", *sorted(JOINT_METHODS), *sorted(SAMPLE_PRUNERS), *sorted(TOKEN_PRUNERS)]
    raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(known)} (pairs as 'sample+token')")


def method_family(name: str) -> str:
    """``full``, ``joint``, ``sample``, ``token`` or ``pair``: the one
    definition of a method's family (tables group rows by it, budgets follow it)."""
    return parse_method(name).family


def required_stats(name: str) -> frozenset[str]:
    """The statistics a method's stats pass computes, read from its classes
    (no method is built): lets the workflow see, e.g., which runs need a
    reference model without instantiating anything."""
    spec = parse_method(name)
    if spec.family == "joint":
        return frozenset(getattr(JOINT_METHODS[name], "required_stats", frozenset()))
    sample = SAMPLE_PRUNERS[spec.sample].required_stats if spec.sample != "none" else frozenset()
    token = TOKEN_PRUNERS[spec.token].required_stats if spec.token != "none" else frozenset()
    return frozenset(sample | token)


def _unknown(kind: str, part: str, name: str, table: Iterable[str]) -> str:
    return f"unknown {kind} {part!r} in method {name!r}; registered {kind}s: {', '.join(sorted(table))}"


def build_method(
    name: str, budget: Budget, options: Mapping[str, Mapping[str, Any]] | None = None, seed: int = 0
) -> Method:
    """Instantiate the method a config names.  ``options`` maps a pruner name to
    its options (the config's ``methods_options`` section)."""
    options = options or {}
    spec = parse_method(name)
    if spec.family == "joint":
        return JOINT_METHODS[name](budget, options.get(name, {}), seed)
    sample_cls = SAMPLE_PRUNERS.get(spec.sample, KeepAllSamples)
    token_cls = TOKEN_PRUNERS.get(spec.token, KeepAllTokens)
    return PairMethod(
        name,
        sample_cls(budget, options.get(spec.sample, {}), seed),
        token_cls(budget, options.get(spec.token, {}), seed),
    )
