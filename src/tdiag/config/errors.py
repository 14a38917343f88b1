"""Configuration errors, and pydantic's validation errors rewritten as one line each.

The line names the key's full path as written in params.yaml (pydantic's discriminator
tags are not keys in the file, so they are dropped) and, for an unknown key, the keys
allowed there.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Optional, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from tdiag.errors import UserError


TAG_FIELDS = ("task", "kind")
"""The fields that tag the members of a discriminated union (a dataset's `task`, a claim
rule's `kind`): their value is in the error location but is not a key of the file."""


class ConfigError(UserError):
    """A problem with the user's configuration: printed as one line, exit code 2."""


class OverrideError(ConfigError):
    """A `key.path=value` override that cannot be read: about the override, not the file."""


def key_path(err: ValidationError, model: type[BaseModel]) -> list:
    """The path, as keys of the file, of the first error `err` reports against `model`."""
    return _walk(tuple(err.errors()[0]["loc"]), model)[0]


def format_error(
    err: ValidationError,
    prefix: str,
    model: type[BaseModel],
    locate: Optional[Callable[[list, str], Optional[str]]] = None,
) -> str:
    """The first error of `err` (validating `model`) as one line; `prefix` goes before the path.

    `locate(path, kind)`, where given, maps the error's path in the validated mapping
    (and pydantic's error type) to the path the user wrote, or None for the default
    `prefix.path`: a grid run's keys come from the grid's `vary` and `overrides`.
    """
    first = err.errors()[0]
    loc, parent = _walk(tuple(first["loc"]), model)
    kind = first["type"]
    path = locate(loc, kind) if locate else None
    if path is None:
        path = ".".join([prefix] * bool(prefix) + [str(p) for p in loc])
    if kind == "extra_forbidden":
        if isinstance(parent, type) and issubclass(parent, BaseModel):
            allowed = ", ".join(k for k in parent.model_fields if k != "resolved_scale")
            return f"unknown key '{path}'; allowed keys: {allowed}"
        return f"unknown key '{path}'"
    if kind == "missing":
        if loc and isinstance(loc[-1], int):  # a tuple too short, e.g. betas: [0.9]
            return f"missing value '{path}': the list needs {loc[-1] + 1} or more values"
        return f"missing key '{path}'"
    if kind == "literal_error":
        return f"bad value {first.get('input')!r} for '{path}'; allowed: {first['ctx']['expected']}"
    if kind == "union_tag_invalid":
        tag = first["ctx"]["discriminator"].strip("'")
        return f"bad value {first['ctx']['tag']!r} for '{path}.{tag}'; allowed: {first['ctx']['expected_tags']}"
    message = first["msg"].removeprefix("Value error, ")
    if isinstance(first.get("input"), dict):  # a check across keys of a section
        return f"'{path}': {message}"
    return f"bad value {first.get('input')!r} for '{path}': {message}"


def _walk(loc: tuple, model: type[BaseModel]) -> tuple[list, Any]:
    """Follow an error location through the schema.

    Returns the location with pydantic's discriminator tags removed (they are not keys
    in the file) and the schema node that holds the last key, for "allowed keys".
    """
    clean: list = []
    node: Any = model
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        if part == "[key]":  # pydantic's marker for an error in a mapping's key itself
            continue
        clean.append(part)
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            parent, node = node, (field.annotation if field else None)
        elif get_origin(node) is dict:
            parent, node = node, get_args(node)[1]
        else:
            parent, node = node, None
        tagged = _union_members(node)
        if tagged and parts and parts[0] in tagged:
            node = tagged[parts.pop(0)]
    return clean, parent if loc else model


def _union_members(annotation: Any) -> dict:
    """For a discriminated union of models: tag value -> model class."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    candidates = get_args(annotation) if get_origin(annotation) is Union else (annotation,)
    members = {}
    for member in candidates:
        if not (isinstance(member, type) and issubclass(member, BaseModel)):
            continue
        for field in TAG_FIELDS:
            if field in member.model_fields:
                for tag in get_args(member.model_fields[field].annotation):
                    members[tag] = member
    return members


def _unwrap(annotation: Any) -> Any:
    """Strip Optional/Annotated/Union-of-one so the walk reaches the model class."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union:
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation
