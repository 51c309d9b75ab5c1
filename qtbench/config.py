"""Experiment configuration: validation, budgets and run ids, written once.

The JSON schema (``workflow/schemas/config.schema.yaml``) fixes the keys, types
and defaults; :func:`validate_config` applies it with messages that name the
offending key, then checks what a schema cannot (method names against the
registry).  :func:`expand_runs` turns the config into the list of training runs
(the Snakemake DAG's leaves), and :func:`run_id` names each run - every rule,
table and W&B run uses that one name.

Budget protocol (paper.md, "Budgets"): the config lists joint budget pairs
(r_s, r_t).  Q-Tuning and (sample, token) pairs run at each pair; a sample-only
method gets the same *total* budget as r_s = r_s * r_t with r_t = 1; a
token-only method r_s = 1 with r_t = r_s * r_t; ``full`` runs once at (1, 1).
Ratios are handled as decimal strings so that ``0.125`` never becomes
``0.12500000000000003`` in a file name.
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"

#: Wildcard patterns shared by the Snakefile and :func:`parse_run_id`.
MODEL_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
METHOD_PATTERN = r"[a-z][a-z0-9_]*(?:\+[a-z][a-z0-9_]*)?"
RATIO_PATTERN = r"(?:1|0\.[0-9]*[1-9])"
BUDGET_PATTERN = rf"s{RATIO_PATTERN}-t{RATIO_PATTERN}"
SEED_PATTERN = r"[0-9]+"


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


# --------------------------------------------------------------------------- ratios and budgets


def ratio_str(value: Any, key: str = "ratio") -> str:
    """Canonical decimal string of a ratio in (0, 1]: 0.50 -> '0.5', 1.0 -> '1'."""
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, AttributeError):
        raise ConfigError(f"{key}: {value!r} is not a number") from None
    if isinstance(value, bool) or not number.is_finite() or not (Decimal(0) < number <= Decimal(1)):
        raise ConfigError(f"{key}: {value!r} must lie in (0, 1]")
    text = format(number.normalize(), "f")
    return "1" if number == 1 else text


def multiply(a: str, b: str) -> str:
    return ratio_str(Decimal(a) * Decimal(b))


@dataclass(frozen=True, order=True)
class RunSpec:
    """One training run: model x method x (r_s, r_t) x seed."""

    model: str
    method: str
    r_s: str
    r_t: str
    seed: int

    @property
    def budget(self) -> str:
        return f"s{self.r_s}-t{self.r_t}"

    @property
    def total(self) -> str:
        return multiply(self.r_s, self.r_t)

    @property
    def run_id(self) -> str:
        return run_id(self.model, self.method, self.budget, self.seed)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "budget": self.budget, "total": self.total, "run_id": self.run_id}


def run_id(model: str, method: str, budget: str, seed: int | str) -> str:
    """``{model}/{method}/s{r_s}-t{r_t}/seed{seed}``; every part is checked so
    that no config value can escape the results folder."""
    for part, pattern, name in (
        (model, MODEL_PATTERN, "model"),
        (method, METHOD_PATTERN, "method"),
        (budget, BUDGET_PATTERN, "budget"),
        (str(seed), SEED_PATTERN, "seed"),
    ):
        if not re.fullmatch(pattern, str(part)) or ".." in str(part):
            raise ConfigError(f"invalid {name} {part!r} for a run id (allowed: {pattern})")
    return f"{model}/{method}/{budget}/seed{seed}"


def parse_budget(budget: str) -> tuple[float, float]:
    match = re.fullmatch(rf"s({RATIO_PATTERN})-t({RATIO_PATTERN})", budget)
    if not match:
        raise ConfigError(f"invalid budget {budget!r}; expected s<r_s>-t<r_t>, e.g. s0.25-t0.5")
    return float(match.group(1)), float(match.group(2))


def budgets_for(method: str, pairs: Iterable[tuple[str, str]],
                variants: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    """The (r_s, r_t) budgets a method runs at, from the config's joint pairs
    (a variant's budgets follow its base method's family)."""
    from qtbench.methods.registry import method_family

    family = method_family(method, variants)
    out: list[tuple[str, str]] = []
    for r_s, r_t in pairs:
        if family == "full":
            budget = ("1", "1")
        elif family in ("joint", "pair"):
            budget = (r_s, r_t)
        elif family == "sample":
            budget = (multiply(r_s, r_t), "1")
        else:  # token-only
            budget = ("1", multiply(r_s, r_t))
        if budget not in out:
            out.append(budget)
    return out


def budget_pairs(config: Mapping[str, Any], method: str | None = None) -> list[tuple[str, str]]:
    """The joint (r_s, r_t) pairs of the config, or of ``method_budgets.<method>``
    when the config gives that method its own list (e.g. a Q-Tuning budget curve
    beside baselines at one shared budget)."""
    own = (config.get("method_budgets") or {}).get(method) if method else None
    entries, key = (own, f"method_budgets.{method}") if own else (config["budgets"], "budgets")
    pairs = []
    for i, entry in enumerate(entries):
        pairs.append((ratio_str(entry["r_s"], f"{key}[{i}].r_s"), ratio_str(entry["r_t"], f"{key}[{i}].r_t")))
    return pairs


def seeds_for(config: Mapping[str, Any], method: str) -> list[int]:
    """The seeds ``method`` runs with: ``method_seeds.<method>`` when given (the
    paper averages its random baselines over 5 repeats), else ``seeds``."""
    own = (config.get("method_seeds") or {}).get(method)
    return [int(seed) for seed in (own or config["seeds"])]


def expand_runs(config: Mapping[str, Any]) -> list[RunSpec]:
    """Every training run the config asks for, in a stable order."""
    runs = []
    for model in config["models"]:
        for method in config["methods"]:
            for r_s, r_t in budgets_for(method, budget_pairs(config, method), config.get("variants")):
                for seed in seeds_for(config, method):
                    runs.append(RunSpec(model, method, r_s, r_t, int(seed)))
    return sorted(set(runs), key=lambda r: (r.model, config["methods"].index(r.method), r.budget, r.seed))


# --------------------------------------------------------------------------- validation


def load_schema(path: Path | None = None) -> dict:
    path = Path(path or SCHEMA_PATH)
    if not path.exists():
        raise ConfigError(f"config schema not found at {path}")
    return yaml.safe_load(path.read_text())


def _error_key(error: Any) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in error.absolute_path]
    key = ".".join(parts).replace(".[", "[")
    if error.validator == "additionalProperties":
        found = re.findall(r"'([^']+)' (?:was|were) unexpected", error.message)
        extra = re.findall(r"'([^']+)'", error.message.split("(")[-1]) if not found else found
        name = ", ".join(extra)
        return f"{key}.{name}" if key else name
    return key or "<top level>"


def validate_config(config: Mapping[str, Any], schema_path: Path | None = None) -> dict[str, Any]:
    """Validate ``config`` against the schema, fill defaults, check method names.

    Returns a new dict; raises :class:`ConfigError` naming the first bad key."""
    import jsonschema

    schema = load_schema(schema_path)
    resolved = copy.deepcopy(dict(config))
    validator_cls = _defaults_validator(jsonschema.Draft202012Validator)
    errors = sorted(validator_cls(schema).iter_errors(resolved), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        key = _error_key(error)
        if error.validator == "additionalProperties":
            raise ConfigError(f"unknown config key {key!r}: {error.message}")
        if error.validator == "required":
            missing = re.findall(r"'([^']+)' is a required property", error.message)
            name = f"{key}.{missing[0]}" if key != "<top level>" and missing else (missing[0] if missing else key)
            raise ConfigError(f"missing config key {name!r}")
        if error.validator == "oneOf" and error.schema.get("description"):
            raise ConfigError(f"config key {key!r}: {error.instance!r} is not {error.schema['description']}")
        raise ConfigError(f"config key {key!r}: {error.message}")
    _check_semantics(resolved)
    return resolved


def _defaults_validator(base: Any) -> Any:
    """A validator that fills ``default`` values of object properties as it goes
    (the recipe from the jsonschema FAQ, which Snakemake's ``validate`` uses too)."""
    import jsonschema

    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})


def _check_semantics(config: dict[str, Any]) -> None:
    from qtbench.methods.registry import VariantError, check_method_options, check_variants, resolve_method

    try:
        variants = check_variants(config.get("variants"))
    except VariantError as exc:
        raise ConfigError(f"config key {exc.key!r}: {exc.detail}") from None
    for name in config.get("method_options") or {}:
        if name in variants:
            raise ConfigError(f"config key 'method_options.{name}': {name!r} is a variant; "
                              f"its options go in 'variants.{name}.options'")
    try:
        check_method_options(config.get("method_options"))
    except ValueError as exc:
        raise ConfigError(f"config key {exc}") from None
    for i, method in enumerate(config["methods"]):
        try:
            resolve_method(method, variants)
        except ValueError as exc:
            raise ConfigError(f"config key 'methods[{i}]': {exc}") from None
    _check_controls(config, variants)
    budget_pairs(config)
    for method in config.get("method_budgets") or {}:
        # an entry for a method the config does not run is allowed: a config
        # merged over the default inherits the default's entries
        budget_pairs(config, method)
    for name in config["models"]:
        if not re.fullmatch(MODEL_PATTERN, name):
            raise ConfigError(f"config key 'models.{name}': model names use letters, digits, '_', '.', '-'")
    if len(set(config["methods"])) != len(config["methods"]):
        raise ConfigError("config key 'methods': a method is listed twice")


def _check_controls(config: Mapping[str, Any], variants: Mapping[str, Any]) -> None:
    """A control that reads the world's ground truth (``oracle``, ``anti_oracle``)
    runs only on the world's SFT data: other data has no ``sft_meta.jsonl``."""
    from qtbench.methods.registry import uses_ground_truth

    source = config.get("data", {}).get("source", "world")
    for i, method in enumerate(config["methods"]):
        if source != "world" and uses_ground_truth(method, variants):
            raise ConfigError(f"config key 'methods[{i}]': {method!r} is a control that reads the synthetic world's "
                              f"ground-truth labels (world/sft_meta.jsonl); data.source is {source!r}, which has "
                              "none: use it only with data.source: world")


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config file (merged over ``overrides``' keys) and validate it."""
    data = read_config_file(path)
    if overrides:
        data = deep_merge(data, overrides)
    try:
        return validate_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge mappings key by key, as Snakemake merges ``--configfile`` files."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# --------------------------------------------------------------------------- per-run views


def uses_world(config: Mapping[str, Any]) -> bool:
    """True when the SFT data or any model comes from the synthetic world."""
    return config["data"]["source"] == "world" or any(m["path"] == "world" for m in config["models"].values())


def train_config(config: Mapping[str, Any], run: RunSpec) -> dict[str, Any]:
    """What one training job needs: the run, the model entry, data and train
    sections and the options of the pruners it uses.  Rules pass it as a
    ``params`` JSON so that a change retrains exactly the affected runs.

    A run whose method uses variants also gets ``variants`` (only the ones it
    uses, ``{name: {method, options}}``), so that changing a variant's options
    retrains exactly its runs; ``method_options`` holds the options of the
    registered methods it resolves to (the trainer merges them,
    :func:`qtbench.methods.registry.part_options`).  Runs without variants get
    no ``variants`` key: their params, and so their outputs, stay as they were."""
    from qtbench.methods.registry import part_sections, resolve_method

    resolved = resolve_method(run.method, config.get("variants"))
    names = part_sections(run.method, config.get("variants"))
    options = {k: v for k, v in config.get("method_options", {}).items() if k in names}
    out = {
        "experiment": config["experiment"],
        "run": run.as_dict(),
        "model": {"name": run.model, **config["models"][run.model]},
        "data": config["data"],
        "train": config["train"],
        "method_options": options,
        "wandb": config["wandb"],
    }
    if resolved.variants:
        out["variants"] = {name: {"method": v.method, "options": dict(v.options)}
                           for name, v in sorted(resolved.variants.items())}
    return out


# --------------------------------------------------------------------------- rerun triggers

#: Train settings that cannot change a trained weight or a recorded number: the
#: thread count of a CPU job, how often the loss is logged and how often a
#: resumable checkpoint is written (a resumed run continues bit for bit).  They
#: stay out of a rule's ``params`` (Snakemake's rerun trigger) and reach the job
#: as plain command-line settings instead.
RUNTIME_TRAIN_KEYS = ("threads", "log_every", "checkpoint_every")

#: Eval settings of the same kind: threads, and whether the base models are
#: evaluated too (a separate job; it changes no checkpoint's record).
RUNTIME_EVAL_KEYS = ("threads", "evaluate_base")


def split_run_config(cfg: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a run config (:func:`train_config`) into what can change the run's
    outputs and the rest (W&B, threads, log and checkpoint intervals).

    The first part is the rule's ``params`` (a change retrains the run); the
    second travels as ``--settings`` and is merged back by the CLI, so
    ``deep_merge(*split_run_config(cfg)) == cfg``."""
    affecting = {k: copy.deepcopy(v) for k, v in cfg.items() if k != "wandb"}
    train = dict(cfg.get("train", {}))
    affecting["train"] = {k: v for k, v in train.items() if k not in RUNTIME_TRAIN_KEYS}
    settings: dict[str, Any] = {"train": {k: train[k] for k in RUNTIME_TRAIN_KEYS if k in train}}
    if "wandb" in cfg:
        settings["wandb"] = copy.deepcopy(cfg["wandb"])
    return affecting, settings


def eval_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The eval section less :data:`RUNTIME_EVAL_KEYS`: what an evaluation
    record depends on (tasks, shots, limits, batch size, device, seed)."""
    return {k: copy.deepcopy(v) for k, v in config["eval"].items() if k not in RUNTIME_EVAL_KEYS}


# --------------------------------------------------------------------------- the merge Snakemake does


def default_config_path() -> Path:
    return REPO_ROOT / "config" / "config.yaml"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping, with errors that name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def replace_models(merged: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``models`` given by the ``--configfile`` files replace the default's
    instead of merging with them (a preset naming its own models must not also
    train the default's ``tiny`` world model).  ``overrides`` is the merge of
    the ``--configfile`` files alone; the Snakefile calls this with
    ``workflow.config_settings.overwrite_config``."""
    if "models" in overrides:
        merged["models"] = copy.deepcopy(overrides["models"])
    return merged


def merge_over_default(*paths: str | Path, default: str | Path | None = None) -> dict[str, Any]:
    """What ``snakemake --configfile A B ...`` sees, validated: the files merged
    key by key in order, that merge over the default config, then
    :func:`replace_models` - exactly the steps of the Snakefile."""
    overrides: dict[str, Any] = {}
    for path in paths:
        overrides = deep_merge(overrides, read_config_file(path))
    merged = deep_merge(read_config_file(default or default_config_path()), overrides)
    replace_models(merged, overrides)
    try:
        return validate_config(merged)
    except ConfigError as exc:
        raise ConfigError(f"{', '.join(str(p) for p in paths)} (merged over the default config): {exc}") from None
