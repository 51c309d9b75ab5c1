"""LESS: keep the samples whose (Adam) gradient points where the target tasks' gradients point.

Paper: Xia, Malladi, Gururangan, Arora, Chen, "LESS: Selecting Influential Data
for Targeted Instruction Tuning" (ICML 2024, arXiv 2402.04333; code
``princeton-nlp/LESS``).  A short LoRA *warm-up* on a random 5% of the data
gives checkpoints ``theta_1..theta_E`` (one per epoch) with their Adam moments.
A training sample ``z`` is represented at each checkpoint by its Adam update
direction ``Gamma(z, theta_i)``, a target example ``z'`` by its plain (SGD)
gradient; both are LoRA gradients, randomly projected to ``proj_dim``
dimensions.  ``Inf(z, z') = sum_i eta_i * cos(Gamma(z, theta_i), grad l(z', theta_i))``
with ``eta_i`` the mean learning rate of epoch ``i`` (weights normalised to
sum 1, as ``matching.py``); a target task's score is the mean over its
examples, and a sample's score the **max over target tasks**.

* scores: :func:`static_scores` (one float per record; NaN for records held
  out as the target, which are never kept).  Gradients are of the mean
  response-token loss of one sample (batch size 1, as LESS), under the plain
  template (``qtbench.data.template.format_prompt``), model in eval mode (no
  LoRA dropout).  Adam direction as LESS's ``obtain_gradients_with_adam``:
  ``m' = b1 m + (1-b1) g``, ``v' = b2 v + (1-b2) g^2``, ``Gamma = m' / sqrt(v' + eps)``
  (b1 0.9, b2 0.999, eps 1e-8; no bias correction, eps inside the root);
  projection: a Rademacher matrix (+-1/sqrt(d)) drawn block by block from
  ``seed`` (TRAK's projector in LESS; any JL matrix keeps cosines);
* model: the base model plus the warm-up's LoRA adapters.  The warm-up is a
  step of its own, the Snakemake rule ``less_warmup``
  (``workflow/rules/methods/less.smk``; ``python -m baselines.less warmup``),
  whose folder ``results/<exp>/less/<model>/warmup-<key>/`` (``epoch<i>/``:
  ``adapter.safetensors``, ``moments.safetensors``; ``warmup.json``) reaches
  the scoring call as ``inputs["warmup"]``;
* when: static, once before training; the same subset every epoch;
* keeps: the ``max(1, round(N * r_s))`` highest scores (ties: lower index
  first); alone, a sample pruner runs at ``r_s * r_t`` of the samples
  (config ``budgets``), in a pair (``less+random``, Q-Tuning's Table 13) at
  ``r_s``.  LESS itself keeps the top 5%.

The target (option ``target``; the paper's few-shot validation sets, e.g. MMLU's
5 per subject; Q-Tuning does not say which it used):

* ``eval`` (default): each ``eval.tasks`` task's few-shot split, else its
  validation split when that is not the split evaluated (``target_per_task``
  documents each, seeded; prompt = lm-eval's ``doc_to_text``, response = the
  target delimiter + the gold answer, as lm-eval scores it); tasks with
  neither (the synthetic world's) are covered by one target ``heldout``: a
  seeded ``holdout`` fraction of the SFT data, held out (score NaN);
* a list of names: ``eval.tasks`` names and/or ``heldout``;
* a mapping ``{name: file}``: Alpaca-format JSON/JSONL target sets.
A name that is not an ``eval.tasks`` task, or a file that is missing or
unreadable, fails at DAG build naming the key (``check_config``).

Readings where the paper leaves a choice: the eval tasks play the role of
LESS's subtasks (mean within a task, max across tasks): one subset serves all
five benchmarks, as Q-Tuning trains one model for them; with no dev split the
target is a held-out slice of the SFT data rather than test items (no test
leakage).  The warm-up draws its 5% from all records.

Options (LESS's defaults): ``target`` (eval), ``target_per_task`` (16),
``holdout`` (0.05), ``warmup_fraction`` (0.05), ``warmup_epochs`` (4),
``lr`` (2e-5), ``batch_size`` (128 samples per step), ``micro_batch_size`` (8),
``warmup_ratio`` (0.03, linear schedule), ``weight_decay`` (0),
``lora_rank`` (128), ``lora_alpha`` (512), ``lora_dropout`` (0.1),
``lora_target`` (q/k/v/o_proj), ``proj_dim`` (8192), ``max_length`` (2048),
``seed`` (0: warm-up subset and order, hold-out, projection), ``double_prune``.
The world's config sets a small LoRA, ``proj_dim: 512`` and a larger ``lr``.

Extra cost: a LoRA warm-up of ``warmup_epochs`` over 5% of the data; then per
checkpoint one forward+backward per training record and per target example
(``E * (N + M)`` per-sample backward passes) and a ``P x proj_dim``
projection; one model (the base) plus small adapters.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from baselines._common import EpochLevelSamplePruner, check_fraction, check_positive_int, epoch_keep_count, \
    keep_by_score, make_generator, require_static_scores
from qtbench.methods.base import Budget, DatasetInfo, EpochPlan
from qtbench.methods.registry import register_sample_pruner

Tensor = torch.Tensor

LESS_DEFAULTS: dict[str, Any] = {
    "target": "eval",
    "target_per_task": 16,
    "holdout": 0.05,
    "warmup_fraction": 0.05,
    "warmup_epochs": 4,
    "lr": 2.0e-5,
    "batch_size": 128,
    "micro_batch_size": 8,
    "warmup_ratio": 0.03,
    "weight_decay": 0.0,
    "lora_rank": 128,
    "lora_alpha": 512,
    "lora_dropout": 0.1,
    "lora_target": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "proj_dim": 8192,
    "max_length": 2048,
    "seed": 0,
}

#: The options the warm-up reads (its rule's params and folder key): changing
#: the target or the projection re-scores without re-training the warm-up.
WARMUP_KEYS = ("warmup_fraction", "warmup_epochs", "lr", "batch_size", "micro_batch_size", "warmup_ratio",
               "weight_decay", "lora_rank", "lora_alpha", "lora_dropout", "lora_target", "max_length", "seed")

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
HELDOUT = "heldout"
WARMUP_META = "warmup.json"


# --------------------------------------------------------------------------- the scoring math (pure)


def adam_direction(grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, betas: tuple[float, float] = ADAM_BETAS,
                   eps: float = ADAM_EPS) -> Tensor:
    """LESS's Adam update direction of a gradient under the warm-up's moments:
    ``(b1 m + (1-b1) g) / sqrt(b2 v + (1-b2) g^2 + eps)``."""
    b1, b2 = betas
    m = b1 * exp_avg + (1 - b1) * grad
    v = b2 * exp_avg_sq + (1 - b2) * grad * grad
    return m / torch.sqrt(v + eps)


class RademacherProjector:
    """``x -> x @ R`` with ``R`` a ``[dim_in, dim_out]`` matrix of +-1/sqrt(dim_out),
    drawn in row blocks of ``block`` rows, each from a generator seeded by
    (seed, block index): the same matrix on every machine, whatever the batch.
    The matrix is kept when it has at most ``cache_elements`` entries, else
    regenerated block by block at each call."""

    def __init__(self, dim_in: int, dim_out: int, seed: int = 0, block: int = 1024,
                 cache_elements: int = 64 * 1024 * 1024) -> None:
        self.dim_in, self.dim_out, self.seed, self.block = int(dim_in), int(dim_out), int(seed), int(block)
        self._full = self._matrix() if self.dim_in * self.dim_out <= cache_elements else None

    def _block(self, index: int) -> Tensor:
        rows = min(self.block, self.dim_in - index * self.block)
        gen = make_generator(self.seed, "less_projection", self.dim_in, self.dim_out, index)
        signs = torch.randint(0, 2, (rows, self.dim_out), generator=gen, dtype=torch.int8)
        return (signs.to(torch.float32) * 2 - 1) / math.sqrt(self.dim_out)

    def _matrix(self) -> Tensor:
        return torch.cat([self._block(i) for i in range(math.ceil(self.dim_in / self.block))])

    def project(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32)
        if x.shape[-1] != self.dim_in:
            raise ValueError(f"projector expects {self.dim_in} features, got {x.shape[-1]}")
        if self._full is not None:
            return x @ self._full
        out = torch.zeros(*x.shape[:-1], self.dim_out)
        for i in range(math.ceil(self.dim_in / self.block)):
            out += x[..., i * self.block:(i + 1) * self.block] @ self._block(i)
        return out


def checkpoint_weights(lrs: Sequence[float]) -> list[float]:
    """LESS's checkpoint weights: each epoch's mean learning rate, normalised to sum 1."""
    total = float(sum(lrs))
    if not lrs or total <= 0:
        raise ValueError(f"checkpoint learning rates must be positive, got {list(lrs)}")
    return [float(lr) / total for lr in lrs]


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """``[N, M]`` cosine similarities of the rows of ``a`` and ``b`` (0 for a zero row)."""
    a = torch.nn.functional.normalize(a.to(torch.float64), dim=-1)
    b = torch.nn.functional.normalize(b.to(torch.float64), dim=-1)
    return a @ b.T


def influence_scores(train: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]],
                     weights: Sequence[float]) -> tuple[Tensor, dict[str, Tensor]]:
    """LESS's score from projected gradients.

    ``train[i]``: ``[N, d]`` Adam directions at checkpoint ``i``;
    ``targets[i][task]``: ``[M_task, d]`` SGD gradients at checkpoint ``i``;
    ``weights[i]``: the checkpoint's (normalised) weight.  Per task:
    ``sum_i w_i * mean_m cos(train_i[n], target_i[m])``; the score is the max
    over tasks.  Returns (``[N]`` scores, per-task ``[N]`` scores)."""
    if not (len(train) == len(targets) == len(weights)) or not train:
        raise ValueError("one training matrix, one target mapping and one weight per checkpoint")
    names = list(targets[0])
    if not names:
        raise ValueError("no target task")
    per_task: dict[str, Tensor] = {}
    for name in names:
        total = torch.zeros(train[0].shape[0], dtype=torch.float64)
        for grads, target, weight in zip(train, targets, weights):
            total += float(weight) * cosine_matrix(grads, target[name]).mean(dim=1)
        per_task[name] = total
    return torch.stack([per_task[n] for n in names]).max(dim=0).values, per_task


# --------------------------------------------------------------------------- options


def resolve_options(options: Mapping[str, Any] | None, method: str = "less") -> dict[str, Any]:
    """The options over :data:`LESS_DEFAULTS`, each checked (``ValueError`` naming it)."""
    from baselines._common import check_options

    opts = check_options(method, options, {"double_prune": False, **LESS_DEFAULTS})
    for key in ("target_per_task", "warmup_epochs", "batch_size", "micro_batch_size", "lora_rank", "proj_dim",
                "max_length"):
        check_positive_int(method, key, opts[key])
    if isinstance(opts["seed"], bool) or not isinstance(opts["seed"], int):
        raise ValueError(f"option 'seed' of method {method!r} must be an integer, got {opts['seed']!r}")
    check_fraction(method, "warmup_fraction", opts["warmup_fraction"], low_open=True)
    check_fraction(method, "holdout", opts["holdout"], low_open=True, high=0.5)
    check_fraction(method, "warmup_ratio", opts["warmup_ratio"], high=0.5)
    check_fraction(method, "lora_dropout", opts["lora_dropout"], high=0.9)
    for key in ("lr", "lora_alpha", "weight_decay"):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (key != "weight_decay" and value == 0):
            raise ValueError(f"option {key!r} of method {method!r} must be a positive number, got {value!r}")
    target_mods = opts["lora_target"]
    if not (isinstance(target_mods, str) or (isinstance(target_mods, list) and target_mods
                                             and all(isinstance(t, str) for t in target_mods))):
        raise ValueError(f"option 'lora_target' of method {method!r} must be a module name pattern or a list of "
                         f"module names, got {target_mods!r}")
    target = opts["target"]
    ok = (target == "eval" or (isinstance(target, list) and target and all(isinstance(t, str) for t in target))
          or (isinstance(target, Mapping) and target and all(isinstance(k, str) and isinstance(v, str)
                                                             for k, v in target.items())))
    if not ok:
        raise ValueError(f"option 'target' of method {method!r} must be 'eval', a non-empty list of eval task names "
                         f"(or '{HELDOUT}'), or a non-empty mapping of name: Alpaca file, got {target!r}")
    return opts


def warmup_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved options the warm-up reads."""
    opts = resolve_options(options)
    return {key: opts[key] for key in WARMUP_KEYS}


def warmup_key(options: Mapping[str, Any]) -> str:
    """A short hash of :func:`warmup_options`: the warm-up folder's name, shared
    by every variant that trains the same warm-up."""
    text = json.dumps(warmup_options(options), sort_keys=True)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=6).hexdigest()


def check_target(options: Mapping[str, Any], eval_tasks: Sequence[str], key: str) -> None:
    """DAG-build check of option ``target`` (``key``: where the options sit in
    the config, e.g. ``method_options.less``); ``ValueError`` naming the key."""
    from qtbench.data.sources import load_sft_records

    target = options.get("target", LESS_DEFAULTS["target"])
    if isinstance(target, list):
        for i, name in enumerate(target):
            if name != HELDOUT and name not in eval_tasks:
                raise ValueError(f"config key '{key}.target[{i}]': target set {name!r} is not in the config "
                                 f"(eval.tasks: {', '.join(eval_tasks) or '(none)'}; or {HELDOUT!r})")
    elif isinstance(target, Mapping):
        for name, path in target.items():
            where = f"config key '{key}.target.{name}'"
            if not Path(path).is_file():
                raise ValueError(f"{where}: target file {path} does not exist (relative to the working directory "
                                 f"{Path.cwd()})" if not Path(path).is_absolute() else
                                 f"{where}: target file {path} does not exist")
            try:
                load_sft_records(str(path))
            except Exception as exc:  # unreadable: bad JSON, no usable record, no permission
                raise ValueError(f"{where}: target file {path} is unreadable: {exc}") from None


# --------------------------------------------------------------------------- the pruner


@register_sample_pruner("less")
class Less(EpochLevelSamplePruner):
    """Static top-``r_s`` by LESS's influence score (NaN: held out, never kept)."""

    static = True
    option_defaults = {**EpochLevelSamplePruner.option_defaults, **LESS_DEFAULTS}

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        return resolve_options(options)

    @classmethod
    def check_config(cls, options: Mapping[str, Any], config: Mapping[str, Any], key: str) -> None:
        """Called at DAG build (``qtbench.preflight``): options and target set."""
        try:
            opts = resolve_options(options)
        except ValueError as exc:
            raise ValueError(f"config key {key!r}: {exc}") from None
        check_target(opts, [t["name"] for t in config["eval"]["tasks"]], key)

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__(budget, options, seed)
        self.options = resolve_options(self.options, self.name)

    def plan_epoch(self, epoch: int, num_epochs: int, data: DatasetInfo) -> EpochPlan:
        scores = require_static_scores(self.name, data)
        n = len(data)
        eligible = [i for i in range(n) if math.isfinite(scores[i])]
        k = min(epoch_keep_count(n, self.budget.sample_ratio), len(eligible))
        kept = sorted(eligible[j] for j in keep_by_score([scores[i] for i in eligible], k, largest=True))
        return EpochPlan(kept, {}, {"epoch_total": n, "epoch_kept": len(kept), "held_out": n - len(eligible)})


# --------------------------------------------------------------------------- examples and gradients


def _tokenize_pairs(pairs: Sequence[tuple[str, str]], tokenizer: Any, max_length: int) -> list[Any]:
    from qtbench.data.batches import tokenize_example

    return [tokenize_example(p, r, tokenizer, max_length) for p, r in pairs]


def _record_pairs(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    from qtbench.data.template import format_prompt

    return [format_prompt(dict(r)) for r in records]


def _lora_model(model: Any, opts: Mapping[str, Any]) -> Any:
    from qtbench.train.loop import add_lora

    target = opts["lora_target"]
    return add_lora(model, {"rank": opts["lora_rank"], "alpha": opts["lora_alpha"], "dropout": opts["lora_dropout"],
                            "target": target})


def _trainable(model: Any) -> list[tuple[str, Tensor]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def _sample_gradient(model: Any, example: Any, params: Sequence[Tensor]) -> Tensor:
    """The flat gradient of one sample's mean response-token loss."""
    device = params[0].device
    ids = torch.tensor([example.input_ids], device=device)
    labels = torch.tensor([example.labels], device=device)
    if not any(label != -100 for label in example.labels[1:]):
        return torch.zeros(sum(p.numel() for p in params))
    loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float().cpu()
                      for g, p in zip(grads, params)])


def projected_gradients(model: Any, examples: Sequence[Any], params: Sequence[Tensor], projector: RademacherProjector,
                        moments: tuple[Tensor, Tensor] | None = None, chunk: int = 32) -> Tensor:
    """``[len(examples), d]``: each example's projected gradient, or its Adam
    direction when ``moments`` (flat ``exp_avg``, ``exp_avg_sq``) are given."""
    out, buffer = [], []
    for example in examples:
        grad = _sample_gradient(model, example, params)
        buffer.append(adam_direction(grad, *moments) if moments is not None else grad)
        if len(buffer) == chunk:
            out.append(projector.project(torch.stack(buffer)))
            buffer = []
    if buffer:
        out.append(projector.project(torch.stack(buffer)))
    return torch.cat(out) if out else torch.zeros(0, projector.dim_out)


# --------------------------------------------------------------------------- targets


def _split_docs(task: Any) -> tuple[str | None, list[dict]]:
    """(split, docs) of a task's few-shot split, else its validation split when
    that is not the split evaluated; (None, []) when it has neither."""
    cfg = task.config
    evaluated = cfg.test_split or cfg.validation_split
    for split in (getattr(cfg, "fewshot_split", None), cfg.validation_split):
        if split and split != evaluated:
            docs = task.fewshot_docs() if split == getattr(cfg, "fewshot_split", None) else task.validation_docs()
            return split, list(docs) if docs is not None else []
    return None, []


def _doc_pair(task: Any, doc: Mapping[str, Any]) -> tuple[str, str]:
    """(prompt, response) of a task document, as lm-eval scores its gold answer."""
    prompt = task.doc_to_text(doc)
    target = task.doc_to_target(doc)
    if task.OUTPUT_TYPE == "multiple_choice" or getattr(task.config, "output_type", "") == "multiple_choice":
        choices = task.doc_to_choice(doc)
        answer = choices[target] if isinstance(target, int) else target
    else:
        answer = target[0] if isinstance(target, list) else target
    delimiter = getattr(task.config, "target_delimiter", " ")
    return str(prompt), f"{delimiter}{answer}"


def eval_task_targets(names: Sequence[str], tasks_dir: str | None, per_task: int, seed: int
                      ) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """Each named lm-eval task's few-shot/dev examples (``per_task``, seeded);
    also the names of the tasks that have no such split."""
    from lm_eval.tasks import get_task_dict

    from qtbench.evaluate import task_manager, usable_include_path

    out: dict[str, list[tuple[str, str]]] = {}
    without: list[str] = []
    with usable_include_path(tasks_dir) as include:
        tasks = get_task_dict(list(names), task_manager(include, list(names)))
        for name in names:
            task = tasks.get(name)
            split, docs = _split_docs(task) if task is not None and hasattr(task, "config") else (None, [])
            if not docs:
                without.append(name)
                continue
            gen = make_generator(seed, "less_target", name)
            order = torch.randperm(len(docs), generator=gen)[:per_task].tolist()
            out[name] = [_doc_pair(task, docs[i]) for i in sorted(order)]
    return out, without


def resolve_targets(records: Sequence[Mapping[str, Any]], opts: Mapping[str, Any], inputs: Mapping[str, Any]
                    ) -> tuple[dict[str, list[tuple[str, str]]], list[int]]:
    """The target sets (name -> (prompt, response) pairs) and the indices of the
    records held out as target ``heldout`` (empty when none is)."""
    from qtbench.data.sources import load_sft_records

    target = opts["target"]
    eval_names = list(inputs.get("eval_tasks") or [])
    sets: dict[str, list[tuple[str, str]]] = {}
    want_heldout = False
    if isinstance(target, Mapping):
        for name, path in target.items():
            sets[name] = _record_pairs(load_sft_records(str(path))[0])
    else:
        names = eval_names if target == "eval" else [t for t in target if t != HELDOUT]
        want_heldout = target != "eval" and HELDOUT in target
        if names:
            found, without = eval_task_targets(names, inputs.get("tasks_dir"), int(opts["target_per_task"]),
                                               int(opts["seed"]))
            sets.update(found)
            want_heldout = want_heldout or bool(without)
            if without:
                print(f"less: no few-shot/dev split in {without}: those are covered by target {HELDOUT!r}", file=sys.stderr)
        else:
            want_heldout = True
    held: list[int] = []
    if want_heldout:
        n = len(records)
        k = min(n - 1, max(1, int(round(n * float(opts["holdout"])))))
        gen = make_generator(int(opts["seed"]), "less_holdout", n)
        held = sorted(torch.randperm(n, generator=gen)[:k].tolist())
        sets[HELDOUT] = _record_pairs([records[i] for i in held])
    return sets, held


# --------------------------------------------------------------------------- scoring


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def static_scores(records: list[dict], model: Any, tokenizer: Any, options: Mapping[str, Any],
                  inputs: Mapping[str, Any] | None = None) -> list[float]:
    """LESS's influence score of every record (NaN for held-out target records).

    ``inputs["warmup"]``: the ``less_warmup`` rule's folder; ``inputs["eval_tasks"]``
    and ``inputs["tasks_dir"]``: the config's eval tasks (for ``target: eval``)."""
    from qtbench.adapters import load_trainable_state

    opts = resolve_options(options)
    inputs = dict(inputs or {})
    if not inputs.get("warmup"):
        raise ValueError("less: the scoring call needs inputs['warmup'], the less_warmup rule's folder")
    folder = Path(inputs["warmup"])
    meta = json.loads((folder / WARMUP_META).read_text(encoding="utf-8"))
    if meta["n_records"] != len(records):
        raise ValueError(f"less: warm-up {folder} was trained on a data set of {meta['n_records']} records, "
                         f"scoring {len(records)}")
    sets, held = resolve_targets(records, opts, inputs)
    model = _lora_model(model, meta["options"]).eval()
    named = _trainable(model)
    names, params = [n for n, _ in named], [p for _, p in named]
    if names != meta["trainable"]:
        raise ValueError(f"less: the warm-up's adapters {meta['trainable'][:3]}... do not match the model's {names[:3]}...")
    projector = RademacherProjector(sum(p.numel() for p in params), int(opts["proj_dim"]), int(opts["seed"]))
    max_length = int(meta["options"]["max_length"])
    train_examples = _tokenize_pairs(_record_pairs(records), tokenizer, max_length)
    target_examples = {name: _tokenize_pairs(pairs, tokenizer, max_length) for name, pairs in sets.items()}
    train_grads, target_grads = [], []
    for epoch in meta["epochs"]:
        ckpt = folder / epoch["dir"]
        load_trainable_state(model, _load_safetensors(ckpt / "adapter.safetensors"))
        moments = _load_safetensors(ckpt / "moments.safetensors")
        flat = tuple(torch.cat([moments[f"{n}.{kind}"].reshape(-1).float() for n in names])
                     for kind in ("exp_avg", "exp_avg_sq"))
        train_grads.append(projected_gradients(model, train_examples, params, projector, flat))
        target_grads.append({name: projected_gradients(model, ex, params, projector)
                             for name, ex in target_examples.items()})
    scores, per_task = influence_scores(train_grads, target_grads, checkpoint_weights([e["mean_lr"] for e in meta["epochs"]]))
    out = [float(s) for s in scores]
    for i in held:
        out[i] = float("nan")
    print(json.dumps({"targets": {k: len(v) for k, v in sets.items()}, "held_out": len(held),
                      "checkpoints": len(meta["epochs"])}), file=sys.stderr)
    return out


# --------------------------------------------------------------------------- the warm-up (rule less_warmup)


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """transformers' ``linear`` schedule multiplier (LESS's ``--lr_scheduler_type linear``)."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def _batch_loss(model: Any, examples: Sequence[Any], pad_id: int) -> Tensor:
    """Sum over the examples of each one's mean response-token loss."""
    from qtbench.data.batches import collate, next_token_labels

    batch = collate(examples, pad_id)
    device = next(model.parameters()).device
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    labels = next_token_labels(batch["labels"]).to(device)
    nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    mask = (labels != -100).float()
    return (nll.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).sum()


def warmup(base_model: str, data: str, out: str | Path, options: Mapping[str, Any],
           model_entry: Mapping[str, Any] | None = None, data_cfg: Mapping[str, Any] | None = None,
           threads: int | None = None) -> dict[str, Any]:
    """LESS's warm-up: LoRA on a seeded ``warmup_fraction`` of the records for
    ``warmup_epochs``, AdamW, linear schedule; after every epoch the adapters,
    the Adam moments and the epoch's mean learning rate go to ``out/epoch<i>/``."""
    from safetensors.torch import save_file

    from qtbench.adapters import trainable_state
    from qtbench.data.sources import load_configured_records
    from qtbench.io import atomic_directory, write_json_atomic
    from qtbench.models import load_model, load_tokenizer

    if threads:
        torch.set_num_threads(int(threads))
    opts = warmup_options(options)
    records, _ = load_configured_records(data, data_cfg)
    n = len(records)
    k = min(n, max(1, int(round(n * float(opts["warmup_fraction"])))))
    subset = sorted(torch.randperm(n, generator=make_generator(opts["seed"], "less_warmup_subset", n))[:k].tolist())
    torch.manual_seed(opts["seed"])
    tokenizer = load_tokenizer(base_model, model_entry)
    model = _lora_model(load_model(base_model, model_entry), opts).train()
    named = _trainable(model)
    examples = _tokenize_pairs(_record_pairs([records[i] for i in subset]), tokenizer, int(opts["max_length"]))
    optimizer = torch.optim.AdamW([p for _, p in named], lr=float(opts["lr"]), betas=ADAM_BETAS, eps=ADAM_EPS,
                                  weight_decay=float(opts["weight_decay"]))
    batch, micro = int(opts["batch_size"]), int(opts["micro_batch_size"])
    steps_per_epoch = math.ceil(k / batch)
    total = steps_per_epoch * int(opts["warmup_epochs"])
    warm = math.ceil(float(opts["warmup_ratio"]) * total)
    step, epochs = 0, []
    with atomic_directory(out) as tmp:
        for epoch in range(int(opts["warmup_epochs"])):
            order = torch.randperm(k, generator=make_generator(opts["seed"], "less_warmup_order", epoch)).tolist()
            lrs, losses = [], []
            for start in range(0, k, batch):
                rows = order[start:start + batch]
                lr = float(opts["lr"]) * linear_schedule(step, total, warm)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                loss_sum = 0.0
                for m in range(0, len(rows), micro):
                    loss = _batch_loss(model, [examples[i] for i in rows[m:m + micro]], tokenizer.pad_token_id) / len(rows)
                    loss.backward()
                    loss_sum += float(loss.detach())
                optimizer.step()
                lrs.append(lr)
                losses.append(loss_sum)
                step += 1
            folder = tmp / f"epoch{epoch + 1}"
            folder.mkdir()
            save_file(trainable_state(model), str(folder / "adapter.safetensors"))
            moments = {}
            for name, param in named:
                state = optimizer.state[param]
                moments[f"{name}.exp_avg"] = state["exp_avg"].detach().float().contiguous().cpu()
                moments[f"{name}.exp_avg_sq"] = state["exp_avg_sq"].detach().float().contiguous().cpu()
            save_file(moments, str(folder / "moments.safetensors"))
            epochs.append({"dir": folder.name, "mean_lr": sum(lrs) / len(lrs), "steps": len(lrs),
                           "mean_loss": sum(losses) / len(losses)})
        meta = {"method": "less", "base_model": str(base_model), "data": str(data), "n_records": n,
                "subset": subset, "options": opts, "trainable": [name for name, _ in named], "epochs": epochs}
        write_json_atomic(tmp / WARMUP_META, meta)
    return meta


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m baselines.less warmup ...``: the ``less_warmup`` rule's command."""
    parser = argparse.ArgumentParser(prog="python -m baselines.less")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("warmup", help="LESS's LoRA warm-up on a random slice of the data")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--options", type=json.loads, default={})
    p.add_argument("--model-entry", type=json.loads, default={})
    p.add_argument("--data-config", type=json.loads, default={})
    p.add_argument("--threads", type=int)
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    meta = warmup(args.model, args.data, args.out, args.options, args.model_entry, args.data_config, args.threads)
    print(json.dumps({k: meta[k] for k in ("n_records", "epochs")}, indent=2))


if __name__ == "__main__":
    main()
