"""msgspec types to JSON Schema components: the one place schemas of the contract are made.

A document collects every type it mentions into one `Schemas` (one `schema_components` call, so
a type used twice is one component referenced twice). Components are named after their classes;
two classes of one name get the names in `RENAMES` (an unlisted collision is an error, so a new
one cannot slip in under a dotted name). Unions that clients want to name (every server frame,
every chat event) are components of their own, listed by the document.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

REF = "#/components/schemas/{name}"

# msgspec names colliding classes by their dotted path; these are the stable names instead.
RENAMES = {
    "shared.wire.Error": "ErrorFrame",
    "shared.chat_wire.Error": "ChatError",
}


def _colliding() -> tuple[Any, ...]:
    from shared import chat_wire, wire

    return (wire.Error, chat_wire.Error)


_COLLIDING = _colliding()


class Schemas:
    """The components of `types` (and of the named unions `named`), and each type's schema."""

    def __init__(self, types: Iterable[Any], named: Mapping[str, Any] | None = None) -> None:
        named = dict(named or {})
        # Both `Error` classes always take part, so each has its RENAMES name in every document
        # (a name must not depend on which other types a document happens to contain).
        ordered = list(dict.fromkeys([*named.values(), *types, *_COLLIDING]))
        schemas, components = msgspec.json.schema_components(ordered, ref_template=REF)
        text = json.dumps([schemas, components])
        for dotted in [name for name in components if "." in name]:
            if dotted not in RENAMES:
                raise ValueError(f"schema name collision: add {dotted!r} to RENAMES")
            text = text.replace(
                json.dumps(REF.format(name=dotted)), json.dumps(REF.format(name=RENAMES[dotted]))
            )
        schemas, components = _tidy(json.loads(text))
        self.components: dict[str, Any] = {
            RENAMES.get(name, name): schema for name, schema in components.items()
        }
        self._by_type = dict(zip(ordered, schemas, strict=True))
        for name, type_ in named.items():
            self.components[name] = self._by_type[type_]
            self._by_type[type_] = {"$ref": REF.format(name=name)}
        self.components = dict(sorted(self.components.items()))

    def of(self, type_: Any) -> dict[str, Any]:
        """The schema of `type_` (a `$ref` for structs and named unions)."""
        schema: dict[str, Any] = self._by_type[type_]
        return schema


def _tidy(value: Any) -> Any:
    """Descriptions from docstrings as one paragraph (msgspec keeps their line breaks and
    indentation, which renderers show as code blocks)."""
    if isinstance(value, dict):
        out = {k: _tidy(v) for k, v in value.items()}
        if isinstance(out.get("description"), str):
            out["description"] = re.sub(r"\s*\n\s*", " ", out["description"]).strip()
        return out
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    return value


def fields(struct: type[msgspec.Struct]) -> list[tuple[str, dict[str, Any], bool]]:
    """`(wire name, schema, required)` of each field of a flat struct (query, path, headers).

    An optional field is simply not required: a parameter is absent, never `null`, so
    `X | None` becomes the schema of `X` (with the field's description kept)."""
    schema = msgspec.json.schema(struct)
    definition = schema["$defs"][struct.__name__]
    required = set(definition.get("required", ()))
    out = []
    for name, prop in definition.get("properties", {}).items():
        options = prop.get("anyOf")
        if options and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            unwrapped = dict(rest[0]) if len(rest) == 1 else {"anyOf": rest}
            for key in ("description", "title"):
                if key in prop:
                    unwrapped[key] = prop[key]
            prop = unwrapped
        elif prop.get("default", 0) is None:
            prop = {k: v for k, v in prop.items() if k != "default"}
        out.append((name, prop, name in required))
    return out


def discriminators_as_names(value: Any) -> Any:
    """`value` with OpenAPI discriminator objects turned into AsyncAPI's discriminator (the
    property name only): the AsyncAPI schema object takes a string there."""
    if isinstance(value, dict):
        out = {k: discriminators_as_names(v) for k, v in value.items()}
        discriminator = out.get("discriminator")
        if isinstance(discriminator, dict):
            out["discriminator"] = discriminator["propertyName"]
        return out
    if isinstance(value, list):
        return [discriminators_as_names(v) for v in value]
    return value
