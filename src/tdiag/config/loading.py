"""Loading params.yaml: the file, then the `scales.<scale>` section, then overrides.

Both scale sections are validated on every load, runs included, so a typo in the
section not in use fails now rather than on another machine. Each distinct merged
mapping is validated once: the file itself, and each scale's merge (unless the section
changes nothing); a run is validated again only where a scale section changed it. The
chosen scale's Config and resolved runs are kept, so `Config.run` is a lookup.
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
        return validate(raw or {}, overrides, env=env)
    except OverrideError:
        raise
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def validate(raw: Any, overrides: list[str] = (), *, env: Optional[dict] = None) -> Config:
    """Validate a parsed params mapping into a frozen Config with every run resolved.

    `overrides` (`key.path=value`) win over both the file and its `scales` section.
    """
    env = os.environ if env is None else env
    if not isinstance(raw, dict):
        raise ConfigError("params must be a mapping of sections (scale, data, datasets, studies, ...)")
    if "resolved_scale" in raw:
        raise ConfigError("unknown key 'resolved_scale' (it is computed, not set)")
    raw = apply_overrides(raw, list(overrides))  # so `--set scale=...` picks the scale
    sections = raw.get("scales") or {}
    if not isinstance(sections, dict):
        raise ConfigError("bad value for 'scales': must be a mapping of smoke/full sections")
    file_only = {k: v for k, v in raw.items() if k != "scales"}
    base = _validated(raw, "")
    base_runs = _resolve_all(base, "", {})
    scaled: dict[str, tuple[Config, Resolved]] = {}
    for scale in SCALES:
        section = sections.get(scale) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"bad value for 'scales.{scale}': must be a mapping")
        merged = deep_merge(file_only, section)
        if merged == file_only:  # the section changes nothing: its Config is the file's
            scaled[scale] = (base, base_runs)
            continue
        cfg = _validated(apply_overrides(merged, list(overrides)), f"scales.{scale}", keys_in=section)
        if _run_names(cfg) != _run_names(base):
            raise ConfigError(f"'scales.{scale}' may change sizes but not which datasets, studies or runs exist")
        # The file's runs resolved above, so a failure here comes from this section.
        scaled[scale] = (cfg, _resolve_all(cfg, f"scales.{scale}.", base_runs))
    chosen = _resolve_scale(base.scale)
    cfg, resolved = scaled[chosen]
    # Computed values of known-valid types: set on the validated Config, not revalidated.
    update: dict[str, Any] = {"resolved_scale": chosen, "scales": sections}
    if env.get(MIRROR_ENV):
        update["data"] = cfg.data.model_copy(update={"mirror": env[MIRROR_ENV]})
    cfg = cfg.model_copy(update=update)
    runs: dict[str, dict[str, RunConfig]] = {study: {} for study in cfg.studies}
    for (study, run), (_, rc) in resolved.items():
        runs[study][run] = rc
    cfg._runs = runs
    return cfg


def _resolve_scale(requested: str) -> str:
    if requested != "auto":
        return requested
    from tdiag import devices  # imports torch: only `scale: auto` needs it

    return "full" if devices.cuda_available() else "smoke"


def _validated(raw: dict, prefix: str, keys_in: Optional[dict] = None) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        # Report the error under `scales.<scale>` only when that section set the key.
        inside = keys_in is not None and _walk_keys(keys_in, key_path(err, Config))[1]
        raise ConfigError(format_error(err, prefix if inside else "", Config)) from None


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


def _resolve_all(cfg: Config, prefix: str, known: Resolved) -> Resolved:
    """Every run of every study: its merged mapping and that mapping validated as a RunConfig.

    A run whose mapping equals its mapping in `known` (the file's runs, where a scale
    section leaves the run as it is) keeps the RunConfig from there.
    `prefix` goes before the key path in errors (e.g. `scales.full.`).
    """
    out: Resolved = {}
    for study, st in cfg.studies.items():
        # Only the keys the study sets: an explicit null (e.g. `max_steps: null` beside
        # `epochs`, `eval_every: null`) must reach the run, not fall back to its default.
        defaults = st.model_dump(mode="json", exclude={"runs", "grids", "priority"}, exclude_unset=True)
        for grid_name, grid in st.grids.items():
            _check_grid_keys(f"{prefix}studies.{study}.grids.{grid_name}", grid)
        for run, (where, overrides) in st.run_overrides().items():
            mapping = deep_merge(defaults, overrides)
            if (study, run) in known and known[study, run][0] == mapping:
                out[study, run] = known[study, run]
                continue
            here = f"{prefix}studies.{study}.{where}"
            grid_name = where.removeprefix("grids.") if where.startswith("grids.") else None
            locate = _grid_locator(here, grid_name, st.grids[grid_name], run, defaults) if grid_name else None
            try:
                rc = RunConfig.model_validate(mapping)
            except ValidationError as err:
                raise ConfigError(format_error(err, here, RunConfig, locate)) from None
            if rc.dataset not in cfg.datasets:
                named = (locate and locate(["dataset"], "")) or f"{here}.dataset"
                raise ConfigError(f"bad value {rc.dataset!r} for '{named}'; allowed: {', '.join(cfg.datasets)}")
            out[study, run] = (mapping, rc)
    return out


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
