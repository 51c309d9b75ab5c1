"""Bad input costs a clear message, never a day (issue 7, items 3-5).

Table-driven: every case either fails early with the file, record or key
named, or is skipped and reported; no failed step leaves partial output
behind.  Safe loading (remote code, pickles, run ids as paths) and the W&B
outage budget are checked at the end.  (Config-file validation has its own
table in ``test_config.py``; data-adapter details are in ``data/test_sources.py``.)
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qtbench.train.loop as train_mod
from qtbench import cli
from qtbench.config import ConfigError, REPO_ROOT, run_id, validate_config
from qtbench.data.template import format_prompt
from qtbench.evaluate import TaskNotFound, evaluate
from qtbench.io import read_json
from qtbench.models import load_tokenizer
from qtbench.data.sources import DataError
from qtbench.train.loop import train
from tests.conftest import make_records
from tests.train.test_determinism import EVAL_CFG, write_task
from tests.train.test_loop import run_config

GOOD = {"instruction": "what is 1 plus 2 ?", "input": "", "output": "the answer is 3 . #### 3"}


def jsonl(rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


@pytest.fixture()
def ctx(tiny_model_dir, tmp_path):
    """Paths of one training attempt, and helpers to build broken inputs."""
    data = tmp_path / "sft.jsonl"
    data.write_text(jsonl(make_records(8)))
    return SimpleNamespace(tmp=tmp_path, model=tiny_model_dir, data=data, out=tmp_path / "runs" / "checkpoint",
                           state=tmp_path / "runs" / "state", cfg=run_config(max_steps=2))


def model_copy(ctx, keep) -> Path:
    """A copy of the tiny model folder with only the files ``keep`` accepts."""
    folder = ctx.tmp / "broken_model"
    folder.mkdir()
    for item in ctx.model.iterdir():
        if keep(item.name):
            shutil.copy(item, folder / item.name)
    return folder


def pickled_weights_only(ctx) -> Path:
    folder = model_copy(ctx, lambda name: not name.endswith(".safetensors"))
    from safetensors.torch import load_file

    torch.save(load_file(ctx.model / "model.safetensors"), folder / "pytorch_model.bin")
    return folder


def set_cfg(ctx, **run):
    ctx.cfg["run"].update(run)


def set_data(ctx, text: str, name: str = "sft.jsonl"):
    ctx.data = ctx.tmp / name
    ctx.data.write_text(text)


# Each case: (id, arrange(ctx) -> a dict of extra train() kwargs or anything else, exception, regex).
# The regex the message must match names the culprit: the method, key, file, record or folder.
FAIL_EARLY = [
    ("unknown method", lambda c: set_cfg(c, method="nope"), ValueError,
     r"unknown method 'nope'; registered methods: full, q_tuning, .*infobatch.*random"),
    ("unknown token pruner in a pair", lambda c: set_cfg(c, method="infobatch+nope"), ValueError,
     r"unknown token pruner 'nope' in method 'infobatch\+nope'; registered token pruners: .*ppl"),
    ("unknown method option", lambda c: c.cfg.update(method_options={"random": {"mod": "epoch"}}) or
     set_cfg(c, method="random", r_s="0.5"), ValueError, r"unknown option 'mod' for method 'random'"),
    ("r_s above 1", lambda c: set_cfg(c, r_s="1.5"), ValueError, r"sample_ratio must lie in \(0, 1\], got 1\.5"),
    ("r_t zero", lambda c: set_cfg(c, r_t="0"), ValueError, r"token_ratio must lie in \(0, 1\], got 0\.0"),
    ("r_s negative", lambda c: set_cfg(c, r_s="-0.25"), ValueError, r"sample_ratio must lie in \(0, 1\]"),
    ("missing data file", lambda c: setattr(c, "data", c.tmp / "nowhere.jsonl"), DataError,
     r"data file .*nowhere\.jsonl does not exist"),
    ("malformed JSONL line", lambda c: set_data(c, jsonl([GOOD, GOOD, '{"instruction": "x", "out']), "bad.jsonl"),
     DataError, r"bad\.jsonl: line 3 is not valid JSON"),
    ("truncated JSON array", lambda c: set_data(c, json.dumps([GOOD, GOOD])[:-9], "cut.json"), DataError,
     r"cut\.json: not valid JSON"),
    ("JSON object without records", lambda c: set_data(c, json.dumps({"rows": [GOOD]}), "obj.json"), DataError,
     r"obj\.json: a JSON object without a list of records"),
    ("not UTF-8", lambda c: c.data.write_bytes(b'{"instruction": "\xff\xfe"}\n'), DataError, r"sft\.jsonl: not UTF-8"),
    ("bad record with on_bad_record: fail",
     lambda c: (set_data(c, jsonl([GOOD, {"instruction": "no output"}, GOOD])),
                c.cfg["data"].update(on_bad_record="fail")), DataError,
     r"sft\.jsonl: 1 bad record\(s\) \(record 1: missing field 'output'\)"),
    ("empty after filtering", lambda c: set_data(c, jsonl([{"instruction": "a", "output": " "}, {"output": "b"},
                                                          {"instruction": 3, "output": "c"}])), DataError,
     r"sft\.jsonl: no usable records \(3 bad of 3\)"),
    ("empty data file", lambda c: set_data(c, ""), DataError, r"sft\.jsonl: no usable records \(0 bad of 0\)"),
    ("model folder without weights", lambda c: {"base_model": model_copy(c, lambda n: not n.endswith(".safetensors"))},
     FileNotFoundError, r"model folder .*broken_model has no \*\.safetensors weights"),
    ("pickled weights only", lambda c: {"base_model": pickled_weights_only(c)}, FileNotFoundError,
     r"model folder .*broken_model has no \*\.safetensors weights \(found: .*pytorch_model\.bin"),
    ("model folder missing", lambda c: {"base_model": c.tmp / "models" / "tiny" / "base"}, FileNotFoundError,
     r"model folder .*models/tiny/base does not exist"),
    ("reference model without weights",
     lambda c: {"reference_model": model_copy(c, lambda n: n == "config.json")}, FileNotFoundError,
     r"model folder .*broken_model has no \*\.safetensors"),
    ("trust_remote_code not a boolean", lambda c: c.cfg["model"].update(trust_remote_code="false"), ValueError,
     r"models\.tiny\.trust_remote_code must be true or false, got 'false'"),
    ("static scores truncated JSON", lambda c: {"static_scores": (c.tmp / "scores.json", (c.tmp / "scores.json")
                                                .write_text('{"scores": [0.1, 0.2'))[0]}, ValueError,
     r"scores\.json is not valid JSON \(truncated or corrupt\?\)"),
    ("static scores for other data", lambda c: {"static_scores": (c.tmp / "scores.json", (c.tmp / "scores.json")
                                                .write_text('{"scores": [0.1, 0.2]}'))[0]}, ValueError,
     r"scores\.json: 2 scores for 8 records"),
]


@pytest.mark.parametrize("arrange, error, message", [c[1:] for c in FAIL_EARLY], ids=[c[0] for c in FAIL_EARLY])
def test_train_fails_early_naming_the_culprit(ctx, arrange, error, message):
    extra = arrange(ctx)
    kwargs = {"base_model": ctx.model, **(extra if isinstance(extra, dict) else {})}
    kwargs = {k: (str(v) if k in ("base_model", "reference_model") else v) for k, v in kwargs.items()}
    base = kwargs.pop("base_model")
    with pytest.raises(error, match=message):
        train(ctx.cfg, ctx.out, base, str(ctx.data), state_dir=ctx.state, progress=False, **kwargs)
    # nothing written at all: no checkpoint folder, no half-built .tmp, no state
    assert not ctx.out.exists() and not ctx.out.with_name("checkpoint.tmp").exists()
    assert not ctx.state.exists()


def test_cli_reports_bad_input_as_an_error_line(ctx, capsys):
    cfg_file = ctx.tmp / "run.json"
    set_cfg(ctx, method="nope")
    cfg_file.write_text(json.dumps(ctx.cfg))
    code = cli.main(["train", "--run-config", f"@{cfg_file}", "--base-model", str(ctx.model), "--data", str(ctx.data),
                     "--out", str(ctx.out), "--no-progress"])
    assert code == 2
    assert re.search(r"qtbench train: error: unknown method 'nope'; registered methods: full", capsys.readouterr().err)
    assert not ctx.out.exists()


def test_cli_missing_run_config_file_is_an_error_line(ctx, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--run-config", f"@{ctx.tmp / 'missing.json'}", "--base-model", str(ctx.model),
                  "--data", str(ctx.data), "--out", str(ctx.out)])
    assert exit_.value.code == 2 and "missing.json does not exist" in capsys.readouterr().err


def test_nan_budget_names_the_key():
    cfg = {"experiment": "t", "models": {"tiny": {"path": "world"}}, "methods": ["full"], "seeds": [0],
           "budgets": [{"r_s": float("nan"), "r_t": 0.5}], "eval": {"tasks": [{"name": "world_arc_easy"}]}}
    with pytest.raises(ConfigError, match=r"budgets\[0\]\.r_s"):
        validate_config(cfg)


# --------------------------------------------------------------------------- skipped and reported


def test_bad_records_are_skipped_and_reported(ctx):
    rows = [GOOD, {"instruction": "no output"}, {"instruction": "", "output": "x"},
            {"instruction": ["a"], "output": "x"}, {"instruction": "q", "output": 7}, json.dumps("a string"), GOOD,
            {"instruction": "q", "input": None, "output": "ok"}]
    set_data(ctx, jsonl(rows))
    summary = train(ctx.cfg, ctx.out, str(ctx.model), str(ctx.data), state_dir=ctx.state, progress=False)
    report = json.loads((ctx.out / "data_report.json").read_text())
    reasons = {r["index"]: r["reason"] for r in report["bad_records"]}
    assert sorted(reasons) == [1, 2, 3, 4, 5]
    assert "missing field 'output'" in reasons[1] and "empty instruction" in reasons[2]
    assert "field 'instruction' is list" in reasons[3] and "field 'output' is int" in reasons[4]
    assert "record is str" in reasons[5]
    assert (report["total"], report["kept"], report["bad"]) == (8, 3, 5)
    assert summary["bad_records"] == 5 and summary["n_records"] == 3


def test_over_long_records_are_truncated_and_counted(ctx):
    records = make_records(24)
    tokenizer = load_tokenizer(str(ctx.model))
    lengths = []
    for record in records:  # the full length: BOS + prompt + response + EOS
        prompt, response = format_prompt(record)
        lengths.append(2 + len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
                       + len(tokenizer(response, add_special_tokens=False)["input_ids"]))
    max_length = sorted(lengths)[len(lengths) // 2]
    expected = sum(n > max_length for n in lengths)
    assert 0 < expected < len(records)
    set_data(ctx, jsonl(records))
    cfg = run_config(max_length=max_length)
    summary = train(cfg, ctx.out, str(ctx.model), str(ctx.data), state_dir=ctx.state, progress=False)
    assert summary["truncated_records"] == expected
    assert summary["n_records"] == len(records)  # truncated, not dropped
    assert summary["input_tokens_seen"] == sum(min(n, max_length) for n in lengths)


# --------------------------------------------------------------------------- no partial output


def test_failure_mid_training_leaves_only_the_state_folder(ctx, monkeypatch):
    real = train_mod.train_window
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_window", failing)
    set_data(ctx, jsonl(make_records(24)))
    with pytest.raises(RuntimeError, match="simulated"):
        train(run_config(checkpoint_every=2), ctx.out, str(ctx.model), str(ctx.data), state_dir=ctx.state,
              progress=False)
    assert not ctx.out.exists() and not ctx.out.with_name("checkpoint.tmp").exists()
    assert (ctx.state / "checkpoint" / "checkpoint.json").exists() and (ctx.state / "trace.jsonl").exists()


def test_failure_while_writing_the_output_leaves_no_output(ctx, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_mod, "write_json_atomic", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train(ctx.cfg, ctx.out, str(ctx.model), str(ctx.data), state_dir=ctx.state, progress=False)
    assert not ctx.out.exists() and not ctx.out.with_name("checkpoint.tmp").exists()
    assert ctx.state.exists()  # the trace (and any checkpoint) stay for the rerun


# --------------------------------------------------------------------------- evaluation and results


EVAL_FAILURES = [
    ("task that does not exist", lambda c: ({**EVAL_CFG, "tasks": [{"name": "world_no_such_task"}]}, c.model),
     TaskNotFound, r"lm-eval task\(s\) \['world_no_such_task'\] not found"),
    ("model path without weights", lambda c: (EVAL_CFG, model_copy(c, lambda n: not n.endswith(".safetensors"))),
     FileNotFoundError, r"model folder .*broken_model has no \*\.safetensors weights"),
    ("task data missing (fails inside lm-eval)",
     lambda c: ((c.tasks / "mc.jsonl").unlink(), EVAL_CFG)[1:] + (c.model,), FileNotFoundError,
     r"Unable to find '.*tasks/mc\.jsonl'"),
]


@pytest.mark.parametrize("arrange, error, message", [c[1:] for c in EVAL_FAILURES], ids=[c[0] for c in EVAL_FAILURES])
def test_evaluate_failure_leaves_no_results_file(ctx, arrange, error, message):
    ctx.tasks = write_task(ctx.tmp / "tasks")
    eval_cfg, model = arrange(ctx)
    results = ctx.tmp / "evals" / "run.json"
    with pytest.raises(error, match=message):
        evaluate(str(model), eval_cfg, results, tasks_dir=ctx.tasks)
    assert not results.parent.exists() or list(results.parent.iterdir()) == []


def test_truncated_results_file_is_named(tmp_path):
    from qtbench.report.aggregate import aggregate

    good = tmp_path / "a.json"
    good.write_text(json.dumps({"meta": {"run_id": "tiny/full/s1-t1/seed0"}, "scores": {}}))
    cut = tmp_path / "b.json"
    cut.write_text(good.read_text()[:-7])
    with pytest.raises(ValueError, match=r"b\.json is not valid JSON \(truncated or corrupt\?\)"):
        read_json(cut)
    empty = tmp_path / "c.json"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"c\.json is not valid JSON"):
        read_json(empty)
    with pytest.raises(FileNotFoundError, match=r"d\.json does not exist"):
        read_json(tmp_path / "d.json")
    with pytest.raises(ValueError, match=r"b\.json is not valid JSON"):
        aggregate([good, cut], [{"name": "world_arc_easy"}], tmp_path / "tables")
    assert not (tmp_path / "tables").exists()


# --------------------------------------------------------------------------- safe loading


def test_remote_code_only_when_the_config_says_so_and_weights_as_safetensors(tiny_model_dir, monkeypatch):
    import transformers

    from qtbench import models

    calls = []

    def fake(kind):
        def from_pretrained(path, **kwargs):
            calls.append((kind, kwargs))
            raise RuntimeError("stop")

        return from_pretrained

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake("model"))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake("tokenizer"))
    for entry, expected in [({}, False), ({"trust_remote_code": False}, False), ({"trust_remote_code": None}, False),
                            ({"trust_remote_code": True}, True)]:
        calls.clear()
        for load in (models.load_model, models.load_tokenizer):
            with pytest.raises(RuntimeError, match="stop"):
                load(str(tiny_model_dir), entry)
        assert [kw["trust_remote_code"] for _, kw in calls] == [expected, expected]
        assert calls[0][1]["use_safetensors"] is True
    for value in ("false", "yes", 1):
        with pytest.raises(ValueError, match="trust_remote_code must be true or false"):
            models.load_model(str(tiny_model_dir), {"name": "m", "trust_remote_code": value})


def _torch_load_calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = ast.unparse(func)
            if name in ("torch.load", "load") and (name == "torch.load" or _imported_from_torch(tree)):
                yield node


def _imported_from_torch(tree) -> bool:
    return any(isinstance(n, ast.ImportFrom) and n.module == "torch" and any(a.name == "load" for a in n.names)
               for n in ast.walk(tree))


def test_every_torch_load_is_weights_only():
    folders = ("qtbench", "baselines", "workflow", "tests")
    sources = [p for folder in folders for p in (REPO_ROOT / folder).rglob("*.py")]
    sources += list((REPO_ROOT / "workflow").rglob("*.smk")) + [REPO_ROOT / "Snakefile"]
    assert any(p.name == "checkpoint.py" and p.parent.name == "train" for p in sources)
    unsafe = []
    for path in sources:
        if not path.exists():
            continue
        if path.suffix == ".py":
            for call in _torch_load_calls(path):
                flags = {k.arg: k.value for k in call.keywords}
                if not (isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True):
                    unsafe.append(f"{path.relative_to(REPO_ROOT)}:{call.lineno}")
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"weights_only\s*=\s*False|allow_pickle\s*=\s*True|pickle\.loads?\(", text):
            line = text[: match.start()].count("\n") + 1
            if path.name != "test_bad_input.py":
                unsafe.append(f"{path.relative_to(REPO_ROOT)}:{line}: {match.group(0)}")
    assert unsafe == []


RUN_ID_PARTS = {
    "model": ["../../etc", "..", ".", "/etc", "a/b", "tiny/../../x", "~root", "x\n", "", "-rf"],
    "method": ["../../etc", "full/..", "..", "FULL", "a+b+c", "x y", "q_tuning/../../etc"],
    "budget": ["../../etc", "s1-t1/..", "s1.5-t1", "s0-t1", "s0.50-t1", "s1-t1/x"],
    "seed": ["../../etc", "-1", "0/../x", "1.5", ""],
}
VALID = {"model": "tiny", "method": "infobatch+ppl", "budget": "s0.25-t0.5", "seed": 0}


@pytest.mark.parametrize("part, value", [(p, v) for p, vs in RUN_ID_PARTS.items() for v in vs])
def test_run_id_parts_cannot_become_paths(part, value):
    with pytest.raises(ConfigError, match=f"invalid {part}"):
        run_id(**{**VALID, part: value})


def test_model_name_from_the_config_cannot_escape():
    cfg = {"experiment": "t", "models": {"../../etc": {"path": "world"}}, "methods": ["full"], "seeds": [0],
           "budgets": [{"r_s": 0.5, "r_t": 0.5}], "eval": {"tasks": [{"name": "world_arc_easy"}]}}
    with pytest.raises(ConfigError, match=r"models\.\.\./\.\./etc"):
        validate_config(cfg)


@settings(max_examples=300, deadline=None)
@given(model=st.text(max_size=12), method=st.text(max_size=12), budget=st.text(max_size=12),
       seed=st.one_of(st.integers(-5, 10**6), st.text(max_size=6)))
def test_any_accepted_run_id_stays_inside_the_results_folder(model, method, budget, seed):
    root = Path("/srv/results/exp/runs")
    try:
        rid = run_id(model, method, budget, seed)
    except ConfigError:
        return
    path = (root / rid / "checkpoint").resolve()
    assert path.is_relative_to(root) and len(Path(rid).parts) == 4 and ".." not in Path(rid).parts


# --------------------------------------------------------------------------- W&B outage budget


def test_wandb_online_without_network_costs_seconds_and_falls_back_to_offline(monkeypatch, tmp_path):
    import sys

    from qtbench import tracking

    seen = []

    class Run:
        dir = str(tmp_path / "wandb" / "offline-run-x" / "files")

        def finish(self):
            pass

    def init(**kwargs):
        seen.append(kwargs)
        if kwargs["mode"] == "online":
            raise TimeoutError("no network")
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(init=init, Settings=lambda **k: k))
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.warns(RuntimeWarning, match="wandb sync"):
        tracker = tracking.start_run({"mode": "online"}, name="x", group="g", job_type="train", config={},
                                     directory=tmp_path)
    assert seen[0]["settings"]["init_timeout"] <= 30
    assert [k["mode"] for k in seen] == ["online", "offline"] and tracker.active


def test_evaluation_loads_safely(tiny_model_dir, tmp_path, monkeypatch):
    import lm_eval
    import lm_eval.api.registry

    seen = []

    class FakeLM:
        @classmethod
        def create_from_arg_obj(cls, model_args, additional):
            seen.append(model_args)
            return cls()

    monkeypatch.setattr(lm_eval.api.registry, "get_model", lambda name: FakeLM)
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kwargs: {"results": {}})
    tasks = write_task(tmp_path / "tasks")
    evaluate(str(tiny_model_dir), EVAL_CFG, tmp_path / "r.json", tasks_dir=tasks)
    assert seen[-1]["trust_remote_code"] is False and seen[-1]["use_safetensors"] is True
    evaluate(str(tiny_model_dir), EVAL_CFG, tmp_path / "r.json", tasks_dir=tasks,
             model_entry={"trust_remote_code": True})
    assert seen[-1]["trust_remote_code"] is True
    with pytest.raises(ValueError, match="trust_remote_code must be true or false"):
        evaluate(str(tiny_model_dir), EVAL_CFG, tmp_path / "r.json", tasks_dir=tasks,
                 model_entry={"trust_remote_code": "false"})
