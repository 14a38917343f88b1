"""`tdiag`: thin verbs over importable functions; every stage of the pipeline is one verb.

A user error (a configuration problem, missing data, a failed download) prints one
line and exits with code 2; a configuration problem does so before anything is written.
Tracebacks are kept for bugs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from tdiag import config as config_mod
from tdiag import paths
from tdiag.config import ConfigError
from tdiag.errors import UserError

EXIT_USER_ERROR = 2
OVERRIDES_ENV = "TDIAG_OVERRIDES"
"""A JSON list of `key.path=value` overrides applied before `--set`. The Snakefile sets it
from `--config`, so overrides reach every job without being part of its command line
(a command that changes makes Snakemake rerun the job; only a changed fingerprint should)."""

PROGRESS_ENV = "TDIAG_PROGRESS_SECONDS"
"""Seconds of wall time between a training job's progress lines (default in train/logs.py)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tdiag", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="the configuration file (default: params.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one key of the configuration, e.g. --set studies.toy.train.max_steps=200 (repeatable)",
    )
    verbs = parser.add_subparsers(dest="verb", required=True)

    verbs.add_parser("validate", help="check params.yaml and print the resolved scale")

    data = verbs.add_parser("data", help="dataset stages").add_subparsers(dest="data_verb", required=True)
    synth = data.add_parser("synth", help="generate a synthetic dataset")
    synth.add_argument("dataset")
    fetch = data.add_parser("fetch", help="download a corpus (or copy it from the data mirror), checksums verified")
    fetch.add_argument("corpus")
    fetch.add_argument("--out", type=Path, default=None, help="target folder (default: resources/<corpus>)")
    prepare = data.add_parser("prepare", help="make a dataset from its fetched corpus (tokenise, subset, vocabulary)")
    prepare.add_argument("dataset")

    bpe = verbs.add_parser("bpe", help="subword-nmt BPE stages").add_subparsers(dest="bpe_verb", required=True)
    for verb, text in (("learn", "learn joint BPE codes on the training split"),
                       ("apply", "apply BPE to every split and encode it as token ids")):
        bpe.add_parser(verb, help=text).add_argument("dataset")

    train = verbs.add_parser(
        "train", help="train one run of a study (resumes from its checkpoint)",
        epilog=f"{PROGRESS_ENV}=SECONDS sets the wall time between progress lines (default 30)",
    )
    train.add_argument("study")
    train.add_argument("run")
    train.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    train.add_argument("--threads", type=int, default=None, help="CPU threads for torch, per process (default: torch's)")

    check = verbs.add_parser(
        "check", help="run the model checks (causality, padding, gradients, ...) on a run's model; "
        "writes results/checks/<study>/<run>.json and exits 0 even when a check fails",
    )
    check.add_argument("study")
    check.add_argument("run")

    collect = verbs.add_parser("collect", help="gather a study's runs into results/<study>/runs.csv and metrics.json")
    collect.add_argument("study")

    report = verbs.add_parser("report", help="render reports/<study>.html, or reports/index.html with 'index'")
    report.add_argument("study")

    estimate = verbs.add_parser(
        "estimate", help="expected training time of each study at the active scale, from a probe on this machine"
    )
    estimate.add_argument("studies", nargs="*", help="studies to estimate (default: all)")
    estimate.add_argument("--probe-steps", type=int, default=10, help="timed training steps per run (default 10)")
    estimate.add_argument("--jobs", type=int, default=None,
                          help="training jobs at once (default: GPUs x devices.jobs_per_gpu, or CPU cores)")

    code = verbs.add_parser(
        "code", help="write the SHA-256 digests of a stage's source files to results/code/<name>.sha256 "
        "(DVC's code stages; params.yaml is not read)",
    )
    code.add_argument("name")
    code.add_argument("files", nargs="+")

    stages = verbs.add_parser("stages", help="print the stage list, or dvc.yaml with --dvc")
    stages.add_argument("--dvc", action="store_true", help="print dvc.yaml generated from the stage list")
    return parser


def run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.verb == "code":  # what it digests is named on its command line, not configured
        from tdiag.stage import write_code_digests

        write_code_digests(args.name, tuple(args.files))
        return 0
    cfg = config_mod.load(args.params, env_overrides(os.environ) + args.overrides)
    root = Path(".")

    if args.verb == "validate":
        from tdiag.report import claims

        found = "not here (the report pages need it)"
        if (root / paths.CLAIMS).is_file():
            checked = claims.load(root / paths.CLAIMS)
            found = f"{len(checked.claims)} claims"
            elsewhere = claims.unconfigured(checked, cfg)
            if elsewhere:
                found += f" ({len(elsewhere)} of studies not configured, judged nowhere: {', '.join(elsewhere)})"
        print(f"{args.params}: valid (scale {cfg.scale} -> {cfg.resolved_scale}); {paths.CLAIMS}: {found}")
        _custom_models(cfg)
    elif args.verb == "data" and args.data_verb == "fetch":
        from tdiag.data.fetch import fetch_corpus

        fetch_corpus(args.corpus, args.out, cfg.mirror, root)
    elif args.verb in ("data", "bpe"):  # a dataset's own stages: its kind says what they do
        verb = f"data {args.data_verb}" if args.verb == "data" else f"bpe {args.bpe_verb}"
        ds, action = _dataset_action(cfg, args.dataset, verb, root)
        result = action(args.dataset, ds, root)
        if verb == "data synth":
            print(f"dataset {args.dataset}: {result['sizes']}")
    elif args.verb == "train":
        rc = cfg.run(args.study, args.run)  # unknown names fail before torch is loaded
        paths.inside(root, paths.run_dir(args.study, args.run))
        progress_every = _progress_every(os.environ.get(PROGRESS_ENV))
        import torch

        from tdiag.train import distributed
        from tdiag.train.contract import check_custom_model
        from tdiag.train.loop import train_run

        group = distributed.from_env()
        if group.writer:  # a model that breaks its contract: one line, before any process starts
            check_custom_model(cfg, args.study, args.run, root)
        if rc.train.devices > 1 and not group.active:
            return _train_distributed(cfg, rc, args, argv, root)

        if args.threads:
            torch.set_num_threads(args.threads)
        train_run(cfg, args.study, args.run, root=root, restart=args.restart, **progress_every)
    elif args.verb == "check":
        cfg.run(args.study, args.run)  # unknown names fail before torch is loaded
        paths.inside(root, paths.run_checks(args.study, args.run))
        from tdiag.checks.runs import check_run

        # A failed check is data for the report, not an error: the exit status stays 0.
        for result in check_run(cfg, args.study, args.run, root):
            print(f"{'pass' if result.passed else 'FAIL'} {result.name}: {result.message}")
    elif args.verb == "collect":
        from tdiag.report.collect import write_study_metrics, write_study_table

        cfg.study(args.study)
        paths.inside(root, paths.study_table(args.study))
        paths.inside(root, paths.study_metrics(args.study))
        write_study_table(cfg, args.study, root)
        write_study_metrics(cfg, args.study, root)
    elif args.verb == "report":
        from tdiag.report import render
        if args.study == paths.REPORT_INDEX:
            paths.inside(root, paths.report_index())
            render.render_index(cfg, root)
        else:
            cfg.study(args.study)
            paths.inside(root, paths.executed_notebook(args.study))
            paths.inside(root, paths.report_page(args.study))
            paths.inside(root, paths.study_verdicts(args.study))
            render.render_study(cfg, args.study, root)
    elif args.verb == "estimate":
        studies = args.studies or list(cfg.studies)
        for study in studies:
            cfg.study(study)
        if args.probe_steps < 1 or (args.jobs is not None and args.jobs < 1):
            raise UserError("--probe-steps and --jobs must be at least 1")
        import torch

        from tdiag.train.estimate import estimate, table

        gpus = torch.cuda.device_count()
        jobs = args.jobs or (gpus * cfg.devices.jobs_per_gpu if gpus else os.cpu_count() or 1)
        description, runs = estimate(cfg, studies, root, args.probe_steps)
        print(table(cfg, description, runs, jobs))
    elif args.verb == "stages":
        from tdiag import plan

        if args.dvc:
            from tdiag.config import yaml_text

            sys.stdout.write(plan.dvc_file(cfg, yaml_text.read(Path(args.params)) or {}))
        else:
            for st in plan.stages(cfg):
                print(f"{st.name}: tdiag {' '.join(st.args)}")
    return 0


def _train_distributed(cfg, rc, args, argv: list[str], root: Path) -> int:
    """`tdiag train` of a run with `train.devices` > 1: the same command as that many
    torchrun processes (train/distributed.py), on GPUs claimed for the run, or on the CPU."""
    from tdiag import devices
    from tdiag.data.kinds import kind_of
    from tdiag.train import distributed
    from tdiag.train.loop import read_meta

    read_meta(root, rc.dataset, kind_of(cfg.datasets[rc.dataset]))  # a missing dataset: one line, here
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(args.threads or 1))  # torchrun's own default, without its warning
    slots, description = devices.select_devices(
        rc.train.devices, Path(cfg.devices.lock_dir) if cfg.devices.lock_dir else None, env,
        f"studies.{args.study}.runs.{args.run}.train.devices",
        on_wait=lambda message: print(f"tdiag: {message}", file=sys.stderr), jobs_per_gpu=cfg.devices.jobs_per_gpu,
    )
    print(f"tdiag: {args.study}/{args.run}: {rc.train.devices} processes on {description}", file=sys.stderr)
    try:
        return distributed.launch(rc.train.devices, argv, env)
    finally:
        for slot in slots:
            slot.release()


def _progress_every(value: str | None) -> dict:
    """`train_run`'s `progress_every` from the environment's value (none: its default)."""
    if value is None:
        return {}
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise UserError(f"{PROGRESS_ENV}={value!r} is not a positive number of seconds; set e.g. {PROGRESS_ENV}=30")
    return {"progress_every": seconds}


def env_overrides(env) -> list[str]:
    """The overrides in `env[OVERRIDES_ENV]`, or none when it is unset or empty."""
    text = env.get(OVERRIDES_ENV, "")
    try:
        overrides = json.loads(text) if text.strip() else []
    except json.JSONDecodeError:
        overrides = None
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(
            f"{OVERRIDES_ENV} must be a JSON list of 'key.path=value' strings, e.g. "
            f'\'["studies.toy.train.lr=0.01"]\', not {text[:100]!r}; unset it to use params.yaml as it is'
        )
    return overrides


def _custom_models(cfg) -> None:
    """One line per custom model factory: the runs that use it, and whether it imports
    (importing runs the user's module; the model's contract is checked by `tdiag train`).
    A factory that does not import is an error, raised after every line is printed."""
    from tdiag.config import factory as factories

    runs: dict[tuple, list[tuple[str, str]]] = {}
    for study in cfg.studies:
        for run in cfg.run_names(study):
            model = cfg.run(study, run).model
            if model.arch == "custom":
                runs.setdefault((model.factory, model.folder), []).append((study, run))
    failed = None
    for (factory, folder), names in runs.items():
        study, run = names[0]
        try:
            factories.load(factory, folder, cfg.run(study, run).factory_key(study, run))
            found = "imports"
        except UserError as err:
            failed = failed or err
            found = "does not import"
        print(f"custom model {factory}: {found}; runs {', '.join(f'{s}/{r}' for s, r in names)}")
    if failed:
        raise failed


def _dataset_action(cfg, name: str, verb: str, root: Path):
    """The named dataset's config, and what `verb` does for its kind (data/kinds.py),
    once the dataset's folder is known to stay under `root`."""
    from tdiag.data.kinds import kind_of

    if name not in cfg.datasets:
        raise ConfigError(f"unknown dataset {name!r}; datasets: {', '.join(cfg.datasets)}")
    ds = cfg.datasets[name]
    kind = kind_of(ds)
    action = kind.action(verb)
    if action is None:
        raise ConfigError(f"`tdiag {verb}` does not apply to dataset '{name}' (task {ds.task})")
    paths.inside(root, kind.folder(name))
    return ds, action


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except UserError as err:
        print(f"tdiag: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
