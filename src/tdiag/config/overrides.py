"""`key.path=value` overrides (`tdiag --set`, Snakemake's `--config`) and merging mappings."""

from __future__ import annotations

import copy
import json
from typing import Any

from tdiag.config import yaml_text
from tdiag.config.errors import OverrideError


def deep_merge(base: dict, override: dict) -> dict:
    """A copy of `base` with `override` merged in, section by section."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def shown(text: str, width: int = 100) -> str:
    """An override as quoted in an error: whole, or its start when it is very long."""
    return f"'{text}'" if len(text) <= width else f"'{text[: width - 3]}...'"


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], YAML-parsed value)."""
    if "=" not in text:
        raise OverrideError(f"override {shown(text)} must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise OverrideError(f"override {shown(text)} has an empty key")
    return key.split("."), yaml_text.parse(raw, f"override {shown(text)}", prefix=key, error=OverrideError) if raw else None


def overrides_from_mapping(mapping: dict, prefix: str = "") -> list[str]:
    """Nested overrides (Snakemake's `--config studies='{toy: {train: {lr: 0.01}}}'`)
    as `key.path=value` strings, one per leaf, so they merge into the file key by key."""
    out = []
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += overrides_from_mapping(value, f"{path}.")
        else:
            # Strings go in raw so YAML types them as the file would ("0.01" -> 0.01).
            out.append(f"{path}={value if isinstance(value, str) else json.dumps(value)}")
    return out


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """A copy of `raw` with each `key.path=value` set, later ones winning."""
    out = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise OverrideError(f"override {shown(text)}: '{k}' is not a section")
        node[keys[-1]] = value
    return out
