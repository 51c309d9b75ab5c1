# Data and models that runs share: the synthetic world, its tiny base model,
# the reference model of Rho-1/TokenCleaning, cached static scores (a
# judge-scored pruner's judges - Alpagasus, DEITA, DS2 - are inputs when the
# DAG builds them: `path: world` is the world's base model), and
# TokenCleaning's per-token scores (its global threshold).
# Helper functions: common.smk.


# Lint "shell command directly uses variable QTBENCH from outside of the rule": on
# purpose. The command prefix (this checkout and its Python) changes no output, and a
# new environment must not rerun finished jobs. As `params` they would be a rerun
# trigger (qtbench.config.split_run_config).
rule world:
    output:
        sft=f"{R}/world/sft.jsonl",
        meta=f"{R}/world/sft_meta.jsonl",
        reference=f"{R}/world/reference.jsonl",
        corpus=f"{R}/world/corpus.txt",
        tasks=directory(f"{R}/world/tasks"),
        summary=f"{R}/world/summary.json",
    params:
        options=as_arg(config["world"]),
        out=lambda wc, output: str(Path(output.sft).parent),
        version=qtbench.__version__,
    resources:
        mem_mb=job_mem_mb("world"),
        runtime=job_runtime("world"),
    log:
        f"{R}/logs/world.log",
    benchmark:
        f"{R}/benchmarks/world.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{QTBENCH} world --options {params.options} --out {params.out} > {log} 2>&1"


# Lint "shell command directly uses variable QTBENCH from outside of the rule": on
# purpose. The command prefix (this checkout and its Python) changes no output, and a
# new environment must not rerun finished jobs. As `params` they would be a rerun
# trigger (qtbench.config.split_run_config).
rule base_model:
    input:
        corpus=f"{R}/world/corpus.txt",
        sft=f"{R}/world/sft.jsonl",
    output:
        directory(f"{R}/models/{{model}}/base"),
    params:
        options=as_arg(config["pretrain"]),
        world=lambda wc, input: str(Path(input.corpus).parent),
        seed=config["seeds"][0],
        version=qtbench.__version__,
    threads: workflow.cores
    resources:
        mem_mb=lambda wc: job_mem_mb("base_model", wc.model),
        runtime=lambda wc: job_runtime("base_model", wc.model),
    log:
        f"{R}/logs/base_model/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/base_model/{{model}}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{QTBENCH} pretrain --world {params.world} --options {params.options} --seed {params.seed} "
        "--threads {threads} --out {output} > {log} 2>&1"


# Lint "shell command directly uses variable ON_GPUS, QTBENCH_CMD, REFERENCE_SETTINGS
# from outside of the rule": on purpose. The command prefix (this checkout and its
# Python) changes no output, and a new environment must not rerun finished jobs. W&B
# settings, threads and log/checkpoint intervals change no output. As `params` they
# would be a rerun trigger (qtbench.config.split_run_config).
rule reference_model:
    input:
        base=lambda wc: base_model_input(wc.model),
        data=reference_data_input(),
    output:
        directory(f"{R}/models/{{model}}/reference"),
    params:
        run_config=lambda wc: as_arg(reference_run_config(wc.model)),
        base=lambda wc: base_model_path(wc.model),
        data=reference_data_path(),
    threads: config["train"]["threads"]
    resources:
        gpu=lambda wc: job_gpus("reference_model", wc.model),
        mem_mb=lambda wc: job_mem_mb("reference_model", wc.model),
        runtime=lambda wc: job_runtime("reference_model", wc.model),
    log:
        f"{R}/logs/reference_model/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/reference_model/{{model}}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{ON_GPUS} {resources.gpu} --distributed -- {QTBENCH_CMD} train --run-config {params.run_config} --base-model {params.base} "
        "--data {params.data} --settings {REFERENCE_SETTINGS} --threads {threads} --out {output} > {log} 2>&1"


# Lint "shell command directly uses variable ON_GPUS, QTBENCH_CMD from outside of the
# rule": on purpose. The command prefix (this checkout and its Python) changes no
# output, and a new environment must not rerun finished jobs. As `params` they would be
# a rerun trigger (qtbench.config.split_run_config).
rule static_scores:
    input:
        unpack(static_scores_inputs),  # + the outputs of a method's own step (STATIC_STEPS, common.smk)
        judges=lambda wc: judge_inputs(wc.model, wc.sample_method),
    output:
        f"{R}/static/{{model}}/{{sample_method}}.json",
    params:
        model=lambda wc: base_model_path(wc.model),
        data=lambda wc, input: shlex.quote(input.data[0] if input.data else sft_data_path()),
        method=lambda wc: static_options(wc.model, wc.sample_method)[0],
        options=lambda wc: as_arg(static_options(wc.model, wc.sample_method)[1]),
        entry=lambda wc: as_arg(model_entry(wc.model)),
        data_config=as_arg(config["data"]),
        inputs=static_scores_step_arg,
        version=qtbench.__version__,
    wildcard_constraints:
        sample_method="[a-z][a-z0-9_]*",
    threads: config["train"]["threads"]
    resources:
        gpu=lambda wc: job_gpus("static_scores", wc.model),
        mem_mb=lambda wc: job_mem_mb("static_scores", wc.model),
        runtime=lambda wc: job_runtime("static_scores", wc.model),
    log:
        f"{R}/logs/static_scores/{{model}}/{{sample_method}}.log",
    benchmark:
        f"{R}/benchmarks/static_scores/{{model}}/{{sample_method}}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{ON_GPUS} {resources.gpu} -- {QTBENCH_CMD} score-static --method {params.method} --model {params.model} "
        "--data {params.data} --options {params.options} --model-entry {params.entry} --data-config {params.data_config} --inputs {params.inputs} --out {output} > {log} 2>&1"


# TokenCleaning's global threshold (method_options.token_cleaning.threshold: global,
# the default): every response token of the data set scored once per model with the
# base and reference models, sorted; each token_cleaning run places its cut for its
# own r_t from this file (baselines/token_cleaning.py).  Planned only for runs that
# need it (common.smk: needs_token_scores).
# Lint "shell command directly uses variable ON_GPUS, QTBENCH_CMD from outside of the
# rule": on purpose, as static_scores.
rule token_scores:
    input:
        base=lambda wc: base_model_input(wc.model),
        data=sft_data_input(),
        reference=lambda wc: reference_input(wc.model),
    output:
        f"{R}/static/{{model}}/token_scores.npy",
    params:
        model=lambda wc: base_model_path(wc.model),
        reference=lambda wc: reference_arg(wc.model),
        data=lambda wc, input: shlex.quote(input.data[0] if input.data else sft_data_path()),
        entry=lambda wc: as_arg(model_entry(wc.model)),
        data_config=as_arg(config["data"]),
        max_length=config["train"]["max_length"],
        batch_size=config["train"]["micro_batch_size"],
        version=qtbench.__version__,
    threads: config["train"]["threads"]
    resources:
        gpu=lambda wc: job_gpus("token_scores", wc.model),
        mem_mb=lambda wc: job_mem_mb("token_scores", wc.model),
        runtime=lambda wc: job_runtime("token_scores", wc.model),
    log:
        f"{R}/logs/token_scores/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/token_scores/{{model}}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{ON_GPUS} {resources.gpu} -- {QTBENCH_CMD} score-tokens --base-model {params.model} --reference-model {params.reference} "
        "--data {params.data} --model-entry {params.entry} --data-config {params.data_config} --max-length {params.max_length} "
        "--batch-size {params.batch_size} --out {output} > {log} 2>&1"
