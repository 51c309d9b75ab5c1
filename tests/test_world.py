"""The synthetic world: determinism, planted-problem rates, held-out evaluation,
prompt-format agreement with training, and the five lm-eval tasks."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from qtbench.data.template import format_prompt  # noqa: E402
from qtbench.world import generate  # noqa: E402
from qtbench.world.generate import DEFAULTS, TASKS, build_world, resolve_config  # noqa: E402


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file; YAMLs with the (legitimately different) root path masked."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            data = path.read_bytes()
            if path.suffix == ".yaml":
                data = data.replace(str(root.resolve()).encode(), b"<ROOT>")
            out[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    build_world({"seed": 0}, out)
    return out


@pytest.fixture(scope="module")
def sft(world):
    return _read_jsonl(world / "sft.jsonl"), _read_jsonl(world / "sft_meta.jsonl")


def _prompts(records: list[dict]) -> set[str]:
    return {format_prompt(r)[0] for r in records}


def _eval_prompt(task: str, doc: dict) -> str:
    """The prompt each task YAML renders (checked against lm-eval below)."""
    if task == "world_squad":
        return format_prompt({
            "instruction": generate.READING_INSTRUCTION,
            "input": f"Passage: {doc['passage']}\nQuestion: {doc['question']}",
            "output": "",
        })[0]
    return format_prompt({"instruction": f"Question: {doc['question']}", "input": "", "output": ""})[0]


# --------------------------------------------------------------------------- determinism


def test_same_seed_identical_files_different_seed_differs(tmp_path, world):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    build_world({"seed": 0}, a)
    build_world({"seed": 0}, b)
    build_world({"seed": 1}, c)
    da, db, dc = _digests(a), _digests(b), _digests(c)
    assert da == db
    assert da == _digests(world)
    assert "corpus.txt" in da and "tasks/world_gsm8k.yaml" in da
    for name in ("corpus.txt", "sft.jsonl", "world.json", "tasks/world_squad.jsonl"):
        assert da[name] != dc[name], name


# --------------------------------------------------------------------------- config


def test_unknown_config_key_rejected(tmp_path):
    with pytest.raises(ValueError, match="bogus_key"):
        build_world({"bogus_key": 1}, tmp_path)
    with pytest.raises(ValueError, match="noise.gaussian"):
        resolve_config({"noise": {"gaussian": 0.1}})
    with pytest.raises(ValueError, match="family_weights.poetry"):
        resolve_config({"family_weights": {"poetry": 1.0}})


def test_defaults_fill_nested_keys():
    cfg = resolve_config({"noise": {"random": 0.2}})
    assert cfg["noise"] == {"random": 0.2, "wrong_answer": 0.10, "truncated": 0.05, "refusal": 0.0}
    assert set(cfg) == set(DEFAULTS)


# --------------------------------------------------------------------------- SFT set


def test_records_are_alpaca(sft):
    records, meta = sft
    assert len(records) == DEFAULTS["n_sft"]
    for rec, m in zip(records, meta):
        assert set(rec) == {"instruction", "input", "output"}
        assert all(isinstance(v, str) for v in rec.values())
        assert rec["instruction"].strip()
        assert rec["output"].strip(), (rec, m)


def test_reference_is_clean_alpaca_and_disjoint(world, sft):
    records, _ = sft
    ref = _read_jsonl(world / "reference.jsonl")
    assert len(ref) == DEFAULTS["n_reference"]
    for rec in ref:
        assert set(rec) == {"instruction", "input", "output"} and rec["output"].strip()
    assert not _prompts(ref) & _prompts(records)


def test_meta_aligns_with_sft(sft):
    records, meta = sft
    assert len(meta) == len(records)
    for i, m in enumerate(meta):
        assert set(m) == {"index", "family", "noise", "duplicate_of", "covered"}
        assert m["index"] == i
        assert m["family"] in generate.FAMILIES
        assert m["noise"] in (None, *generate.NOISE_TYPES)
        assert isinstance(m["covered"], bool)
        if m["duplicate_of"] is not None:
            j = m["duplicate_of"]
            assert j != i and meta[j]["duplicate_of"] is None
            assert m["noise"] is None and meta[j]["noise"] is None
            assert m["family"] == meta[j]["family"] == "fact_covered"
            # a near duplicate: same answer, different wording
            assert records[i]["output"] == records[j]["output"]
            assert records[i]["instruction"] != records[j]["instruction"]


def test_families_present(sft):
    _, meta = sft
    families = {m["family"] for m in meta}
    assert families == set(generate.FAMILIES)
    covered = [m["covered"] for m in meta if m["family"] == "fact_covered"]
    uncovered = [m["covered"] for m in meta if m["family"] == "fact_uncovered"]
    assert all(covered) and not any(uncovered)


def test_noise_and_duplicate_rates(sft):
    _, meta = sft
    n = len(meta)
    for kind, rate in DEFAULTS["noise"].items():
        got = sum(m["noise"] == kind for m in meta) / n
        assert abs(got - rate) <= 0.01, (kind, got)
    dup = sum(m["duplicate_of"] is not None for m in meta) / n
    assert abs(dup - DEFAULTS["duplicate_rate"]) <= 0.01
    # noise is spread over families, not concentrated in one
    noisy_families = {m["family"] for m in meta if m["noise"] is not None}
    assert len(noisy_families) >= 4


def test_custom_rates_respected(tmp_path):
    cfg = {"n_sft": 400, "n_reference": 20, "n_eval_per_task": 20, "n_countries": 40, "n_people": 10,
           "noise": {"random": 0.2, "wrong_answer": 0.0, "truncated": 0.1, "refusal": 0.15}, "duplicate_rate": 0.05}
    build_world(cfg, tmp_path)
    meta = _read_jsonl(tmp_path / "sft_meta.jsonl")
    records = _read_jsonl(tmp_path / "sft.jsonl")
    assert len(meta) == 400
    assert sum(m["noise"] == "random" for m in meta) == 80
    assert sum(m["noise"] == "wrong_answer" for m in meta) == 0
    assert sum(m["noise"] == "truncated" for m in meta) == 40
    refusals = [(r, m) for r, m in zip(records, meta) if m["noise"] == "refusal"]
    assert len(refusals) == 60  # round(0.15 * 400)
    # one fixed family of non-answers, whatever the record's task family
    assert {r["output"] for r, _ in refusals} <= set(generate.REFUSALS)
    assert len({m["family"] for _, m in refusals}) >= 3
    assert not any(r["output"] in generate.REFUSALS for r, m in zip(records, meta) if m["noise"] != "refusal")
    assert sum(m["duplicate_of"] is not None for m in meta) == 20
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["eval"] == {t: 20 for t in TASKS}


def _final_equation_ok(output: str) -> bool:
    body = output.split("####")[0].strip().rstrip(".")
    last = body.split(". ")[-1]
    lhs, rhs = last.split("=")
    return eval(lhs) == int(rhs)  # noqa: S307 - digits and +/- only


def test_planted_problems_look_right(world, sft):
    records, meta = sft
    w = json.loads((world / "world.json").read_text())
    capitals = {c["name"]: c["capital"] for c in w["countries"]}
    for rec, m in zip(records, meta):
        if m["family"] == "math" and m["noise"] is None:
            assert re.search(r"#### (\-?[0-9\.\,]+)$", rec["output"]) and _final_equation_ok(rec["output"])
        if m["family"] == "math" and m["noise"] == "wrong_answer":
            assert "#### " in rec["output"] and not _final_equation_ok(rec["output"])
        if m["family"] == "math" and m["noise"] == "truncated":
            assert "#### " not in rec["output"]
        if m["noise"] == "wrong_answer":
            q = rec["instruction"]
            for country, capital in capitals.items():
                if q == f"Question: What is the capital of {country}?":
                    assert rec["output"].rstrip(".") != capital
    # random noise does not look like the clean answers
    clean_facts = [r["output"] for r, m in zip(records, meta) if m["family"] == "fact_covered" and not m["noise"]]
    assert all(o.endswith(".") and len(o.split()) <= 3 for o in clean_facts)
    random_outputs = [r["output"] for r, m in zip(records, meta) if m["noise"] == "random"]
    assert sum(len(o.split()) >= 4 for o in random_outputs) == len(random_outputs)


# --------------------------------------------------------------------------- corpus and held-out eval


def test_corpus_has_no_qa_records(world):
    corpus = (world / "corpus.txt").read_text()
    assert "Question:" not in corpus and "Answer:" not in corpus and "####" not in corpus
    assert " plus " in corpus and "The capital of" in corpus and "\nCapital: " in corpus
    # rhetorical questions in the corpus never use an SFT/eval question wording
    for rel, templates in generate.RHETORICAL_TEMPLATES.items():
        for rhetorical in templates:
            for question in generate.QUESTION_TEMPLATES[rel] + [
                q for r, qs in generate.QUESTION_TEMPLATES.items() if r.endswith(rel) for q in qs
            ]:
                assert question.rstrip("?.").lower() not in rhetorical.lower(), (question, rhetorical)


def test_corpus_covers_only_covered_facts(world):
    corpus = (world / "corpus.txt").read_text()
    w = json.loads((world / "world.json").read_text())
    for c in w["countries"]:
        stated = f"The capital of {c['name']} is {c['capital']}." in corpus or f" {c['capital']}" in corpus
        if c["covered"]["capital"]:
            assert stated
        else:  # the capital name (unique) never occurs: it is unknowable from the corpus
            assert not re.search(rf"\b{c['capital']}\b", corpus), c


def test_eval_items_held_out(world, sft):
    records, _ = sft
    ref = _read_jsonl(world / "reference.jsonl")
    train_prompts = _prompts(records) | _prompts(ref)
    train_text = "\n".join(p for p in train_prompts)
    corpus = (world / "corpus.txt").read_text().lower()
    for task in TASKS:
        docs = _read_jsonl(world / "tasks" / f"{task}.jsonl")
        assert len(docs) == DEFAULTS["n_eval_per_task"]
        prompts = [_eval_prompt(task, d) for d in docs]
        assert len(set(prompts)) == len(prompts), task
        for doc, prompt in zip(docs, prompts):
            assert prompt not in train_prompts, (task, prompt)
            assert prompt.lower() not in corpus
            if task != "world_squad":
                # the question text itself never occurs in training prompts or the corpus
                assert f"Question: {doc['question']}\n" not in train_text + "\n"
                assert doc["question"].lower() not in corpus
            else:
                assert doc["passage"] not in train_text and doc["passage"] not in corpus


def test_eval_docs_are_well_formed(world):
    for task in ("world_arc_easy", "world_arc_challenge"):
        for doc in _read_jsonl(world / "tasks" / f"{task}.jsonl"):
            assert len(doc["choices"]) == 4 == len(set(doc["choices"]))
            assert 0 <= doc["label"] < 4
    for doc in _read_jsonl(world / "tasks" / "world_gsm8k.jsonl"):
        assert re.search(r"#### (\-?[0-9\.\,]+)$", doc["answer"]) and "\n" not in doc["answer"]
    for doc in _read_jsonl(world / "tasks" / "world_squad.jsonl"):
        assert all(a in doc["passage"] for a in doc["answers"])
    for doc in _read_jsonl(world / "tasks" / "world_triviaqa.jsonl"):
        assert doc["answer"] in doc["aliases"]
    # covered and uncovered facts are both asked
    covered = [d["covered"] for d in _read_jsonl(world / "tasks" / "world_arc_easy.jsonl")]
    assert 0.4 < sum(covered) / len(covered) < 0.9


def test_sft_families_share_the_eval_prompt_shape(sft):
    """An SFT record of each family renders like the matching eval prompt."""
    records, meta = sft
    by_family = {}
    for rec, m in zip(records, meta):
        by_family.setdefault(m["family"], rec)
    for family in ("fact_covered", "fact_uncovered", "two_hop", "math"):
        rec = by_family[family]
        assert rec["instruction"].startswith("Question: ") and rec["input"] == ""
    reading = by_family["reading"]
    assert reading["instruction"] == generate.READING_INSTRUCTION
    assert re.fullmatch(r"Passage: [^\n]+\nQuestion: [^\n]+", reading["input"])


# --------------------------------------------------------------------------- lm-eval


def test_tasks_run_through_lm_eval(world):
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(world / "tasks"), include_defaults=False)
    results = lm_eval.simple_evaluate(
        model="dummy", tasks=list(TASKS), task_manager=tm, limit=5, bootstrap_iters=0, log_samples=True,
    )
    res = results["results"]
    expected = {
        "world_arc_easy": ["acc,none", "acc_norm,none"],
        "world_arc_challenge": ["acc,none", "acc_norm,none"],
        "world_gsm8k": ["exact_match,strict-match"],
        "world_squad": ["exact_match,none", "f1,none"],
        "world_triviaqa": ["exact_match,remove_whitespace"],
    }
    for task, keys in expected.items():
        for key in keys:
            assert key in res[task], (task, key, res[task])
            assert 0.0 <= float(res[task][key]) <= 1.0
    for task in TASKS:
        assert results["configs"][task]["metadata"]["version"] == 1.0
    # lm-eval renders exactly the training prompt; choices/targets get one leading space
    for task in TASKS:
        docs = _read_jsonl(world / "tasks" / f"{task}.jsonl")
        for sample in results["samples"][task]:
            doc = docs[sample["doc_id"]]
            context = sample["arguments"][0][0]
            assert context == _eval_prompt(task, doc), task
    arc = results["samples"]["world_arc_easy"][0]
    doc = _read_jsonl(world / "tasks" / "world_arc_easy.jsonl")[arc["doc_id"]]
    assert [a[1] for a in arc["arguments"]] == [" " + c for c in doc["choices"]]
    gen_kwargs = results["samples"]["world_gsm8k"][0]["arguments"][0][1]
    assert gen_kwargs["until"] == ["\n"] and gen_kwargs["max_gen_toks"] == 48


def test_world_tag_selects_all_five(world):
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(world / "tasks"), include_defaults=False)
    assert set(TASKS) | {"world"} == set(tm.all_tasks)
    assert set(tm.load(["world"])["tasks"]) == set(TASKS)


# --------------------------------------------------------------------------- squad metric


@pytest.fixture(scope="module")
def squad_utils():
    path = generate.TEMPLATE_DIR / "utils.py"
    spec = importlib.util.spec_from_file_location("world_task_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_squad_f1_hand_computed(squad_utils):
    f1, em = squad_utils.f1_score, squad_utils.exact_match_score
    assert f1("Tamsin", "Tamsin") == 1.0
    assert f1("the Tamsin.", "tamsin") == 1.0  # articles, case, punctuation ignored
    assert f1("big cat", "big dog") == pytest.approx(0.5)  # p = r = 1/2
    assert f1("x y z", "x") == pytest.approx(0.5)  # p = 1/3, r = 1 -> 2/3 * 1 / (4/3)
    assert f1("w x y z", "y z v") == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))  # p 2/4, r 2/3
    assert f1("a b c d", "c d e") == pytest.approx(2 / 3)  # "a" is an article: "b c d" vs "c d e"
    assert f1("red red", "red") == pytest.approx(2 * 0.5 * 1 / 1.5)  # multiset overlap = 1
    assert f1("nothing", "else") == 0.0
    assert f1("", "x") == 0.0 and f1("the", "a") == 1.0  # both normalise to empty
    assert em("The Lomtak", "Lomtak") == 1.0 and em("Lomtak town", "Lomtak") == 0.0
    out = squad_utils.process_results_squad({"answers": ["Molbol", "the town of Molbol"]}, [" town of Molbol\nmore"])
    assert out["exact_match"] == 1.0 and out["f1"] == 1.0
    out = squad_utils.process_results_squad({"answers": ["Molbol"]}, ["Molbol Pimbi"])
    assert out == {"exact_match": 0.0, "f1": pytest.approx(2 / 3)}
