# One training job per run: model x method x (r_s, r_t) x seed.
# Helper functions: common.smk.


# Lint "shell command directly uses variable ON_GPUS, QTBENCH_CMD, TRAIN_SETTINGS from
# outside of the rule": on purpose. The command prefix (this checkout and its Python)
# changes no output, and a new environment must not rerun finished jobs. W&B settings,
# threads and log/checkpoint intervals change no output. As `params` they would be a
# rerun trigger (qtbench.config.split_run_config).
rule train:
    input:
        unpack(train_inputs),
    output:
        directory(f"{R}/runs/{{model}}/{{method}}/{{budget}}/seed{{seed}}/checkpoint"),
    params:
        run_config=train_params,
        base=lambda wc: base_model_path(wc.model),
        data=sft_data_path(),
        extra=train_extra_args,
        state=f"{R}/runs/{{model}}/{{method}}/{{budget}}/seed{{seed}}/state",
        wandb_dir=f"{R}/wandb",
        version=qtbench.__version__,
    threads: config["train"]["threads"]
    resources:
        gpu=lambda wc: job_gpus("train", wc.model),
        mem_mb=lambda wc: job_mem_mb("train", wc.model),
        runtime=lambda wc: job_runtime("train", wc.model),
    log:
        f"{R}/logs/train/{{model}}/{{method}}/{{budget}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{model}}/{{method}}/{{budget}}/seed{{seed}}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{ON_GPUS} {resources.gpu} --distributed -- {QTBENCH_CMD} train --run-config {params.run_config} --base-model {params.base} --data {params.data} "
        "{params.extra} --state-dir {params.state} --settings {TRAIN_SETTINGS} --threads {threads} --wandb-dir {params.wandb_dir} "
        "--out {output} > {log} 2>&1"
