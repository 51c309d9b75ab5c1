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
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, Mapping

from qtbench.io import write_json_atomic
from qtbench.methods.registry import SAMPLE_PRUNERS, load_registry
from qtbench.data.sources import load_sft_records


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
    data_cfg = dict(data_cfg or {})
    records, _ = load_sft_records(data, data_cfg.get("format", "auto"), data_cfg.get("split", "train"),
                              data_cfg.get("revision"), data_cfg.get("on_bad_record", "skip"), data_cfg.get("max_records"))
    from qtbench.models import load_model, load_tokenizer

    proxy = options.get("proxy") or model_path
    entry = scoring_model_entry(options, model_entry)
    tokenizer = load_tokenizer(proxy, entry)
    model = load_model(proxy, entry).eval()
    takes_inputs = "inputs" in inspect.signature(scorer).parameters
    if inputs and not takes_inputs:
        raise ValueError(f"{method}: static_scores() takes no 'inputs', but the rule gave {sorted(inputs)}")
    extra = {"inputs": dict(inputs or {})} if takes_inputs else {}
    scores = [float(s) for s in scorer(records, model, tokenizer, dict(options), **extra)]
    if len(scores) != len(records):
        raise ValueError(f"{method}: static_scores returned {len(scores)} scores for {len(records)} records")
    write_json_atomic(out, {"method": method, "model": str(proxy), "data": str(data), "n": len(scores), "scores": scores})
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
    data_cfg = dict(data_cfg or {})
    records, _ = load_sft_records(data, data_cfg.get("format", "auto"), data_cfg.get("split", "train"),
                                  data_cfg.get("revision"), data_cfg.get("on_bad_record", "skip"), data_cfg.get("max_records"))
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
