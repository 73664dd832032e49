"""Training settings as pydantic models, read from YAML files (``--config FILE``).

Every training job's settings subclass :class:`SettingsModel` (frozen, unknown keys
forbidden). Nested sections may be plain dataclasses (the loss weights, the model
dimensions): pydantic builds them from mappings and runs their ``__post_init__`` checks.
:func:`load_settings` turns every mistake into one ``ValueError`` line naming the file and
the key: unknown keys (with the known ones listed), wrong types, values a check rejects.
Keys left out take the defaults.

Types are checked in pydantic's lax mode: YAML 1.1 reads ``1e-4`` as a string (it wants
``1.0e-4``), and number fields accept such strings, since that is what the user meant.
:func:`settings_json_schema` gives the JSON Schema of a settings model (number fields also
accept such strings there), so that the workflow can check a YAML file before a job runs.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

__all__ = ["SettingsModel", "load_settings", "relative_to_file", "settings_json_schema"]

SettingsT = TypeVar("SettingsT", bound="SettingsModel")

#: A number as YAML 1.1 may leave it, a string (``1e-4``).
NUMBER_STRING_PATTERN = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


class SettingsModel(BaseModel):
    """Base of the training settings: frozen, unknown keys are errors, defaults unchecked."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------
# Errors as one line


def _fields_of(kind: Any) -> dict[str, Any] | None:
    """Field name -> annotation of a settings model or dataclass (None for other types)."""
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return {name: info.annotation for name, info in kind.model_fields.items()}
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return {f.name: hints[f.name] for f in dataclasses.fields(kind) if f.init}
    return None


def _walk(cls: type, loc: Sequence[int | str]) -> tuple[list[str], Any]:
    """The key path that ``loc`` names in ``cls`` (union-member tags left out) and the
    type found there."""
    names: list[str] = []
    kind: Any = cls
    for part in loc:
        fields = _fields_of(kind)
        if fields is not None:
            if part not in fields:
                break
            names.append(str(part))
            kind = fields[part]
            continue
        origin = typing.get_origin(kind)
        if origin in (dict, Mapping) or kind in (dict, Mapping):
            names.append(str(part))
            args = typing.get_args(kind)
            kind = args[1] if len(args) == 2 else Any
            continue
        if origin in (typing.Union, types.UnionType):
            members = [arg for arg in typing.get_args(kind) if arg is not type(None)]
            if len(members) == 1:  # X | None: pydantic adds no tag for it
                kind = members[0]
                fields = _fields_of(kind)
                if fields is not None and part in fields:
                    names.append(str(part))
                    kind = fields[part]
                    continue
        break  # a union member's tag: the key ends here
    return names, kind


def _message(error: Mapping[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    bounds = {"greater_than_equal": ("ge", ">="), "greater_than": ("gt", ">"),
              "less_than_equal": ("le", "<="), "less_than": ("lt", "<")}
    if kind in bounds:
        key, sign = bounds[kind]
        return f"must be {sign} {ctx[key]}, got {error['input']!r}"
    text = str(error["msg"])
    return f"{text[:1].lower()}{text[1:]}, got {error['input']!r}"


def describe_validation_error(cls: type, error: ValidationError) -> str:
    """The first problem of ``error`` (raised validating ``cls``) as one line naming the key;
    the several errors of one union-typed key are joined."""
    errors = error.errors(include_url=False)
    first = errors[0]
    names, kind = _walk(cls, first["loc"])
    key = ".".join(names)
    if first["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        unknown = ".".join([*names, str(first["loc"][len(names)])])
        section = f" in {key}" if key else ""
        known = ", ".join(_fields_of(kind) or ())
        return f"unknown key {unknown}{section} (known: {known})"
    same_key = [e for e in errors if _walk(cls, e["loc"])[0] == names]
    if len(same_key) > 1 and len(first["loc"]) > len(names):  # a union's members
        text = " or ".join(dict.fromkeys(_message(e).rsplit(", got ", 1)[0] for e in same_key))
        text += f", got {first['input']!r}"
    else:
        text = _message(first)
    if not key or text.startswith(f"{key}:"):
        return text
    return f"{key}: {text}"


# ---------------------------------------------------------------------------------------
# Reading and describing


def load_settings(path: str | os.PathLike, cls: type[SettingsT]) -> SettingsT:
    """Read a YAML mapping from ``path`` into the settings model ``cls``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not YAML, not a mapping, an unknown key, a wrong type or a bad value;
            one line starting with the file name.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        first = " ".join(str(error).split())
        raise ValueError(f"{path}: not valid YAML ({first})") from error
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    try:
        return cls.model_validate(values)
    except ValidationError as error:
        message = " ".join(describe_validation_error(cls, error).split())
        raise ValueError(f"{path}: {message}") from None


def relative_to_file(settings: SettingsT, path: str | os.PathLike, names: Sequence[str]
                     ) -> SettingsT:
    """``settings`` with the relative paths in the fields ``names`` made relative to the
    folder of the config file ``path``."""
    folder = Path(path).parent
    changes = {}
    for name in names:
        value = getattr(settings, name)
        if value is not None and not Path(value).is_absolute():
            changes[name] = str(folder / value)
    return settings.model_copy(update=changes)


class _YamlNumbers(GenerateJsonSchema):
    """JSON Schema in which number fields also accept YAML 1.1's number strings."""

    def float_schema(self, schema: core_schema.FloatSchema) -> JsonSchemaValue:
        number = super().float_schema(schema)
        return {"anyOf": [number, {"type": "string", "pattern": NUMBER_STRING_PATTERN}]}


def settings_json_schema(cls: type[SettingsModel]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the YAML files :func:`load_settings` reads into
    ``cls``: types, defaults, bounds, unknown keys refused (cross-field rules are checked
    by :func:`load_settings` only)."""
    return cls.model_json_schema(schema_generator=_YamlNumbers)
