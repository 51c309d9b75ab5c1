# One training job per run: model x method x (r_s, r_t) x seed.


def train_inputs(wildcards):
    run = run_of(wildcards)
    spec = parse_method(run.method)
    inputs = {"base": base_model_input(run.model), "data": sft_data_input()}
    if spec.sample != "none" and SAMPLE_PRUNERS[spec.sample].static:
        inputs["static"] = f"{R}/static/{run.model}/{spec.sample}.json"
    if needs_reference(run) and not config["models"][run.model]["reference"]:
        inputs["reference"] = f"{R}/models/{run.model}/reference"
    return inputs


def needs_reference(run):
    from qtbench.pruning import build_method, Budget

    method = build_method(run.method, Budget(float(run.r_s), float(run.r_t)), config["method_options"], run.seed)
    return "ref_nll" in method.required_stats


def train_extra_args(wildcards, input):
    args = []
    if "static" in input.keys():
        args += ["--static-scores", input.static]
    run = run_of(wildcards)
    if needs_reference(run):
        reference = config["models"][run.model]["reference"] or f"{R}/models/{run.model}/reference"
        args += ["--reference-model", reference]
    return " ".join(shlex.quote(a) for a in args)


def train_params(wildcards):
    """The run config less what cannot change a weight (qtbench.config.split_run_config)."""
    return as_arg(qconfig.split_run_config(qconfig.train_config(config, run_of(wildcards)))[0])


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
        "{params.extra} --state-dir {params.state} --settings {TRAIN_SETTINGS} --threads {threads} --wandb-dir {R}/wandb "
        "--out {output} > {log} 2>&1"
