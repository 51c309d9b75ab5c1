"""Static scoring: a sample pruner that scores the data once before training.

The ``static_scores`` Snakemake rule calls :func:`score_static`; the scores are
cached per model x data set x method and handed to the pruner's
``plan_epoch`` through ``DatasetInfo.static_scores``.  A static pruner's module
provides ``static_scores(records, model, tokenizer, options) -> list[float]``;
methods that need no model (lengths, character entropy) ignore it.

A method whose scoring needs a step of its own (LESS's warm-up: a rule in
``workflow/rules/methods/``) declares a keyword ``inputs``: the scoring call
hands it the ``inputs`` mapping the ``static_scores`` rule was given (that
rule's outputs by name, plus plain values such as the eval task names).

The ``token_scores`` rule calls :func:`score_tokens`: TokenCleaning's
pre-pass (every response token's ``base_nll - ref_nll``, once per model),
from which each run places its global cut.

Judge-scored pruners (Alpagasus, DEITA, DS2) score with models of their own
(an LLM judge, scorers, an embedder), named in their options as
``{path, revision, trust_remote_code, dtype}`` and declared by the class
attribute ``judge_slots`` (:class:`JudgeSlot`).  For them the base model is not
loaded: ``static_scores`` receives a :class:`JudgeModels` mapping (option key
-> ``(model, tokenizer)``, loaded on first use through ``qtbench.models``:
safetensors only, ``trust_remote_code`` only where that judge's entry says so)
in place of the model, and ``None`` as the tokenizer.  Such a ``static_scores``
may return ``{"scores": [...], <name>: <JSON value>, ...}`` (e.g. one value
per record): the other entries are written beside the scores under
``extras``, for inspection.
A judge path ``world`` names the synthetic world's base model; the Snakefile
resolves it to that folder (:func:`resolve_judge_paths`) and makes it an input
of the scoring job.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from qtbench.io import write_json_atomic
from qtbench.methods.registry import SAMPLE_PRUNERS, load_registry
from qtbench.data.sources import load_configured_records


def score_static(method: str, model_path: str, data: str, options: Mapping[str, Any], out: str | Path,
                 model_entry: Mapping[str, Any] | None = None, data_cfg: Mapping[str, Any] | None = None,
                 inputs: Mapping[str, Any] | None = None) -> list[float]:
    load_registry()
    if method not in SAMPLE_PRUNERS or not SAMPLE_PRUNERS[method].static:
        static = sorted(name for name, cls in SAMPLE_PRUNERS.items() if cls.static)
        raise ValueError(f"{method!r} is not a static sample pruner; static ones: {static}")
    module = importlib.import_module(SAMPLE_PRUNERS[method].__module__)
    scorer = getattr(module, "static_scores", None)
    if scorer is None:
        raise ValueError(f"module {module.__name__} registers static pruner {method!r} but defines no static_scores()")
    records, _ = load_configured_records(data, data_cfg)
    from qtbench.models import load_model, load_tokenizer

    takes_inputs = "inputs" in inspect.signature(scorer).parameters
    if inputs and not takes_inputs:
        raise ValueError(f"{method}: static_scores() takes no 'inputs', but the rule gave {sorted(inputs)}")
    extra = {"inputs": dict(inputs or {})} if takes_inputs else {}
    slots = judge_slots(SAMPLE_PRUNERS[method])
    if slots:
        judges = JudgeModels(slots, options, model_entry)
        result = scorer(records, judges, None, dict(options), **extra)
        scored_with: Any = judges.describe()
    else:
        proxy = options.get("proxy") or model_path
        entry = scoring_model_entry(options, model_entry)
        tokenizer = load_tokenizer(proxy, entry)
        model = load_model(proxy, entry).eval()
        result = scorer(records, model, tokenizer, dict(options), **extra)
        scored_with = str(proxy)
    extras: dict[str, list] = {}
    if isinstance(result, Mapping):
        extras = {k: list(v) if isinstance(v, tuple) else v for k, v in result.items() if k != "scores"}
        result = result["scores"]
    scores = [float(s) for s in result]
    if len(scores) != len(records):
        raise ValueError(f"{method}: static_scores returned {len(scores)} scores for {len(records)} records")
    record = {"method": method, "model": scored_with, "data": str(data), "n": len(scores), "scores": scores}
    if extras:
        record["extras"] = extras
    write_json_atomic(out, record)
    return scores


def score_tokens(base_model: str, reference_model: str, data: str, out: str | Path,
                 model_entry: Mapping[str, Any] | None = None, data_cfg: Mapping[str, Any] | None = None,
                 max_length: int = 2048, batch_size: int = 8) -> int:
    """TokenCleaning's pre-pass (the token_scores rule): ``base_nll - ref_nll``
    of every response token of the data set, tokenized as training does
    (``max_length`` = train.max_length, the model's template), saved sorted
    descending as float32 ``.npy`` - all a run needs to place its global cut
    for any ``r_t`` (``baselines.token_cleaning.threshold_from_scores``).
    The reference is loaded with its own entry after a tokenizer check
    (:func:`qtbench.models.load_reference`).  Returns the token count."""
    import numpy as np
    import torch

    from baselines.token_cleaning import token_influence_scores
    from qtbench.models import load_model, load_reference, load_tokenizer

    entry = dict(model_entry or {})
    records, _ = load_configured_records(data, data_cfg)
    tokenizer = load_tokenizer(base_model, entry)
    reference = load_reference(entry, reference_model, tokenizer).eval()
    base = load_model(base_model, entry, next(reference.parameters()).device).eval()
    scores = token_influence_scores(records, base, reference, tokenizer, int(max_length),
                                    bool(entry.get("chat_template", False)), int(batch_size))
    ordered = torch.sort(scores, descending=True).values.numpy().astype(np.float32)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.npy")
    np.save(partial, ordered)
    partial.replace(out)
    return int(ordered.size)


def read_token_scores(path: str | Path) -> "Any":
    """The score-tokens output as a 1-d float64 tensor."""
    import numpy as np
    import torch

    return torch.from_numpy(np.load(Path(path)).astype(np.float64))


def scoring_options(method: str, options: Mapping[str, Any], train_max_length: int) -> dict[str, Any]:
    """A static pruner's options as its scoring job gets them: a scorer with a
    ``max_length`` option left null scores at the training length
    (``train.max_length``), so it sees the tokens training sees (IFD,
    Superfiltering).  The static_scores rule passes the result as ``params``,
    so a new training length rescores."""
    load_registry()
    out = dict(options)
    cls = SAMPLE_PRUNERS.get(method)
    keys = cls.option_keys() if cls is not None and hasattr(cls, "option_keys") else frozenset()
    if "max_length" in keys and out.get("max_length") is None:
        out["max_length"] = int(train_max_length)
    return out


def scoring_model_entry(options: Mapping[str, Any], model_entry: Mapping[str, Any] | None) -> dict[str, Any]:
    """How to load the scoring model: the base model's entry, or for a proxy
    (option ``proxy``, e.g. Superfiltering's GPT-2) an entry of its own - its
    revision from option ``proxy_revision``, the base model's dtype, and never
    the base model's revision or ``trust_remote_code`` (another repository's
    commit hash, or remote code trusted for another model)."""
    model_entry = dict(model_entry or {})
    if not options.get("proxy"):
        return model_entry
    return {"revision": options.get("proxy_revision"), "dtype": model_entry.get("dtype", "auto")}


# --------------------------------------------------------------------------- judge models


#: A judge path that names the synthetic world's base model (resolved by the Snakefile).
WORLD_JUDGE = "world"

#: The keys of a judge entry (``method_options.<m>.<slot>``).
JUDGE_ENTRY_KEYS = ("path", "revision", "trust_remote_code", "dtype")


@dataclass(frozen=True)
class JudgeSlot:
    """An option of a judge-scored pruner that names a model.

    ``required``: the config must name it (checked at DAG build, naming the key);
    ``encoder``: an embedding model, loaded with ``AutoModel`` (any architecture,
    e.g. a BGE encoder) rather than as a causal LM; ``fallback``: the slot whose
    model stands in when this optional one is null (e.g. the embedder defaults to
    the scorer)."""

    key: str
    required: bool = True
    encoder: bool = False
    fallback: str | None = None


def judge_slots(cls: Any) -> tuple[JudgeSlot, ...]:
    """The judge slots a registered pruner class declares (``()`` for the rest)."""
    return tuple(getattr(cls, "judge_slots", ()) or ())


def check_judge_entry(method: str, key: str, value: Any, required: bool = True) -> dict[str, Any] | None:
    """Validate ``method_options.<method>.<key>``: a mapping ``{path, revision,
    trust_remote_code, dtype}`` (only ``path`` required); ``None`` when absent and
    not required.  Raises ``ValueError`` naming the option."""
    if value is None:
        if required:
            raise ValueError(f"option {key!r} of method {method!r} is missing: {method} scores with a judge model; "
                             f"name it as {{path: <model id, local folder or 'world'>, revision: <commit>}}")
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"option {key!r} of method {method!r} must be a mapping {{path:, revision:}}, got {value!r}")
    unknown = sorted(set(value) - set(JUDGE_ENTRY_KEYS))
    if unknown:
        raise ValueError(f"option {key!r} of method {method!r}: unknown key {unknown[0]!r} "
                         f"(known: {', '.join(JUDGE_ENTRY_KEYS)})")
    path = value.get("path")
    if not isinstance(path, str) or not path:
        raise ValueError(f"option {key!r} of method {method!r} needs 'path' (a model id, a local folder or 'world')")
    revision = value.get("revision")
    if revision is not None and (not isinstance(revision, str) or not revision):
        raise ValueError(f"option {key!r} of method {method!r}: 'revision' must be a commit or tag, got {revision!r}")
    trust = value.get("trust_remote_code", False)
    if trust is not None and not isinstance(trust, bool):
        raise ValueError(f"option {key!r} of method {method!r}: 'trust_remote_code' must be true or false, got {trust!r}")
    dtype = value.get("dtype")
    if dtype is not None and dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ValueError(f"option {key!r} of method {method!r}: 'dtype' must be auto, float32, bfloat16 or float16")
    return dict(value)


def judge_entry(judge: Mapping[str, Any], model_entry: Mapping[str, Any] | None) -> dict[str, Any]:
    """How to load a judge: its own revision and ``trust_remote_code`` (never the
    base model's: another repository), its ``dtype`` or else the base model's."""
    model_entry = dict(model_entry or {})
    return {"revision": judge.get("revision"), "trust_remote_code": bool(judge.get("trust_remote_code") or False),
            "dtype": judge.get("dtype") or model_entry.get("dtype", "auto")}


def resolve_judge_paths(cls: Any, options: Mapping[str, Any], world_model: str | None) -> dict[str, Any]:
    """``options`` with every judge path ``world`` replaced by ``world_model``
    (the world's base model folder); unchanged for pruners without judges.
    Raises ``ValueError`` when a judge says ``world`` and there is none."""
    out = dict(options)
    for slot in judge_slots(cls):
        entry = out.get(slot.key)
        if isinstance(entry, Mapping) and entry.get("path") == WORLD_JUDGE:
            if not world_model:
                raise ValueError(f"option {slot.key!r}: path 'world' names the synthetic world's base model, "
                                 "but no model of the config has path: world")
            out[slot.key] = {**entry, "path": str(world_model)}
    return out


def judge_paths(cls: Any, options: Mapping[str, Any]) -> list[str]:
    """The model paths the judge slots of ``cls`` name in ``options`` (in slot order, unique)."""
    paths: list[str] = []
    for slot in judge_slots(cls):
        entry = options.get(slot.key)
        if isinstance(entry, Mapping) and isinstance(entry.get("path"), str) and entry["path"] not in paths:
            paths.append(entry["path"])
    return paths


class JudgeModels(Mapping):
    """Option key -> ``(model, tokenizer)`` of a judge-scored pruner, each
    loaded once on first use (two slots naming the same model and revision
    share one copy; an optional slot left null takes its ``fallback``'s)."""

    def __init__(self, slots: tuple[JudgeSlot, ...], options: Mapping[str, Any],
                 model_entry: Mapping[str, Any] | None = None) -> None:
        self.slots = {slot.key: slot for slot in slots}
        self.options = dict(options)
        self.model_entry = dict(model_entry or {})
        self._loaded: dict[tuple, tuple[Any, Any]] = {}

    def _target(self, key: str) -> tuple[str, JudgeSlot]:
        slot = self.slots[key]
        seen = set()
        while self.options.get(key) is None and self.slots[key].fallback and key not in seen:
            seen.add(key)
            key = self.slots[key].fallback
        if self.options.get(key) is None:
            raise ValueError(f"judge option {slot.key!r} is not set")
        return key, slot

    def __getitem__(self, key: str) -> tuple[Any, Any]:
        if key not in self.slots:
            raise KeyError(key)
        source, slot = self._target(key)
        judge = self.options[source]
        entry = judge_entry(judge, self.model_entry)
        # an unset slot that falls back reuses its fallback's model as loaded
        encoder = slot.encoder and source == key
        ident = (judge["path"], entry["revision"], entry["dtype"], encoder)
        if ident not in self._loaded:
            from qtbench.models import load_encoder, load_model, load_tokenizer

            tokenizer = load_tokenizer(judge["path"], entry)
            model = (load_encoder if encoder else load_model)(judge["path"], entry).eval()
            self._loaded[ident] = (model, tokenizer)
        return self._loaded[ident]

    def __iter__(self) -> Iterator[str]:
        return iter(self.slots)

    def __len__(self) -> int:
        return len(self.slots)

    def describe(self) -> dict[str, Any]:
        """Slot -> the path and revision it scores with (null: falls back)."""
        out = {}
        for key in self.slots:
            judge = self.options.get(key)
            out[key] = None if judge is None else {"path": judge["path"], "revision": judge.get("revision")}
        return out
