# The whole study: `snakemake --cores all` (add `--resources gpu=N` on a machine with N GPUs);
# one study: `snakemake --cores all toy`. Rules are built from the stage list in
# src/tdiag/plan.py, the same list dvc.yaml is generated from. Override keys with
# `snakemake --config studies='{toy: {train: {lr: 0.01}}}'`.
include: "workflow/rules/common.smk"


rule all:
    input:
        plan.final_targets(CFG),


include: "workflow/rules/stages.smk"
