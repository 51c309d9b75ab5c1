# LESS (baselines/less.py): a step of its own before scoring. The warm-up, a short
# LoRA fine-tune on a random 5% of the data, keeps per epoch its adapters and Adam
# moments under results/<exp>/less/<model>/warmup-<key>/; the static_scores job of
# `less` (or of a variant of it) takes that folder as an input (STATIC_STEPS,
# common.smk) and hands it to baselines.less.static_scores(..., inputs=...).
# <key> hashes the options the warm-up reads: variants that differ only in their
# target or projection share one warm-up.
from baselines.less import warmup_key, warmup_options

LESS_CMD = f"{shlex.quote(sys.executable)} -m baselines.less"


def less_warmup_dir(model, part):
    """The warm-up folder of the pruner `part` (`less` or a variant of it)."""
    options = pruner_options(part, config["method_options"], config["variants"])[1]
    return f"{R}/less/{model}/warmup-{warmup_key(options)}"


def less_warmups():
    """Warm-up key -> the options it trains with, for every `less` part the runs use."""
    out = {}
    for run in RUNS:
        resolved = resolve_method(run.method, config["variants"])
        part = resolved.parts.get("sample")
        if part and resolved.spec.sample == "less":
            options = pruner_options(part, config["method_options"], config["variants"])[1]
            out[warmup_key(options)] = warmup_options(options)
    return out


LESS_WARMUPS = less_warmups()


def less_static_step(wildcards):
    inputs = {"warmup": less_warmup_dir(wildcards.model, wildcards.sample_method)}
    if USES_WORLD and not config["eval"]["include_path"]:
        inputs["tasks_dir"] = f"{R}/world/tasks"  # the world's lm-eval tasks (target: eval)
    return {"inputs": inputs, "values": {"eval_tasks": [t["name"] for t in config["eval"]["tasks"]],
                                         "tasks_dir": tasks_dir()}}


STATIC_STEPS["less"] = less_static_step


# Lint "shell command directly uses variable ON_GPUS, LESS_CMD from outside of the
# rule": on purpose, as for the rules of data.smk (the command prefix changes no output).
rule less_warmup:
    input:
        base=lambda wc: base_model_input(wc.model),
        data=sft_data_input(),
    output:
        directory(f"{R}/less/{{model}}/warmup-{{key}}"),
    params:
        options=lambda wc: as_arg(LESS_WARMUPS[wc.key]),
        model=lambda wc: base_model_path(wc.model),
        data=lambda wc, input: shlex.quote(input.data[0] if input.data else sft_data_path()),
        entry=lambda wc: as_arg(model_entry(wc.model)),
        data_config=as_arg(config["data"]),
        version=qtbench.__version__,
    wildcard_constraints:
        key="[0-9a-f]{12}",
    threads: config["train"]["threads"]
    resources:
        gpu=lambda wc: job_gpus("less_warmup", wc.model),
        mem_mb=lambda wc: job_mem_mb("less_warmup", wc.model),
        runtime=lambda wc: job_runtime("less_warmup", wc.model),
    log:
        f"{R}/logs/less_warmup/{{model}}/warmup-{{key}}.log",
    benchmark:
        f"{R}/benchmarks/less_warmup/{{model}}/warmup-{{key}}.tsv"
    conda:
        "../../../environment.yml"
    shell:
        "{ON_GPUS} {resources.gpu} -- {LESS_CMD} warmup --model {params.model} --data {params.data} "
        "--options {params.options} --model-entry {params.entry} --data-config {params.data_config} "
        "--threads {threads} --out {output} > {log} 2>&1"
