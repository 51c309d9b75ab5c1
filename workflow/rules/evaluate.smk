# lm-evaluation-harness on every checkpoint, and on each base model as a reference row.


def eval_inputs(checkpoint, model):
    inputs = {"model": checkpoint}
    if tasks_dir() and USES_WORLD and not config["eval"]["include_path"]:
        inputs["tasks"] = f"{R}/world/tasks"
    return inputs


def tasks_arg():
    return f"--tasks-dir {shlex.quote(tasks_dir())}" if tasks_dir() else ""


rule evaluate:
    input:
        unpack(lambda wc: eval_inputs(f"{R}/runs/{wc.model}/{wc.method}/{wc.budget}/seed{wc.seed}/checkpoint", wc.model)),
    output:
        f"{R}/evals/{{model}}/{{method}}/{{budget}}/seed{{seed}}.json",
    params:
        eval_config=as_arg(config["eval"]),
        entry=lambda wc: as_arg(model_entry(wc.model)),
        meta=lambda wc: as_arg(run_of(wc).as_dict()),
        wandb=as_arg(config["wandb"]),
        wandb_dir=f"{R}/wandb",
        tasks=tasks_arg(),
        version=qtbench.__version__,
    threads: config["eval"]["threads"]
    resources:
        gpu=job_gpus("evaluate"),
    log:
        f"{R}/logs/evaluate/{{model}}/{{method}}/{{budget}}/seed{{seed}}.log",
    conda:
        "../../environment.yml"
    shell:
        "{ON_GPUS} {resources.gpu} -- {QTBENCH_CMD} evaluate --model-path {input.model} --eval-config {params.eval_config} {params.tasks} "
        "--model-entry {params.entry} --meta {params.meta} --wandb {params.wandb} --wandb-dir {params.wandb_dir} "
        "--experiment {EXP} --out {output} > {log} 2>&1"


def base_meta(model):
    return {"run_id": f"{model}/base", "model": model, "method": "base", "budget": None, "seed": None}


rule evaluate_base:
    input:
        unpack(lambda wc: eval_inputs(base_model_input(wc.model), wc.model)),
    output:
        f"{R}/evals/{{model}}/base.json",
    params:
        model=lambda wc: base_model_path(wc.model),
        eval_config=as_arg(config["eval"]),
        entry=lambda wc: as_arg(model_entry(wc.model)),
        meta=lambda wc: as_arg(base_meta(wc.model)),
        tasks=tasks_arg(),
        version=qtbench.__version__,
    threads: config["eval"]["threads"]
    resources:
        gpu=job_gpus("evaluate_base"),
    log:
        f"{R}/logs/evaluate/{{model}}/base.log",
    conda:
        "../../environment.yml"
    shell:
        "{ON_GPUS} {resources.gpu} -- {QTBENCH_CMD} evaluate --model-path {params.model} --eval-config {params.eval_config} {params.tasks} "
        "--model-entry {params.entry} --meta {params.meta} --out {output} > {log} 2>&1"
