"""Methods by name: registration, parsing of config names, construction.

Sample pruners and token pruners register themselves by name
(:func:`register_sample_pruner`, :func:`register_token_pruner`), Q-Tuning as a
joint method (:func:`register_joint_method`).  A method name in the config is
``full``, a joint method's name, ``<sample>``, ``<token>`` or
``<sample>+<token>``; :func:`parse_method` resolves it and :func:`build_method`
turns it into a :class:`~qtbench.methods.base.Method`.

A config may also name *variants*: ``variants: {q_tuning_l0: {method: q_tuning,
options: {lambda: 0.0}}}`` makes ``q_tuning_l0`` usable wherever a method name
is, alone or as either half of a pair (``random+ppl_lowest``).
:func:`check_variants` validates the section, :func:`resolve_method` maps a
name onto registered methods, :func:`part_options` gives each part its options
and :func:`describe_variant` says what a variant changes (for the tables).

The registry finds its members by discovery (:func:`load_registry`): it imports
``qtbench.methods.q_tuning`` and every module of the top-level ``baselines``
package by name, so no interface module imports a method.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

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


def method_family(name: str, variants: Mapping[str, Any] | None = None) -> str:
    """``full``, ``joint``, ``sample``, ``token`` or ``pair``: the one
    definition of a method's family (tables group rows by it, budgets follow it).
    A variant (config ``variants``) has the family of its base method."""
    return resolve_method(name, variants).spec.family


def required_stats(name: str, options: Mapping[str, Mapping[str, Any]] | None = None,
                   variants: Mapping[str, Any] | None = None) -> frozenset[str]:
    """The statistics a method's stats pass computes, read from its classes
    (no method is built): lets the workflow see, e.g., which runs need a
    reference model without instantiating anything.

    ``options`` (the config's ``method_options``) and ``variants`` give each
    part its run's options (:func:`part_options`); a class whose needs depend on
    its options says so with a classmethod ``stats_for_options(options)``
    (Q-Tuning's ``token_scorer: rho1`` needs ``ref_nll``), else its class
    attribute ``required_stats`` is read."""
    resolved = resolve_method(name, variants)
    per_part = part_options(name, options, variants)
    needed: set[str] = set()
    for role, cls in resolved.classes().items():
        by_options = getattr(cls, "stats_for_options", None)
        needed |= set(by_options(per_part[role]) if by_options else getattr(cls, "required_stats", frozenset()))
    return frozenset(needed)


def needs_token_scores(name: str, options: Mapping[str, Mapping[str, Any]] | None = None,
                       variants: Mapping[str, Any] | None = None) -> bool:
    """True when a run of ``name`` needs the data set's per-token scores before
    training (the token_scores rule: TokenCleaning's global threshold), read
    from the classes and the run's options (a class says so with a classmethod
    ``token_scores_for_options(options)``); nothing is built."""
    resolved = resolve_method(name, variants)
    per_part = part_options(name, options, variants)
    for role, cls in resolved.classes().items():
        by_options = getattr(cls, "token_scores_for_options", None)
        if by_options is not None and by_options(per_part[role]):
            return True
    return False


def uses_ground_truth(name: str, variants: Mapping[str, Any] | None = None) -> bool:
    """True when a config method name runs a control that reads the world's
    ground-truth labels (a registered class with ``uses_ground_truth = True``,
    e.g. ``oracle``, ``anti_oracle``): such a run needs the world's
    ``sft_meta.jsonl``, and the tables show it apart ("Controls"), never as a
    selection rule.  Read from the classes; nothing is built."""
    # ``is True``: on a Method class (a joint method) the attribute is a property object
    return any(getattr(cls, "uses_ground_truth", False) is True
               for cls in resolve_method(name, variants).classes().values())


def _unknown(kind: str, part: str, name: str, table: Iterable[str]) -> str:
    return f"unknown {kind} {part!r} in method {name!r}; registered {kind}s: {', '.join(sorted(table))}"


def build_method(
    name: str, budget: Budget, options: Mapping[str, Mapping[str, Any]] | None = None, seed: int = 0,
    variants: Mapping[str, Any] | None = None,
) -> Method:
    """Instantiate the method a config names.  ``options`` maps a pruner name to
    its options (the config's ``method_options`` section); ``variants`` (the
    config's ``variants`` section) resolves variant names, each part getting
    :func:`part_options`."""
    spec = resolve_method(name, variants).spec
    per_part = part_options(name, options, variants)
    if spec.family == "joint":
        return JOINT_METHODS[spec.name](budget, per_part["joint"], seed)
    sample_cls = SAMPLE_PRUNERS.get(spec.sample, KeepAllSamples)
    token_cls = TOKEN_PRUNERS.get(spec.token, KeepAllTokens)
    return PairMethod(
        name,
        sample_cls(budget, per_part.get("sample", {}), seed),
        token_cls(budget, per_part.get("token", {}), seed),
    )


# --------------------------------------------------------------------------- variants


class VariantError(ValueError):
    """A bad ``variants`` entry; ``key`` is the config key at fault
    (e.g. ``variants.q_tuning_l0.options.lamda``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.detail = message


@dataclass(frozen=True)
class Variant:
    """A named set of options of one registered method (config ``variants.<name>``)."""

    name: str
    method: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class ResolvedMethod:
    """A config method name mapped onto registered methods.

    ``name``: as written (``random+ppl_lowest``); ``base``: the same over
    registered names (``random+ppl``); ``spec``: ``parse_method(base)``;
    ``parts``: role (``joint``, ``sample``, ``token``) -> the name written for
    that part (a variant or a registered name); ``variants``: the variants used."""

    name: str
    base: str
    spec: MethodSpec
    parts: Mapping[str, str]
    variants: Mapping[str, Variant]

    def classes(self) -> dict[str, Any]:
        """Role -> the registered class (or joint factory) of each part."""
        if self.spec.family == "joint":
            return {"joint": JOINT_METHODS[self.spec.name]}
        out: dict[str, Any] = {}
        if self.spec.sample != "none":
            out["sample"] = SAMPLE_PRUNERS[self.spec.sample]
        if self.spec.token != "none":
            out["token"] = TOKEN_PRUNERS[self.spec.token]
        return out


ROLE_TABLES = {"joint": JOINT_METHODS, "sample": SAMPLE_PRUNERS, "token": TOKEN_PRUNERS}


def options_section(role: str, method: str) -> str:
    """The ``method_options`` key a registered part reads: its own name, unless
    its class names another in ``options_section``.  The random token pruner
    reads ``random_tokens``: ``random`` is also the sample pruner's name, and
    one entry feeding both made each silently drop the other's keys."""
    load_registry()
    cls = ROLE_TABLES[role].get(method)
    return getattr(cls, "options_section", None) or method


def option_sections() -> dict[str, list[tuple[str, Any]]]:
    """``method_options`` key -> the (role, class) pairs that read it."""
    load_registry()
    out: dict[str, list[tuple[str, Any]]] = {}
    for role, table in ROLE_TABLES.items():
        for method, cls in table.items():
            out.setdefault(options_section(role, method), []).append((role, cls))
    return out


def check_method_options(method_options: Mapping[str, Any] | None) -> None:
    """Every ``method_options`` entry must be read by a registered method, and
    each of its keys must be an option that method declares (``option_keys``):
    raises ``ValueError`` naming the entry and the key, and pointing to the
    other entry of a method registered at both levels (``random`` /
    ``random_tokens``).  The constructors check again when a run builds."""
    sections = option_sections()
    for section, options in (method_options or {}).items():
        if section not in sections:
            raise ValueError(f"'method_options.{section}': no registered method reads these options; "
                             f"known entries: {', '.join(sorted(sections))}")
        declared = [_declared(cls) for _role, cls in sections[section]]
        if any(keys is None for keys in declared):
            continue  # a class that does not declare its keys checks them when built
        keys = frozenset().union(*declared)
        names = {cls.name for _role, cls in sections[section] if isinstance(cls, type)}
        for option in options or {}:
            if option in keys:
                continue
            elsewhere = [other for other, readers in sections.items() if other != section
                         and any(getattr(c, "name", None) in names and option in (_declared(c) or ()) for _r, c in readers)]
            hint = f" (an option of 'method_options.{elsewhere[0]}')" if elsewhere else ""
            raise ValueError(f"'method_options.{section}.{option}': unknown option of method {section!r}{hint}; "
                             f"known options: {', '.join(sorted(keys)) or '(none)'}")


def _declared(cls: Any) -> frozenset[str] | None:
    declared = getattr(cls, "option_keys", None)
    declared = declared() if callable(declared) else declared
    return None if declared is None else frozenset(declared)


def option_keys(method: str) -> frozenset[str] | None:
    """The option keys a registered method accepts, from the class attribute (or
    classmethod) ``option_keys`` of every class registered under that name
    (``random`` is a sample and a token pruner: the union); None when a class
    does not declare them (its constructor still checks)."""
    load_registry()
    classes = [table[method] for table in (JOINT_METHODS, SAMPLE_PRUNERS, TOKEN_PRUNERS) if method in table]
    keys: set[str] = set()
    for cls in classes:
        declared = getattr(cls, "option_keys", None)
        if callable(declared):
            declared = declared()
        if declared is None:
            return None
        keys |= set(declared)
    return frozenset(keys)


def check_variants(variants: Mapping[str, Any] | None) -> dict[str, Variant]:
    """Validate a config's ``variants`` section; return name -> :class:`Variant`.

    A variant names one registered joint method, sample or token pruner
    (``method``; not ``full``, a pair or another variant) and a mapping of its
    options.  Raises :class:`VariantError` naming the key: a name that collides
    with a registered method, an unknown base method, an option key the base
    method does not declare (``option_keys``), or an option value its
    classmethod ``check_options`` rejects."""
    load_registry()
    registered = {"full", "none", *JOINT_METHODS, *SAMPLE_PRUNERS, *TOKEN_PRUNERS}
    out: dict[str, Variant] = {}
    for name, entry in (variants or {}).items():
        key = f"variants.{name}"
        try:
            _check_name(name)
        except ValueError as exc:
            raise VariantError(key, str(exc)) from None
        if name in registered:
            raise VariantError(key, f"the variant name {name!r} is a registered method; choose another name")
        if not isinstance(entry, Mapping) or "method" not in entry:
            raise VariantError(key, "a variant is a mapping {method: <registered method>, options: {...}}")
        method, options = entry["method"], entry.get("options") or {}
        if not isinstance(method, str) or method not in registered - {"full", "none"}:
            known = ", ".join(sorted(registered - {"full", "none"}))
            why = ("a variant of a variant is not allowed" if method in (variants or {})
                   else "a pair is not allowed" if isinstance(method, str) and "+" in method else "unknown method")
            raise VariantError(f"{key}.method", f"{why} {method!r}; a variant's method is one registered "
                               f"method or pruner: {known}")
        if not isinstance(options, Mapping):
            raise VariantError(f"{key}.options", f"must be a mapping of option: value, got {options!r}")
        keys = option_keys(method)
        for option in options:
            if keys is not None and option not in keys:
                raise VariantError(f"{key}.options.{option}", f"unknown option of method {method!r}; "
                                   f"known options: {', '.join(sorted(keys)) or '(none)'}")
        for cls in (JOINT_METHODS.get(method), SAMPLE_PRUNERS.get(method), TOKEN_PRUNERS.get(method)):
            check = getattr(cls, "check_options", None)
            if callable(check):
                try:
                    check(options)
                except ValueError as exc:
                    raise VariantError(f"{key}.options", str(exc)) from None
        out[name] = Variant(name, method, dict(options))
    return out


def resolve_method(name: str, variants: Mapping[str, Any] | None = None) -> ResolvedMethod:
    """Map a config method name, which may use variants, onto registered methods.

    A variant used alone takes its base method's place (``q_tuning_l0`` ->
    ``q_tuning``); in a pair each half is resolved on its own and must fit its
    role (a sample pruner's variant on the left, a token pruner's on the right)."""
    table = check_variants(variants) if variants and not _all_variants(variants) else dict(variants or {})
    if name in table:
        variant = table[name]
        spec = parse_method(variant.method)
        role = "joint" if spec.family == "joint" else spec.family
        return ResolvedMethod(name, variant.method, spec, {role: name}, {name: variant})
    if "+" in name:
        sample, _, token = name.partition("+")
        used = {part: table[part] for part in (sample, token) if part in table}
        base_sample = table[sample].method if sample in table else sample
        base_token = table[token].method if token in table else token
        base = f"{base_sample}+{base_token}"
        try:
            spec = parse_method(base)
        except ValueError as exc:
            if used:
                raise ValueError(f"{exc} (method {name!r} with its variants resolved)") from None
            raise
        parts = {role: written for role, written, b in (("sample", sample, base_sample), ("token", token, base_token))
                 if b != "none"}
        return ResolvedMethod(name, base, spec, parts, used)
    spec = parse_method(name)
    parts = {"joint": name} if spec.family == "joint" else {r: n for r, n in (("sample", spec.sample), ("token", spec.token)) if n != "none"}
    return ResolvedMethod(name, name, spec, parts, {})


def _all_variants(variants: Mapping[str, Any]) -> bool:
    return all(isinstance(v, Variant) for v in variants.values())


def part_options(name: str, method_options: Mapping[str, Mapping[str, Any]] | None = None,
                 variants: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Role -> the options that part of a run receives.

    Merge rule: a part named by a registered method gets
    ``method_options[<section>]``; a part named by a variant gets
    ``{**method_options[<section>], **variant.options}``, where ``<section>`` is
    :func:`options_section` of the (base) method in that role (its name, or
    ``random_tokens`` for the random token pruner) - one level deep,
    the variant's keys win, and everything else (presets, defaults) is then
    resolved by the method as for any options (for Q-Tuning an explicit option
    still beats a preset, so a variant ``{preset: paper_text}`` over
    ``method_options.q_tuning: {entropy_over: all}`` keeps ``entropy_over: all``)."""
    method_options = method_options or {}
    resolved = resolve_method(name, variants)
    out: dict[str, dict[str, Any]] = {}
    for role, variant, section in _part_sections(resolved):
        out[role] = {**dict(method_options.get(section) or {}), **(dict(variant.options) if variant else {})}
    return out


def part_sections(name: str, variants: Mapping[str, Any] | None = None) -> set[str]:
    """The ``method_options`` keys a config method name's parts read
    (:func:`options_section` of each part's registered method)."""
    return {section for _role, _variant, section in _part_sections(resolve_method(name, variants))}


def _part_sections(resolved: ResolvedMethod) -> Iterator[tuple[str, Any, str]]:
    """(role, the variant naming that part or None, the ``method_options`` key
    its registered method reads), for each part of a resolved method."""
    for role, written in resolved.parts.items():
        variant = resolved.variants.get(written)
        yield role, variant, options_section(role, variant.method if variant else written)


def pruner_options(part: str, method_options: Mapping[str, Mapping[str, Any]] | None = None,
                   variants: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(registered name, options) of one part name, a pruner or a variant of one
    (e.g. the static_scores rule's ``sample_method``), by :func:`part_options`' rule."""
    method_options = method_options or {}
    table = check_variants(variants) if variants and not _all_variants(variants) else dict(variants or {})
    if part in table:
        variant = table[part]
        return variant.method, {**dict(method_options.get(variant.method) or {}), **dict(variant.options)}
    return part, dict(method_options.get(part) or {})


def default_options(method: str, role: str | None = None) -> dict[str, Any]:
    """The defaults a registered method declares (``option_defaults`` of a
    baseline class, Q-Tuning's resolved defaults); {} when none are declared.
    ``role`` (``joint``, ``sample``, ``token``) picks one of two classes
    registered under one name (``random``); None merges them."""
    load_registry()
    out: dict[str, Any] = {}
    for table in ((ROLE_TABLES[role],) if role else (JOINT_METHODS, SAMPLE_PRUNERS, TOKEN_PRUNERS)):
        cls = table.get(method)
        check = getattr(cls, "check_options", None)
        if callable(check):
            out.update(check({}))
        elif cls is not None:
            out.update(getattr(cls, "option_defaults", None) or {})
    return out


def describe_variant(name: str, config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(base method, {option: value})``: the registered method a config method
    name runs and the options in which it differs from that base method's own
    run in the same config (``method_options`` of the base, then the base's
    declared defaults).  Tables show a variant's row under its base method with
    these options.  For a pair the keys are ``<pruner>.<option>``; a name
    without variants gives ``(name, {})``.

    >>> cfg = {"variants": {"ppl_lowest": {"method": "ppl", "options": {"drop": "lowest"}}},
    ...        "method_options": {}}
    >>> describe_variant("random+ppl_lowest", cfg)
    ('random+ppl', {'ppl.drop': 'lowest'})
    """
    variants = config.get("variants") or {}
    method_options = config.get("method_options") or {}
    resolved = resolve_method(name, variants)
    differing: dict[str, Any] = {}
    for role, written in resolved.parts.items():
        variant = resolved.variants.get(written)
        if variant is None:
            continue
        section = options_section(role, variant.method)
        base = {**default_options(variant.method, role), **dict(method_options.get(section) or {})}
        prefix = "" if role == "joint" or len(resolved.parts) == 1 else f"{variant.method}."
        for option, value in variant.options.items():
            if option not in base or base[option] != value:
                differing[f"{prefix}{option}"] = value
    return resolved.base, differing
