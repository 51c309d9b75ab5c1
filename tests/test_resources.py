"""Job resources come from the config, per rule and per model, under every
profile; FSDP with fewer than 2 GPUs, a missing data file or model folder and
an unknown lm-eval task fail when the DAG is built; `qtbench validate-config`
merges over the default exactly as Snakemake does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qtbench import resources
from qtbench.cli import main as cli
from qtbench.config import REPO_ROOT, ConfigError, deep_merge, expand_runs, merge_over_default, validate_config

SMOKE = REPO_ROOT / "config" / "smoke.yaml"
SLURM = REPO_ROOT / "profiles" / "slurm"


def config_with(change: dict) -> dict:
    default = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    return validate_config(deep_merge(deep_merge(default, yaml.safe_load(SMOKE.read_text())), change))


def test_per_model_values_win_over_per_rule_values():
    cfg = config_with({"models": {"big": {"path": "org/big"}},
                       "resources": {"gpus": {"train": 1, "evaluate": 1}, "train_gpus_by_model": {"big": 4},
                                     "by_model": {"big": {"gpus": {"evaluate": 2}, "runtime": {"train": 2880}}}}})
    assert resources.job_resource(cfg, "gpus", "train", "tiny") == 1
    assert resources.job_resource(cfg, "gpus", "train", "big") == 4
    assert resources.job_resource(cfg, "gpus", "evaluate", "big") == 2
    assert resources.job_resource(cfg, "gpus", "evaluate", "tiny") == 1
    assert resources.job_resource(cfg, "runtime", "train", "big") == 2880
    assert resources.job_resource(cfg, "runtime", "train", "tiny") == 1440  # the schema's default
    assert resources.job_resource(cfg, "mem_mb", "aggregate") == 16000
    assert resources.job_resource(cfg, "gpus", "aggregate") == 0


def test_every_rule_has_memory_and_time_defaults():
    cfg = config_with({})
    for rule in resources.RULES:
        assert resources.job_resource(cfg, "mem_mb", rule) > 0, rule
        assert resources.job_resource(cfg, "runtime", rule) > 0, rule


def test_fsdp_needs_two_gpus_per_job():
    cfg = config_with({"train": {"fsdp": True}, "resources": {"gpus": {"train": 1}}})
    with pytest.raises(ConfigError, match=r"train job of model 'tiny' gets 1 GPU\(s\).*at least 2"):
        resources.check_fsdp_gpus(cfg, {"tiny": False})
    resources.check_fsdp_gpus(cfg, {"tiny": False}, overwrite={"train": {"gpu": 4}})  # --set-resources train:gpu=4
    ok = config_with({"train": {"fsdp": True}, "resources": {"by_model": {"tiny": {"gpus": {"train": 2}}}}})
    resources.check_fsdp_gpus(ok, {"tiny": False})
    # the reference model is a full fine-tune too: it needs its own GPUs when it is trained
    with pytest.raises(ConfigError, match="reference_model job of model 'tiny' gets 0"):
        resources.check_fsdp_gpus(ok, {"tiny": True})


def test_unknown_rule_in_by_model_is_a_config_error():
    with pytest.raises(ConfigError, match="resources.by_model.tiny.gpus"):
        config_with({"resources": {"by_model": {"tiny": {"gpus": {"trian": 2}}}}})


# --------------------------------------------------------------------------- Snakemake


def snakemake(workdir: Path, *args: str, configs=(), env_extra=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", **(env_extra or {}))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(SMOKE), *map(str, configs), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def planned_resources(text: str) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    rule = None
    for line in text.splitlines():
        match = re.match(r"^(?:local)?rule (\w+):$", line)
        if match:
            rule = match.group(1)
            continue
        stripped = line.strip()
        if rule and stripped.startswith("resources:"):
            pairs = [p.split("=", 1) for p in stripped[len("resources:"):].split(", ")]
            out.setdefault(rule, []).append({k.strip(): v.strip() for k, v in pairs if k.strip()})
            rule = None
    return out


def test_slurm_profile_takes_gpus_memory_and_time_from_the_config(tmp_path):
    change = tmp_path / "gpus.yaml"
    change.write_text(yaml.safe_dump({"resources": {
        "gpus": {"evaluate": 1, "evaluate_base": 1, "reference_model": 2},
        "by_model": {"tiny": {"gpus": {"train": 3}, "runtime": {"train": 77}, "mem_mb": {"evaluate": 12345}}}}}))
    done = snakemake(tmp_path, "-n", "--profile", str(SLURM), configs=(change,),
                     env_extra={"QTBENCH_SLURM_GPU_PARTITION": "gpuq", "QTBENCH_SLURM_PARTITION": "cpuq"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jobs = planned_resources(done.stdout)
    assert jobs["train"] and all(j["gpu"] == "3" and j["runtime"] == "77" and j["mem_mb"] == "96000" for j in jobs["train"])
    assert all(j["gpu"] == "1" and j["mem_mb"] == "12345" and j["slurm_partition"] == "gpuq" for j in jobs["evaluate"])
    assert all(j["gpu"] == "2" and j["runtime"] == "1440" for j in jobs["reference_model"])
    assert all(j["gpu"] == "0" and j["mem_mb"] == "8000" and j["runtime"] == "60" for j in jobs["world"])
    # a benchmark file for every job
    for rule in ("world", "base_model", "reference_model", "train", "evaluate", "evaluate_base", "aggregate"):
        block = re.search(rf"^(?:local)?rule {rule}:\n((?:    .*\n)+)", done.stdout, re.M)
        assert block and "benchmark: results/smoke/benchmarks/" in block.group(1), rule


def test_light_rules_are_local_rules(tmp_path):
    """world, aggregate (and all) run where Snakemake runs, never queued on a
    cluster (dry runs do not print it: the parsed workflow says it)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
            workflow = api.workflow(resource_settings=ResourceSettings(cores=1),
                                    config_settings=ConfigSettings(configfiles=[SMOKE]),
                                    snakefile=REPO_ROOT / "Snakefile", workdir=tmp_path)._workflow
            local = {rule.name for rule in workflow.rules if rule.name in workflow._localrules}
    finally:
        os.chdir(cwd)
    assert local == {"all", "world", "aggregate"}


def test_fsdp_with_one_gpu_fails_at_dag_build(tmp_path):
    change = tmp_path / "fsdp.yaml"
    change.write_text(yaml.safe_dump({"train": {"fsdp": True}, "resources": {"gpus": {"train": 1}}}))
    done = snakemake(tmp_path, "-n", "--cores", "1", configs=(change,))
    assert done.returncode != 0
    assert "FSDP shards a model over the GPUs of one job and needs at least 2" in done.stdout + done.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("change, message", [
    ({"data": {"source": "data/missing.jsonl"}, "methods": ["full"]},
     "config key 'data.source': file data/missing.jsonl does not exist"),
    ({"models": {"tiny": {"path": "./models/nope"}}}, "config key 'models.tiny.path': model folder models/nope does not exist"),
    ({"eval": {"tasks": [{"name": "arc_easyy"}]}}, "lm-eval has no task 'arc_easyy' (did you mean arc_easy"),
    ({"eval": {"include_path": "no/such/folder"}}, "config key 'eval.include_path': folder no/such/folder does not exist"),
], ids=["data", "model", "task", "include-path"])
def test_wrong_paths_and_task_names_fail_at_dag_build(tmp_path, change, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(change))
    done = snakemake(tmp_path, "-n", "--cores", "1", configs=(path,))
    assert done.returncode != 0
    assert message in done.stdout + done.stderr


def test_validate_config_merges_over_the_default_like_snakemake(capsys, tmp_path):
    assert cli(["validate-config", str(SMOKE)]) == 0
    out = capsys.readouterr().out
    cfg = merge_over_default(SMOKE)
    assert cfg["models"] == {"tiny": {"path": "world", "revision": None, "trust_remote_code": False,
                                      "chat_template": False, "dtype": "auto", "reference": None}}
    runs = expand_runs(cfg)
    assert f"{len(runs)} training run(s), {len(runs) + 1} evaluation(s)" in out
    assert [line.strip() for line in out.splitlines()[1:]] == [r.run_id for r in runs]
    # models given by a file replace the default's tiny model (as common.smk does)
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump({"models": {"other": {"path": "org/other"}}, "data": {"source": "org/data"},
                                   "methods": ["full", "q_tuning"], "eval": {"tasks": [{"name": "arc_easy"}]}}))
    assert list(merge_over_default(own)["models"]) == ["other"]
    assert cli(["validate-config", str(own)]) == 0
    assert "other/full/s1-t1/seed0" in capsys.readouterr().out


def test_validate_config_paper_lists_the_grid(capsys):
    assert cli(["validate-config", str(REPO_ROOT / "config" / "paper.yaml")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith("598 training run(s), 600 evaluation(s)")
