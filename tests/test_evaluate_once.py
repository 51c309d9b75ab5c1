"""qtbench.evaluate on a tiny local model: one model load per job, the chat
template passed through, lm-eval's task configs recorded, per-item records, and
a cut-off evaluation resumed from lm-eval's request cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qtbench import evaluate as ev
from qtbench.items import items_from_samples, items_path

DOCS = [
    {"question": "what is 3 plus 4 ?", "choices": ["7", "9", "12"], "gold": 0, "answer": "7"},
    {"question": "what is 1 plus 1 ?", "choices": ["5", "2", "3"], "gold": 1, "answer": "2"},
    {"question": "the capital of velora is", "choices": ["tamsin", "teacher", "farmer"], "gold": 0, "answer": "tamsin"},
    {"question": "what is 2 plus 4 ?", "choices": ["12", "15", "6"], "gold": 2, "answer": "6"},
    {"question": "people live in", "choices": ["velora", "answer", "the"], "gold": 0, "answer": "velora"},
]


def write_tasks(folder: Path) -> Path:
    """A multiple-choice and a generative task over the same five documents."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n    train: {data}\n"
              "test_split: test\nfewshot_split: train\n")
    (folder / "qt_mc.yaml").write_text(
        "task: qt_mc\n" + common + "output_type: multiple_choice\n"
        "doc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{gold}}\"\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n")
    (folder / "qt_gen.yaml").write_text(
        "task: qt_gen\n" + common + "output_type: generate_until\n"
        "doc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_target: \" {{answer}}\"\n"
        "generation_kwargs:\n  until: [\"\\n\"]\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n")
    return folder


EVAL = {
    "tasks": [{"name": "qt_mc", "num_fewshot": 0}, {"name": "qt_gen", "num_fewshot": 1, "max_gen_toks": 3}],
    "limit": 4, "batch_size": 4, "max_length": 128, "bootstrap_iters": 0, "device": "cpu", "seed": 1234,
    "threads": 1, "backend": "hf", "log_generations": False,
}


@pytest.fixture()
def counted(monkeypatch):
    """Counts model loads (HFLM._create_model) and requests that reach the model."""
    from lm_eval.models.huggingface import HFLM

    counts = {"loads": 0, "loglikelihood": 0, "generate_until": 0}
    create, loglik, generate = HFLM._create_model, HFLM.loglikelihood, HFLM.generate_until

    def _create(self, *args, **kwargs):
        counts["loads"] += 1
        return create(self, *args, **kwargs)

    def _loglik(self, requests, *args, **kwargs):
        counts["loglikelihood"] += len(requests)
        return loglik(self, requests, *args, **kwargs)

    def _generate(self, requests, *args, **kwargs):
        counts["generate_until"] += len(requests)
        return generate(self, requests, *args, **kwargs)

    monkeypatch.setattr(HFLM, "_create_model", _create)
    monkeypatch.setattr(HFLM, "loglikelihood", _loglik)
    monkeypatch.setattr(HFLM, "generate_until", _generate)
    return counts


def read_items(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_model_load_for_two_task_groups_with_items_and_configs(tiny_model_dir, tmp_path, counted):
    tasks = write_tasks(tmp_path / "tasks")
    out = tmp_path / "evals" / "seed0.json"
    record = ev.evaluate(str(tiny_model_dir), EVAL, out, tasks_dir=tasks, model_entry={"name": "tiny"})
    assert len(ev.task_groups(EVAL)) == 2
    assert counted["loads"] == 1
    # 4 documents x 3 choices of loglikelihood; 4 generations
    assert counted["loglikelihood"] == 12 and counted["generate_until"] == 4
    configs = record["lm_eval"]["configs"]
    assert set(configs) == {"qt_mc", "qt_gen"}
    assert configs["qt_gen"]["num_fewshot"] == 1 and configs["qt_gen"]["generation_kwargs"]["max_gen_toks"] == 3
    assert record["lm_eval"]["n-shot"] == {"qt_mc": 0, "qt_gen": 1}

    items = read_items(out.with_name("seed0.items.jsonl"))
    assert [(i["task"], i["doc_id"]) for i in items] == [("qt_gen", d) for d in range(4)] + [("qt_mc", d) for d in range(4)]
    assert all(set(i) == {"task", "doc_id", "filter", "metrics"} for i in items)
    for task, metric in (("qt_mc", "acc"), ("qt_gen", "exact_match")):
        values = [i["metrics"][metric] for i in items if i["task"] == task]
        assert set(values) <= {0.0, 1.0}
        # the task's score is the mean of its items
        assert record["scores"][task][f"{metric},none"]["value"] == pytest.approx(sum(values) / 4)
    assert not ev.cache_folder(out).exists()  # the request cache goes once the record is written


def test_log_generations_adds_the_response(tiny_model_dir, tmp_path, counted):
    tasks = write_tasks(tmp_path / "tasks")
    out = tmp_path / "g.json"
    ev.evaluate(str(tiny_model_dir), {**EVAL, "log_generations": True}, out, tasks_dir=tasks)
    items = read_items(items_path(out))
    gen = [i for i in items if i["task"] == "qt_gen"]
    assert all(isinstance(i["response"], str) for i in gen)


def test_chat_template_reaches_lm_eval(tiny_model_dir, tmp_path, monkeypatch, counted):
    import lm_eval

    model = tmp_path / "chat_model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}<|bot|>"
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    calls = []
    original = lm_eval.simple_evaluate

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append((kwargs, out))
        return out

    monkeypatch.setattr(lm_eval, "simple_evaluate", spy)
    tasks = write_tasks(tmp_path / "tasks")
    eval_cfg = {**EVAL, "tasks": [{"name": "qt_mc", "num_fewshot": 0}]}
    record = ev.evaluate(str(model), eval_cfg, tmp_path / "c.json", tasks_dir=tasks,
                         model_entry={"name": "m", "chat_template": True})
    assert record["chat_template"] is True
    kwargs, out = calls[0]
    assert kwargs["apply_chat_template"] is True
    prompt = out["samples"]["qt_mc"][0]["arguments"][0][0]
    assert prompt.startswith("<|user|>Question: what is 3 plus 4 ?") and "<|bot|>" in prompt


def test_a_cut_off_evaluation_resumes_from_the_request_cache(tiny_model_dir, tmp_path, monkeypatch, counted):
    tasks = write_tasks(tmp_path / "tasks")
    out = tmp_path / "r.json"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("preempted")

    with monkeypatch.context() as patch:
        patch.setattr(ev, "write_items", killed)
        with pytest.raises(KeyboardInterrupt):
            ev.evaluate(str(tiny_model_dir), EVAL, out, tasks_dir=tasks)
    assert ev.cache_folder(out).is_dir() and not out.exists()
    answered = dict(counted)
    record = ev.evaluate(str(tiny_model_dir), EVAL, out, tasks_dir=tasks)
    # the requeued job loads the model but asks it nothing it had answered
    assert counted["loads"] == answered["loads"] + 1
    assert counted["loglikelihood"] == answered["loglikelihood"] and counted["generate_until"] == answered["generate_until"]
    assert record["scores"]["qt_mc"]["acc,none"]["value"] in {0.0, 0.25, 0.5, 0.75, 1.0}


def test_a_cache_of_another_model_is_not_reused(tiny_model_dir, tmp_path, counted):
    tasks = write_tasks(tmp_path / "tasks")
    out = tmp_path / "x.json"
    stale = ev.cache_folder(out) / "0123456789abcdef"
    stale.mkdir(parents=True)
    (stale / "junk_rank0.db").write_text("not a cache")
    ev.evaluate(str(tiny_model_dir), {**EVAL, "tasks": [{"name": "qt_mc", "num_fewshot": 0}]}, out, tasks_dir=tasks)
    assert counted["loglikelihood"] == 12


def test_items_converter_keeps_numeric_metric_values_only():
    samples = {"squad": [{"doc_id": 3, "filter": "none", "metrics": ["f1", "exact"], "f1": ("a", "b"), "exact": True,
                          "filtered_resps": ["Paris"]}]}
    assert items_from_samples(samples) == [
        {"task": "squad", "doc_id": 3, "filter": "none", "metrics": {"exact": 1.0}}]
    assert items_from_samples(samples, generations=True)[0]["response"] == "Paris"
