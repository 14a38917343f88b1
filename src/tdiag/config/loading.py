"""Loading params.yaml: the file, then the `scales.<scale>` section, then overrides.

Both scale sections are validated on every load, runs included, so a typo in the
section not in use fails now rather than on another machine. Each distinct merged
mapping is validated once: the file itself, and each scale's merge (unless the section
changes nothing); a run is validated again only where a scale section changed it. The
chosen scale's Config and resolved runs are kept, so `Config.run` is a lookup.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import ValidationError

from tdiag.config.errors import ConfigError, format_error, key_path
from tdiag.config.overrides import apply_overrides, deep_merge
from tdiag.config.schema import Config, RunConfig

MIRROR_ENV = "TDIAG_DATA_MIRROR"
SCALES = ("smoke", "full")

Resolved = dict[tuple[str, str], tuple[dict, RunConfig]]
"""(study, run) -> (the run's merged mapping, that mapping validated)."""


def load(path: str | Path = "params.yaml", overrides: list[str] = (), *, env: Optional[dict] = None) -> Config:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (run from the project root or pass --params)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    try:
        return validate(raw or {}, overrides, env=env)
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
        node, inside = keys_in, keys_in is not None
        for part in key_path(err, Config):
            if not isinstance(node, dict) or part not in node:
                inside = False
                break
            node = node[part]
        raise ConfigError(format_error(err, prefix if inside else "", Config)) from None


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
        for run, (where, overrides) in st.run_overrides().items():
            mapping = deep_merge(defaults, overrides)
            if (study, run) in known and known[study, run][0] == mapping:
                out[study, run] = known[study, run]
                continue
            try:
                rc = RunConfig.model_validate(mapping)
            except ValidationError as err:
                raise ConfigError(format_error(err, f"{prefix}studies.{study}.{where}", RunConfig)) from None
            if rc.dataset not in cfg.datasets:
                raise ConfigError(
                    f"bad value {rc.dataset!r} for '{prefix}studies.{study}.{where}.dataset'; "
                    f"allowed: {', '.join(cfg.datasets)}"
                )
            out[study, run] = (mapping, rc)
    return out
