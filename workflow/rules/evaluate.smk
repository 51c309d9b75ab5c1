# lm-evaluation-harness on every checkpoint, and on each base model as a reference row.


def eval_inputs(checkpoint, model):
    inputs = {"model": checkpoint}
    if tasks_dir() and USES_WORLD and not config["eval"]["include_path"]:
        inputs["tasks"] = f"{R}/world/tasks"
    return inputs


def tasks_arg():
    return f"--tasks-dir {shlex.quote(tasks_dir())}" if tasks_dir() else ""


def eval_record(stem):
    """An evaluation's record and, beside it, its per-item file (qtbench.evaluate.items_path)."""
    return {"record": f"{stem}.json", "per_item": f"{stem}.items.jsonl"}


rule evaluate:
    input:
        unpack(lambda wc: eval_inputs(f"{R}/runs/{wc.model}/{wc.method}/{wc.budget}/seed{wc.seed}/checkpoint", wc.model)),
    output:
        **eval_record(f"{R}/evals/{{model}}/{{method}}/{{budget}}/seed{{seed}}"),
    params:
        # what a record depends on; threads and W&B come as plain words (common.smk)
        eval_config=as_arg(qconfig.eval_params(config)),
        entry=lambda wc: as_arg(model_entry(wc.model)),
        meta=lambda wc: as_arg(run_of(wc).as_dict()),
        tasks=tasks_arg(),
        version=qtbench.__version__,
    threads: config["eval"]["threads"]
    resources:
        gpu=lambda wc: job_gpus("evaluate", wc.model),
        mem_mb=lambda wc: job_mem_mb("evaluate", wc.model),
        runtime=lambda wc: job_runtime("evaluate", wc.model),
    log:
        f"{R}/logs/evaluate/{{model}}/{{method}}/{{budget}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{model}}/{{method}}/{{budget}}/seed{{seed}}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{ON_GPUS} {resources.gpu} -- {QTBENCH_CMD} evaluate --model-path {input.model} --eval-config {params.eval_config} {params.tasks} "
        "--model-entry {params.entry} --meta {params.meta} --threads {threads} --wandb {WANDB} --wandb-dir {R}/wandb "
        "--experiment {EXP} --out {output.record} > {log} 2>&1"


def base_meta(model):
    return {"run_id": f"{model}/base", "model": model, "method": "base", "budget": None, "seed": None}


rule evaluate_base:
    input:
        unpack(lambda wc: eval_inputs(base_model_input(wc.model), wc.model)),
    output:
        **eval_record(f"{R}/evals/{{model}}/base"),
    params:
        model=lambda wc: base_model_path(wc.model),
        eval_config=as_arg(qconfig.eval_params(config)),
        entry=lambda wc: as_arg(model_entry(wc.model)),
        meta=lambda wc: as_arg(base_meta(wc.model)),
        tasks=tasks_arg(),
        version=qtbench.__version__,
    threads: config["eval"]["threads"]
    resources:
        gpu=lambda wc: job_gpus("evaluate_base", wc.model),
        mem_mb=lambda wc: job_mem_mb("evaluate_base", wc.model),
        runtime=lambda wc: job_runtime("evaluate_base", wc.model),
    log:
        f"{R}/logs/evaluate/{{model}}/base.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{model}}/base.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{ON_GPUS} {resources.gpu} -- {QTBENCH_CMD} evaluate --model-path {params.model} --eval-config {params.eval_config} {params.tasks} "
        "--model-entry {params.entry} --meta {params.meta} --threads {threads} --wandb {WANDB} --wandb-dir {R}/wandb "
        "--experiment {EXP} --out {output.record} > {log} 2>&1"
