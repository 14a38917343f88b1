# One rule per stage record; a training stage takes one unit of the `gpu` resource per
# process of its run (`train.devices`) and claims its own devices at run time
# (tdiag.devices); its `--threads` is per process, the rule's threads shared among them. Threads, `mem_mb` and `runtime`
# (minutes) come from the record (tdiag.resources, sized from the resolved scale); a
# cluster executor turns them into its submission arguments, `gpu` included (the SLURM
# plugin: `--gpus=1`), and a retry after the time limit gets the time again per attempt
# (a training job resumes from its checkpoint). The `fingerprint` param is the
# digest of the resolved settings the stage uses, the `code` param that of its source
# files' contents (tdiag.stage.Code): Snakemake's params trigger reruns the rule when
# either changes, and a source file's newer time alone (`git checkout`) reruns nothing.
# Lint "Specify a conda environment or container for each rule." stays: every job runs
# the interpreter Snakemake runs under (sys.executable), so its software is the project's
# own environment (pyproject.toml); a conda env would be a second, unpinned copy of it.
CODE_DIGESTS = {stage.code.name: stage.code.digest() for stage in STAGES if stage.code}

for stage in STAGES:

    rule:
        name:
            stage.name
        input:
            list(stage.deps),
        output:
            [reported(o) for o in stage.outs],
        log:
            str(paths.stage_log(stage.name)),
        params:
            fingerprint=stage.fingerprint,
            code=CODE_DIGESTS[stage.code.name] if stage.code else "",
            cmd=shlex.join(TDIAG + list(stage.args)),
        threads: stage.resources.cpus
        priority: stage.priority
        resources:
            gpu=stage.gpus,
            # SLURM's --cpus-per-task, whatever the submitting machine's own --cores caps `threads` at
            cpus_per_task=stage.resources.cpus,
            mem_mb=stage.resources.mem_mb,
            runtime=per_attempt(stage.resources.runtime_min),
        shell:
            "{params.cmd}" + (" --threads $(( ({threads} + {resources.gpu} - 1) / {resources.gpu} ))"
                              if stage.gpus else "") + " > {log} 2>&1"


# `snakemake --cores all <study>`: one study's page and what it needs.
_taken = {"all"} | {stage.name for stage in STAGES}
for study in CFG.studies:
    if study in _taken:
        sys.stderr.write(f"tdiag: error: study '{study}' has the name of a Snakemake rule; rename the study\n")
        sys.exit(2)

    rule:
        name:
            study
        input:
            str(paths.report_page(study)),
