# lm-evaluation-harness on every checkpoint, and on each base model as a reference row.
# Helper functions: common.smk.


# Lint "shell command directly uses variable ON_GPUS, QTBENCH_CMD, WANDB from outside of
# the rule": on purpose. The command prefix (this checkout and its Python) changes no
# output, and a new environment must not rerun finished jobs. W&B settings, threads and
# log/checkpoint intervals change no output. As `params` they would be a rerun trigger
# (qtbench.config.split_run_config).
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
        wandb_dir=f"{R}/wandb",
        experiment=EXP,
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
        "--model-entry {params.entry} --meta {params.meta} --threads {threads} --wandb {WANDB} --wandb-dir {params.wandb_dir} "
        "--experiment {params.experiment} --out {output.record} > {log} 2>&1"


# Lint "shell command directly uses variable ON_GPUS, QTBENCH_CMD, WANDB from outside of
# the rule": on purpose. The command prefix (this checkout and its Python) changes no
# output, and a new environment must not rerun finished jobs. W&B settings, threads and
# log/checkpoint intervals change no output. As `params` they would be a rerun trigger
# (qtbench.config.split_run_config).
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
        wandb_dir=f"{R}/wandb",
        experiment=EXP,
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
        "--model-entry {params.entry} --meta {params.meta} --threads {threads} --wandb {WANDB} --wandb-dir {params.wandb_dir} "
        "--experiment {params.experiment} --out {output.record} > {log} 2>&1"
