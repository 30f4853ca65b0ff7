"""Hypothesis strategies from the JSON Schemas of the contract documents (the subset msgspec
emits: objects with properties and required, strings with lengths, patterns and formats,
integers with bounds, booleans, null, enums, `anyOf`, local `$ref`s).

Written here because hypothesis-jsonschema no longer works with current Hypothesis releases;
the subset is small and its output is checked against the schema (`valid`), so a gap in it
fails loudly rather than generating wrong "valid" frames.
"""

from __future__ import annotations

import uuid
from typing import Any

import jsonschema
from hypothesis import strategies as st

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
ANY_JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


class Strategies:
    def __init__(self, components: dict[str, Any]) -> None:
        self.components = components

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[1]
            schema = self.components["schemas"][name]
        return schema

    def valid(self, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
        """Values that the schema accepts."""
        schema = self.resolve(schema)
        if "anyOf" in schema:
            return st.one_of([self.valid(option) for option in schema["anyOf"]])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        if "const" in schema:
            return st.just(schema["const"])
        kind = schema.get("type")
        if kind == "object":
            properties = schema.get("properties", {})
            if not properties:
                return st.dictionaries(st.text(max_size=8), JSON_SCALARS, max_size=3)
            required = set(schema.get("required", ()))
            return st.fixed_dictionaries(
                {k: self.valid(v) for k, v in properties.items() if k in required},
                optional={k: self.valid(v) for k, v in properties.items() if k not in required},
            )
        if kind == "array":
            return st.lists(self.valid(schema.get("items", {})), max_size=3)
        if kind == "string":
            if schema.get("format") == "uuid":
                return st.uuids().map(str)
            if "pattern" in schema:
                return st.from_regex(schema["pattern"], fullmatch=True)
            return st.text(
                min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40)
            )
        if kind == "integer":
            return st.integers(schema.get("minimum"), schema.get("maximum"))
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        return ANY_JSON

    def mutated(self, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
        """Valid objects with one thing broken: a required field dropped, a field of the wrong
        type, an unknown field added, or the `type` changed."""
        resolved = self.resolve(schema)
        options = resolved.get("anyOf", [resolved])
        return st.one_of([self._mutated_object(self.resolve(o)) for o in options])

    def _mutated_object(self, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
        def breaking(value: dict[str, Any], how: int, filler: Any) -> dict[str, Any]:
            value = dict(value)
            keys = sorted(value)
            key = keys[how % len(keys)] if keys else "type"
            if how % 4 == 0:
                value.pop(key, None)
            elif how % 4 == 1:
                value[key] = filler
            elif how % 4 == 2:
                value[f"x_{uuid.uuid4().hex[:4]}"] = filler
            else:
                value["type"] = str(filler)
            return value

        return st.builds(breaking, self.valid(schema), st.integers(0, 100), ANY_JSON)


def conforms(components: dict[str, Any], schema: dict[str, Any], value: Any) -> bool:
    validator = jsonschema.Draft202012Validator({"components": components, **schema})
    return bool(validator.is_valid(value))
