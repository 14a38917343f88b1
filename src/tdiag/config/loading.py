"""Loading params.yaml: the common sections, the `scales.<scale>` section, then overrides.

A key is set in one place: in the common sections (the same at every scale) or under
`scales.smoke` and `scales.full` (a value per scale), never both. So an override
(`tdiag --set`, Snakemake's `--config`, `dvc exp run -S`, or an edit of the file) means
one thing whatever the route: it sets that key, and a key that is held per scale
stops the load with one line naming the scale key to set instead.

Both scales are validated on every load, runs included, so a typo in the section not
in use fails now rather than on another machine. Each distinct merged mapping is
validated once, and a run again only where the second scale changed it. The chosen
scale's Config and resolved runs are kept, so `Config.run` is a lookup.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Optional

from pydantic import ValidationError

from tdiag.config import yaml_text
from tdiag.config.errors import ConfigError, OverrideError, format_error, key_path
from tdiag.config.overrides import apply_overrides, deep_merge
from tdiag.config.schema import Config, GridConfig, RunConfig

MIRROR_ENV = "TDIAG_DATA_MIRROR"
SCALES = ("smoke", "full")

Resolved = dict[tuple[str, str], tuple[dict, RunConfig]]
"""(study, run) -> (the run's merged mapping, that mapping validated)."""


def load(path: str | Path = "params.yaml", overrides: list[str] = (), *, env: Optional[dict] = None) -> Config:
    path = Path(path)
    raw = yaml_text.read(path)
    try:
        return validate(raw or {}, overrides, env=env, folder=path.parent)
    except OverrideError:
        raise
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def validate(raw: Any, overrides: list[str] = (), *, env: Optional[dict] = None, folder: Path = Path(".")) -> Config:
    """Validate a parsed params mapping into a frozen Config with every run resolved.

    `overrides` (`key.path=value`) set keys of the file as an edit would, the
    `scales` sections' included. `folder` is the params file's: a custom model's
    factory file (`model.factory`) is relative to it.
    """
    env = os.environ if env is None else env
    if not isinstance(raw, dict):
        raise ConfigError("params must be a mapping of sections (scale, data, datasets, studies, ...)")
    if "resolved_scale" in raw:
        raise ConfigError("unknown key 'resolved_scale' (it is computed, not set)")
    raw = apply_overrides(raw, list(overrides))
    sections = raw.get("scales") or {}
    if not isinstance(sections, dict):
        raise ConfigError("bad value for 'scales': must be a mapping of smoke/full sections")
    unknown = [name for name in sections if name not in SCALES]
    if unknown:
        raise ConfigError(f"unknown key 'scales.{unknown[0]}'; allowed keys: {', '.join(SCALES)}")
    common = {k: v for k, v in raw.items() if k != "scales"}
    for scale in sorted(SCALES, key=lambda s: s != common.get("scale")):  # the named scale's clash first
        section = sections.get(scale) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"bad value for 'scales.{scale}': must be a mapping")
        for key in ("scale", "scales"):
            if key in section:
                raise ConfigError(f"unknown key 'scales.{scale}.{key}': a scale section holds values per scale, not '{key}'")
        _refuse_keys_set_twice(common, section, scale)
    scaled: dict[str, tuple[Config, Resolved]] = {}
    previous: Optional[tuple[dict, Config, Resolved]] = None
    for scale in SCALES:
        section = sections.get(scale) or {}
        merged = deep_merge(common, section)
        if previous is not None and previous[0] == merged:  # the sections agree: validated already
            scaled[scale] = previous[1:]
            continue
        cfg = _validated(merged, scale, section, common)
        resolved = _resolve_all(cfg, scale, section, common, previous[2] if previous else {})
        scaled[scale] = (cfg, resolved)
        previous = (merged, cfg, resolved)
    _refuse_scale_dependent_runs(common, sections, {s: scaled[s][0] for s in SCALES})
    twins = {scale: _twin_runs(*scaled[scale]) for scale in SCALES}
    if set(twins["smoke"]) != set(twins["full"]):
        differ = sorted(set(twins["smoke"]) ^ set(twins["full"]))[0]
        raise ConfigError(
            f"'own_models': the run '{differ[1]}' of study '{differ[0]}' is twinned at one scale only; the "
            "scales may change sizes but not which runs exist (a scale changed the run's model.arch or "
            "model.checkpointing)"
        )
    chosen = _resolve_scale(scaled[SCALES[0]][0].scale)
    cfg, resolved = scaled[chosen]
    resolved = {**resolved, **twins[chosen]}
    # Computed values of known-valid types: set on the validated Config, not revalidated.
    update: dict[str, Any] = {"resolved_scale": chosen, "scales": sections}
    if env.get(MIRROR_ENV):
        update["data"] = cfg.data.model_copy(update={"mirror": env[MIRROR_ENV]})
    cfg = cfg.model_copy(update=update)
    runs: dict[str, dict[str, RunConfig]] = {study: {} for study in cfg.studies}
    for (study, run), (_, rc) in resolved.items():
        rc.model._folder = folder
        runs[study][run] = rc
    cfg._runs = runs
    return cfg


COMPUTED_RUN_KEYS = ("own_model", "reference_run")
"""Run keys loading sets on the runs of `own_models`, never read from the file."""


def _twin_runs(cfg: Config, resolved: Resolved) -> Resolved:
    """For each of `own_models`, a twin `<run>.<name>` of every selected run whose model
    is the one it replaces: the same mapping with the model section built by the user's
    factory (arch custom) from the reference's keys and the model's `options`."""
    out: Resolved = {}
    for name, own in cfg.own_models.items():
        selected = _selected_runs(cfg, resolved, name)
        for (study, run), (mapping, rc) in resolved.items():
            if (study, run) not in selected or rc.model.arch != own.replaces or rc.model.checkpointing != "none":
                continue
            twin = f"{run}.{name}"
            if (study, twin) in resolved:
                raise ConfigError(
                    f"'own_models.{name}': its twin of run '{run}' would be named '{twin}', which study "
                    f"'{study}' already has; rename that run or the model"
                )
            model = {**rc.model.model_dump(mode="json", exclude={"factory", "options"}),
                     "arch": "custom", "factory": own.factory, "options": own.options}
            twin_mapping = {**mapping, "model": model, "own_model": name, "reference_run": run}
            try:
                twin_rc = RunConfig.model_validate(twin_mapping)
            except ValidationError as err:
                raise ConfigError(
                    f"'own_models.{name}' cannot stand beside run '{run}' of study '{study}': "
                    + format_error(err, "", RunConfig)
                ) from None
            out[study, twin] = (twin_mapping, twin_rc)
    return out


def _selected_runs(cfg: Config, resolved: Resolved, name: str) -> set[tuple[str, str]]:
    """The (study, run) pairs `own_models.<name>.studies` selects (all when unset). A
    study, run or grid named there must hold a run the model can stand beside (of the
    arch it `replaces`, without activation checkpointing), or it would twin nothing."""
    own = cfg.own_models[name]
    studies = own.studies
    if studies is None:
        return set(resolved)

    def twinnable(study: str, run: str) -> bool:
        model = resolved[study, run][1].model
        return model.arch == own.replaces and model.checkpointing == "none"

    def refuse_if_nothing_to_twin(study: str, runs: list[str], where: str, what: str) -> None:
        if not any(twinnable(study, run) for run in runs):
            arches = sorted({resolved[study, run][1].model.arch for run in runs})
            raise ConfigError(
                f"'{where}': {what} trains {', '.join(arches)} models, none of them the {own.replaces} "
                f"(without activation checkpointing) that 'own_models.{name}.replaces' names: nothing to stand beside"
            )

    selected = set()
    for study, which in studies.items():
        here = f"own_models.{name}.studies.{study}"
        if study not in cfg.studies:
            raise ConfigError(f"unknown study '{study}' in '{here}'; studies: {', '.join(cfg.studies)}")
        runs = [run for s, run in resolved if s == study]
        if which == "all":
            refuse_if_nothing_to_twin(study, runs, here, f"study '{study}'")
            selected.update((study, run) for run in runs)
            continue
        grids = sorted({resolved[study, run][1].grid for run in runs} - {None})
        plain = [run for run in runs if not resolved[study, run][1].grid]
        for i, wanted in enumerate(which):
            matching = [run for run in runs if run == wanted or resolved[study, run][1].grid == wanted]
            if not matching:
                allowed = [f"runs {', '.join(plain)}" if plain else "", f"grids {', '.join(grids)}" if grids else ""]
                raise ConfigError(
                    f"bad value '{wanted}' for '{here}[{i}]'; allowed: 'all', or the study's "
                    + "; ".join(a for a in allowed if a)
                )
            refuse_if_nothing_to_twin(study, matching, f"{here}[{i}]", f"'{wanted}'")
            selected.update((study, run) for run in matching)
    return selected


def _refuse_keys_set_twice(common: dict, section: dict, scale: str, path: tuple = ()) -> None:
    """A key the scale section sets must not also be set in the common sections: one of
    the two values would be silently ignored."""
    for key, value in section.items():
        if key not in common:
            continue
        here = path + (key,)
        if isinstance(value, dict) and isinstance(common[key], dict):
            _refuse_keys_set_twice(common[key], value, scale, here)
            continue
        dotted = ".".join(map(str, here))
        raise ConfigError(
            f"'{dotted}' is held per scale, so it cannot also be set for every scale: "
            f"set 'scales.{scale}.{dotted}' (and 'scales.{_other(scale)}.{dotted}') instead"
        )


def _other(scale: str) -> str:
    return next(s for s in SCALES if s != scale)


def _refuse_scale_dependent_runs(common: dict, sections: dict, cfgs: dict[str, Config]) -> None:
    """The scales may change sizes and values but not which datasets, studies or runs
    exist, so the stage list is the same on every machine. The section named is the one
    that declares a name the common sections lack, or else the one that sets the `vary`
    of a grid whose size differs."""
    smoke, full = (_run_names(cfgs[s]) for s in SCALES)
    if smoke == full:
        return
    at_fault = [s for s in SCALES if _declared_names(deep_merge(common, sections.get(s) or {})) != _declared_names(common)]
    if not at_fault:
        differing = {(study, run.rsplit("-", 1)[0]) for study, runs in set(smoke[1]) ^ set(full[1]) for run in runs}
        at_fault = [
            s for s in SCALES
            if any(_walk_keys(sections.get(s) or {}, ["studies", study, "grids", grid, "vary"])[1] for study, grid in differing)
        ] or list(SCALES)
    named = f"'scales.{at_fault[0]}'" if len(at_fault) == 1 else "'scales.smoke' and 'scales.full'"
    raise ConfigError(f"{named} may change sizes but not which datasets, studies or runs exist")


def _declared_names(raw: dict) -> tuple:
    """Dataset, study, run and grid names as written (a grid's size may come from a scale)."""
    studies = raw.get("studies") if isinstance(raw.get("studies"), dict) else {}
    return (
        sorted(raw.get("datasets") or {}),
        sorted(
            (s, sorted((st or {}).get("runs") or {}), sorted((st or {}).get("grids") or {}))
            for s, st in studies.items()
            if isinstance(st, dict)
        ),
    )


def _resolve_scale(requested: str) -> str:
    if requested != "auto":
        return requested
    from tdiag import cuda_probe

    return "full" if cuda_probe.cuda_available() else "smoke"


def _validated(merged: dict, scale: str, section: dict, common: dict) -> Config:
    try:
        return Config.model_validate(merged)
    except ValidationError as err:
        inside = _section_at_fault(section, common, key_path(err, Config))
        raise ConfigError(format_error(err, f"scales.{scale}" if inside else "", Config)) from None


NAMED_MAPPINGS = ("datasets", "studies", "runs", "grids")
"""Mappings whose keys are names (checked as names, so an error there is about a key)."""


def _section_at_fault(section: Any, common: Any, loc: list) -> bool:
    """Whether an error at `loc` is named under the scale's section: where the section set
    the key. A check across the keys of a mapping both set is named where it is common,
    unless it is a mapping of names to which the section added one."""
    node, there = _walk_keys(section, loc)
    if not there:
        return False
    in_common, common_there = _walk_keys(common, loc)
    if not (isinstance(node, dict) and common_there):
        return True
    added = isinstance(in_common, dict) and not set(node) <= set(in_common)
    return bool(loc) and loc[-1] in NAMED_MAPPINGS and added


def _walk_keys(node: Any, path: list) -> tuple[Any, bool]:
    """Follow `path` (keys and list indices) into a parsed mapping.

    Returns the node reached, and whether all of `path` was there; a path that goes on
    past a list or value (e.g. `betas.1` in a list of one) counts as there: the key
    written there is the one at fault.
    """
    for part in path:
        if isinstance(node, dict):
            if part not in node:
                return node, False
            node = node[part]
        elif isinstance(node, (list, tuple)) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return node, True
    return node, True


def _run_names(cfg: Config) -> tuple:
    return (
        tuple(sorted(cfg.datasets)),
        tuple(sorted((s, tuple(sorted(st.run_overrides()))) for s, st in cfg.studies.items())),
    )


def _resolve_all(cfg: Config, scale: str, section: dict, common: dict, known: Resolved) -> Resolved:
    """Every run of every study: its merged mapping and that mapping validated as a RunConfig.

    A run whose mapping equals its mapping in `known` (the other scale's runs) keeps the
    RunConfig from there. An error is named under `scales.<scale>` where `section` (that
    scale's section) set the key at fault rather than the common sections (`common`).
    """
    out: Resolved = {}
    for study, st in cfg.studies.items():
        in_section, in_common = _study_section(section, study), _study_section(common, study)
        # Only the keys the study sets: an explicit null (e.g. `max_steps: null` beside
        # `epochs`, `eval_every: null`) must reach the run, not fall back to its default.
        defaults = st.model_dump(mode="json", exclude={"runs", "grids", "priority"}, exclude_unset=True)
        for grid_name, grid in st.grids.items():
            grid_prefix = f"scales.{scale}." if grid_name in (in_section.get("grids") or {}) else ""
            _check_grid_keys(f"{grid_prefix}studies.{study}.grids.{grid_name}", grid)
        for run, (where, overrides) in st.run_overrides().items():
            mapping = deep_merge(defaults, overrides)
            if (study, run) in known and known[study, run][0] == mapping:
                out[study, run] = known[study, run]
                continue
            grid_name = where.removeprefix("grids.") if where.startswith("grids.") else None

            def named(loc: list, kind: str) -> str:
                """Where the user wrote the run's key `loc` (pydantic error type `kind`)."""
                prefix = f"scales.{scale}." if _section_sets(in_section, in_common, where, loc) else ""
                here = f"{prefix}studies.{study}.{where}"
                located = grid_name and _grid_locator(here, grid_name, st.grids[grid_name], run, defaults)(loc, kind)
                return located or ".".join([here, *map(str, loc)])

            computed = [key for key in COMPUTED_RUN_KEYS if key in mapping]
            if computed:
                raise ConfigError(f"unknown key '{named([computed[0]], 'extra_forbidden')}' (it is computed, not set)")
            try:
                rc = RunConfig.model_validate(mapping)
            except ValidationError as err:
                raise ConfigError(format_error(err, "", RunConfig, named)) from None
            if rc.dataset not in cfg.datasets:
                raise ConfigError(f"bad value {rc.dataset!r} for '{named(['dataset'], '')}'; allowed: {', '.join(cfg.datasets)}")
            stop, metrics = rc.train.stop_when, cfg.datasets[rc.dataset].EVAL_METRICS
            if stop is not None and stop.metric not in metrics:
                loc = ["train", "stop_when", "metric"]
                if grid_name and _walk_keys(overrides, loc)[1]:  # the grid's own key
                    written = named(loc, "")
                else:  # the run's own key, or else the study's
                    entry = where.split(".") if _walk_keys(overrides, loc)[1] else []
                    in_scale = _walk_keys(_mapping_at(in_section, entry), loc)[1]
                    written = ".".join([*(["scales", scale] if in_scale else []), "studies", study, *entry, *loc])
                raise ConfigError(
                    f"bad value {stop.metric!r} for '{written}' (run '{run}'); the evaluations of its dataset "
                    f"'{rc.dataset}' report: {', '.join(metrics)}"
                )
            out[study, run] = (mapping, rc)
    return out


def _study_section(section: dict, study: str) -> dict:
    return _mapping_at(section, ["studies", study])


def _mapping_at(node: dict, path: list) -> dict:
    """The mapping at `path` in `node`, or an empty one where there is none."""
    found, there = _walk_keys(node, path)
    return found if there and isinstance(found, dict) else {}


def _section_sets(in_section: dict, in_common: dict, where: str, loc: list) -> bool:
    """Whether a scale's section of a study set the run key `loc` (rather than the common
    study): at the study level, in the run's own entry, or (a grid run) in its grid's
    overrides or varied values."""
    if loc and _section_at_fault(in_section, in_common, loc):
        return True
    parts = where.split(".")
    entry, there = _walk_keys(in_section, parts)
    if not there or not isinstance(entry, dict):
        return False
    if not where.startswith("grids."):
        return bool(loc) and _section_at_fault(entry, _mapping_at(in_common, parts), loc)
    common_overrides = _mapping_at(in_common, parts + ["overrides"])
    if loc and _section_at_fault(entry.get("overrides") or {}, common_overrides, loc):
        return True
    varied = entry.get("vary") if isinstance(entry.get("vary"), dict) else {}
    for axis, values in varied.items():
        for dotted in [axis] + [k for v in values or [] if isinstance(v, dict) for k in v]:
            keys = dotted.split(".")
            if keys[: len(loc)] == loc or loc[: len(keys)] == keys:
                return True
    return False


def _check_grid_keys(here: str, grid: GridConfig) -> None:
    """Refuse what merging a grid's varied keys would silently drop: an override that is
    not a mapping but has a varied key inside it, or a varied key inside another."""
    varied = {key for variant in grid.variants() for key in variant}
    for dotted in sorted(varied):
        parts = dotted.split(".")
        node: Any = grid.overrides
        for depth in range(1, len(parts)):
            if not isinstance(node, dict) or parts[depth - 1] not in node:
                break
            node = node[parts[depth - 1]]
            if not isinstance(node, dict):
                raise ConfigError(
                    f"bad value {node!r} for '{here}.overrides.{'.'.join(parts[:depth])}': "
                    f"must be a mapping (vary sets '{dotted}' inside it)"
                )
        inner = sorted(other for other in varied if other.startswith(f"{dotted}."))
        if inner:
            raise ConfigError(f"'{here}.vary': '{dotted}' and '{inner[0]}' are both varied; the second would replace the first")


def _grid_locator(here: str, grid_name: str, grid: GridConfig, run: str, defaults: dict):
    """For errors in a grid's run: the path in the grid (`here`) the user wrote the key at.

    A run's keys come, later winning, from the study, the grid's `overrides`, then its
    `vary` values (GridConfig.variants). The run named `<grid>[-<dataset>]-<n>` is the
    n-th combination of the axes, the last axis varying fastest.
    """
    def overrides_fail(loc: list) -> bool:
        """Whether the study's defaults with the grid's overrides, no varied value, fail at `loc`."""
        try:
            RunConfig.model_validate(deep_merge(defaults, {"dataset": dataset, **grid.overrides}))
        except ValidationError as err:
            return key_path(err, RunConfig) == loc
        return False

    n = int(run.rsplit("-", 1)[1])
    axes = list(grid.vary.items())
    picks = list(itertools.product(*(range(len(values)) for _, values in axes)))[n - 1]
    dataset_index = 0
    if grid.datasets and len(grid.datasets) > 1:
        dataset_index = grid.datasets.index(run.removeprefix(f"{grid_name}-").rsplit("-", 1)[0])
    dataset = grid.datasets[dataset_index] if grid.datasets else defaults.get("dataset")

    def varied(loc: list, kind: str, within: bool) -> Optional[str]:
        """The varied value that sets `loc` (within=False), or one that sets a key in
        the section `loc` (within=True), as the path it was written at."""
        for (axis, values), i in reversed(list(zip(axes, picks))):
            value = values[i]
            for dotted in reversed(list(value) if isinstance(value, dict) else [axis]):
                parts = dotted.split(".")
                if (parts[: len(loc)] == loc) if within else (loc[: len(parts)] == parts):
                    rest = "".join(f".{p}" for p in loc[len(parts):])
                    if isinstance(value, dict):
                        return f"{here}.vary.{axis}[{i}].{dotted}{rest}"
                    if kind == "extra_forbidden":
                        return f"{here}.vary.{axis}"
                    return f"{here}.vary.{axis}[{i}]{rest}"
        return None

    def locate(loc: list, kind: str) -> Optional[str]:
        if not loc:
            return None
        if loc == ["dataset"] and grid.datasets:
            return f"{here}.datasets[{dataset_index}]"
        node, there = _walk_keys(grid.overrides, loc)
        in_overrides = there and node is not grid.overrides
        # A check across keys of a section (or an unknown key's section) that the
        # overrides pass without the varied values is the varied values' fault.
        path = varied(loc, kind, within=False)
        if path is None and not (in_overrides and overrides_fail(loc)):
            path = varied(loc, kind, within=True)
        if path is None and in_overrides:
            path = f"{here}.overrides." + ".".join(str(p) for p in loc)
        return path

    return locate
