"""The "one file" promise: a new module in baselines/ is all a new method needs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from qtbench.config import REPO_ROOT

NEW_BASELINE = textwrap.dedent('''
    """Shortest responses first: keeps the r_s shortest responses of each micro-batch (a toy example)."""
    import torch

    from qtbench.methods.base import SamplePruner
    from qtbench.methods.registry import register_sample_pruner


    @register_sample_pruner("shortest_response")
    class ShortestResponse(SamplePruner):
        needs_select = True

        def select_samples(self, stats):
            k = self.budget.keep_count(stats.batch_size)
            lengths = stats.response_counts().double() + torch.arange(stats.batch_size) * 1e-6
            keep = torch.zeros(stats.batch_size, dtype=torch.bool)
            keep[lengths.argsort()[:k]] = True
            return keep, torch.ones(stats.batch_size), {}
''')


# Run Python with the copy first on the path. A `pip install -e .` of the original
# tree maps `qtbench` and `baselines` through an import hook that outranks
# PYTHONPATH, so the bootstrap takes that hook out, as in a fresh clone.
BOOTSTRAP = textwrap.dedent('''
    import runpy, sys
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.argv = sys.argv[1:]
    if sys.argv[0] == "-c":
        exec(sys.argv[1])
    else:
        runpy.run_module(sys.argv[0], run_name="__main__")
''')


def copy_tree(dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("Snakefile", "pyproject.toml", "qtbench", "baselines", "workflow", "config"):
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst / name)
    return dst


def test_one_new_file_is_enough(tmp_path):
    tree = copy_tree(tmp_path / "tree")
    (tree / "baselines" / "shortest_response.py").write_text(NEW_BASELINE)
    config = tmp_path / "cfg.yaml"
    config.write_text("experiment: addone\nmethods: [full, shortest_response, shortest_response+ppl]\n")
    env = {**os.environ, "PYTHONPATH": str(tree), "WANDB_MODE": "disabled"}

    check = textwrap.dedent('''
        import torch
        from qtbench.methods.base import Budget, BatchStats
        from qtbench.methods.registry import build_method, registered_names
        assert "shortest_response" in registered_names()["sample"]
        method = build_method("shortest_response+ppl", Budget(0.5, 0.5))
        response = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
        nll = torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 4) * response
        sel = method.select(BatchStats.from_tensors(nll, torch.zeros(4, 4), response))
        assert sel.sample_keep.tolist() == [False, True, True, False], sel.sample_keep
        assert sel.token_keep.sum(dim=1).tolist() == [0, 1, 1, 0], sel.token_keep
        print("ok")
    ''')
    bootstrap = tmp_path / "bootstrap.py"
    bootstrap.write_text(BOOTSTRAP)
    done = subprocess.run([sys.executable, str(bootstrap), "-c", check + "\nimport qtbench; assert qtbench.__file__.startswith(%r)" % str(tree)],
                          env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]

    plan = subprocess.run(
        [sys.executable, str(bootstrap), "snakemake", "-n", "--cores", "1", "--snakefile", str(tree / "Snakefile"),
         "--directory", str(tmp_path / "work"), "--configfile", str(config)],
        env=env, capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    assert "runs/tiny/shortest_response/s0.125-t1/seed0/checkpoint" in plan.stdout
    assert "runs/tiny/shortest_response+ppl/s0.25-t0.5/seed0/checkpoint" in plan.stdout
    # nothing else in the tree was touched
    assert sorted(p.name for p in (tree / "baselines").glob("*.py")) == sorted(
        [p.name for p in (REPO_ROOT / "baselines").glob("*.py")] + ["shortest_response.py"])


def test_a_baseline_with_a_step_of_its_own(tmp_path):
    """The README's second example: LESS is its method file plus one rule file
    (workflow/rules/methods/less.smk); with both dropped into a tree that lacks
    them, `snakemake -n` plans the warm-up rule, and the static_scores job of
    `less` depends on it and hands its folder to the scoring call."""
    tree = copy_tree(tmp_path / "tree")
    files = {Path("baselines/less.py"), Path("workflow/rules/methods/less.smk")}
    for rel in files:
        (tree / rel).unlink()
    assert "less_warmup" not in "".join(p.read_text() for p in (tree / "workflow").rglob("*.smk"))
    for rel in files:  # the example: these two files and nothing else
        shutil.copy(REPO_ROOT / rel, tree / rel)
    config = tmp_path / "cfg.yaml"
    config.write_text("experiment: step\nmethods: [less]\n")
    env = {**os.environ, "PYTHONPATH": str(tree), "WANDB_MODE": "disabled"}
    bootstrap = tmp_path / "bootstrap.py"
    bootstrap.write_text(BOOTSTRAP)
    base = [sys.executable, str(bootstrap), "snakemake", "--cores", "1", "--snakefile", str(tree / "Snakefile"),
            "--directory", str(tmp_path / "work"), "--configfile", str(config)]

    plan = subprocess.run(base + ["-n"], env=env, capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    assert "rule less_warmup:" in plan.stdout and "rule static_scores:" in plan.stdout
    assert "-m baselines.less warmup" in plan.stdout
    assert '"warmup": "results/step/less/tiny/warmup-' in plan.stdout  # reaches score-static --inputs

    dag = subprocess.run(base + ["--dag"], env=env, capture_output=True, text=True, timeout=300)
    assert dag.returncode == 0, dag.stderr[-3000:]
    label = dict(re.findall(r'^\s*(\d+)\[label = "([a-z_]+)', dag.stdout, re.M))
    edges = {(label[a], label[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dag.stdout, re.M)}
    assert ("less_warmup", "static_scores") in edges and ("static_scores", "train") in edges, edges
    assert ("base_model", "less_warmup") in edges, edges
