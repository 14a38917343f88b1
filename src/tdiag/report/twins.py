"""A study seen with one of the user's own models (params.yaml `own_models`) in place of
the model it replaces: its runs substituted for the runs they stand beside, and the
model keys its factory turns out not to read."""

from __future__ import annotations

import pandas as pd


def beside_reference(reference: pd.DataFrame, own: pd.DataFrame, twinned: dict[str, str]) -> pd.DataFrame:
    """The reference's rows with each twinned run's rows replaced by its twin's, named as
    the reference run: the study as it would be with the user's model in place of the
    model it replaces (`twinned`: own run -> reference run, collect.twins), so a claim's
    rule reads it unchanged."""
    if own.empty:
        return reference
    kept = reference[~reference["run"].isin(set(twinned.values()))] if not reference.empty else reference
    return pd.concat([kept, own.assign(run=own["run"].map(twinned))], ignore_index=True)


def unread_model_keys(reference: pd.DataFrame, own: pd.DataFrame, own_records: pd.DataFrame) -> list[tuple[list[str], list[str]]]:
    """Groups of the own model's runs that trained to the same losses, step for step,
    though the model sections their factory received differ: (the runs, the differing
    `model.*` keys). The factory does not read those keys, so what the study varies
    through them it does not vary in the user's model."""
    train = own_records[own_records["kind"] == "train"] if not own_records.empty else own_records
    if train.empty:
        return []
    first_seed = train[train["seed"] == train.groupby("run")["seed"].transform("min")]
    losses = first_seed.sort_values("step").groupby("run")["loss"].apply(tuple)
    model_columns = [c for c in reference if c.startswith("config.model.")]
    configs = reference.drop_duplicates("run").set_index("run")[model_columns]
    twins = own.drop_duplicates("run").set_index("run")["reference_run"]
    found = []
    for runs in _same_values(losses).values():
        if len(runs) < 2:
            continue
        sections = configs.reindex(twins.reindex(runs))
        differing = [c.removeprefix("config.") for c in model_columns if sections[c].astype(str).nunique() > 1]
        if differing:
            found.append((sorted(runs), differing))
    return found


def _same_values(series: pd.Series) -> dict:
    """Value -> the index labels holding it."""
    groups: dict = {}
    for run, value in series.items():
        groups.setdefault(value, []).append(run)
    return groups
