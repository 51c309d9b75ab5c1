"""TokenCleaning's global threshold in the DAG (offline ``snakemake -n``): the
token_scores rule is planned once per model, and is an input of the train rule,
only for token_cleaning runs with ``threshold: global`` (the default); the
static_scores rule scores IFD at train.max_length."""

from __future__ import annotations

import pytest
import yaml

from tests.test_paper_grid import DryRun, job_counts


def shell_commands(text: str, verb: str) -> list[str]:
    lines = [line for line in text.splitlines() if line.startswith("Shell command:") and f"qtbench.cli {verb} " in line]
    if verb == "train":  # the runs, not the reference model's fine-tune
        lines = [line for line in lines if "--out results/default/runs/" in line]
    return lines


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    root = tmp_path_factory.mktemp("token_scores")
    configs = {
        "global": {"methods": ["token_cleaning", "ifd", "random+token_cleaning"], "seeds": [0]},
        "batch": {"methods": ["token_cleaning", "rho1"], "method_options": {"token_cleaning": {"threshold": "batch"}},
                  "seeds": [0]},
    }
    runs = {}
    for name, cfg in configs.items():
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        runs[name] = DryRun(name, root / name, "-p", "--cores", "2", "--configfile", str(path))
    return runs


def test_token_scores_planned_for_the_global_threshold(plans):
    plan = plans["global"]
    assert plan.returncode == 0, plan.text[-3000:]
    counts = job_counts(plan.text)
    assert counts["token_scores"] == 1 and counts["reference_model"] == 1  # one per model, shared by both runs
    scoring = shell_commands(plan.text, "score-tokens")
    assert len(scoring) == 1 and "--max-length 256" in scoring[0]  # the default config's train.max_length
    assert "--reference-model results/default/models/tiny/reference" in scoring[0]
    trains = shell_commands(plan.text, "train")
    with_scores = [c for c in trains if "--token-scores results/default/static/tiny/token_scores.npy" in c]
    assert len(trains) == 3 and len(with_scores) == 2
    assert all('"method": "ifd"' not in c for c in with_scores)
    # IFD scores at the training length, not a fixed 512
    static = shell_commands(plan.text, "score-static")
    assert len(static) == 1 and '"max_length": 256' in static[0]


def test_token_scores_not_planned_for_the_batch_threshold(plans):
    plan = plans["batch"]
    assert plan.returncode == 0, plan.text[-3000:]
    counts = job_counts(plan.text)
    assert "token_scores" not in counts and counts["reference_model"] == 1 and counts["train"] == 2
    assert not any("--token-scores" in c for c in shell_commands(plan.text, "train"))


def test_score_tokens_then_train_with_the_global_cut(tiny_model_dir, records_file, tmp_path):
    """score-tokens writes every response token's score, sorted; a token_cleaning
    run places its cut from it (the trace records it) and refuses to start without it."""
    import json
    import shutil

    import numpy as np

    from baselines.token_cleaning import threshold_from_scores
    from qtbench.methods.static import read_token_scores, score_tokens
    from qtbench.train.loop import train
    from tests.train.test_loop import run_config

    reference = tmp_path / "reference"
    shutil.copytree(tiny_model_dir, reference)
    entry = {"name": "tiny", "path": str(tiny_model_dir), "reference": None}
    out = tmp_path / "token_scores.npy"
    n = score_tokens(str(tiny_model_dir), str(reference), str(records_file), out, model_entry=entry, max_length=64,
                     batch_size=4)
    scores = np.load(out)
    assert scores.shape == (n,) and n > 0 and (np.diff(scores) <= 0).all()  # sorted descending
    assert np.allclose(scores, 0.0, atol=1e-5)  # the reference is the base model itself
    cfg = run_config("token_cleaning", "1", "0.5", max_steps=1)
    with pytest.raises(ValueError, match="token scores"):
        train(cfg, tmp_path / "none", str(tiny_model_dir), str(records_file), reference_model=str(reference),
              progress=False)
    train(cfg, tmp_path / "run", str(tiny_model_dir), str(records_file), reference_model=str(reference),
          token_scores=str(out), progress=False)
    row = json.loads((tmp_path / "run" / "trace.jsonl").read_text().splitlines()[0])
    assert row["token_threshold"] == pytest.approx(threshold_from_scores(read_token_scores(out), 0.5))
