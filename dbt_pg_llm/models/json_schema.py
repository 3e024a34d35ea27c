"""A user's JSON schema (an ``extract`` column's), checked before any request is paid for.

``schema_problems(schema, path)`` lists what is wrong with a schema, each problem naming its key
path and the fix (empty when the schema is usable):

* it must be JSON (a mapping of JSON values) and valid for its dialect: jsonschema's
  ``check_schema`` of the right Draft validator class (``$schema``, else Draft 2020-12); an unknown
  ``$schema`` is a problem, not a silent fallback;
* every ``$ref`` / ``$dynamicRef`` / ``$recursiveRef`` must resolve *inside* the schema (``#/...``,
  ``#/$defs/...``, an anchor, or an embedded ``$id``). Nothing is ever fetched: the ``referencing``
  registry used here, and by ``local_validator`` when answers are validated, has a ``retrieve``
  function that refuses. (jsonschema's default registry fetched a remote ``$ref`` over HTTP once
  per answer, with no timeout.)
* every ``pattern`` / ``patternProperties`` name must be one RE2 can match (schema_patterns.py):
  answers are matched in linear time, so one row cannot stall a run (no backreferences or
  lookaround).

``local_validator(schema)`` is the validator of a checked schema (built once per schema); its
pattern keywords match with RE2.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Iterator

from .schema_patterns import linear_validator_class, pattern_problems

__all__ = ["schema_problems", "local_validator", "REF_KEYWORDS"]

REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
# Keywords whose values are data, not subschemas: a "$ref" inside them is not a reference.
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
_JSON_TYPES = "array, boolean, integer, null, number, object, string"
_LOCAL_HINT = ("pg_llm never fetches schemas; copy the referenced schema under $defs and refer to it "
               "as '#/$defs/<name>'")


def _refuse(uri: str):
    """The registry's retrieve function: a reference outside the schema is never fetched."""
    from referencing.exceptions import NoSuchResource

    raise NoSuchResource(ref=uri)


def _registry():
    from referencing import Registry

    return Registry(retrieve=_refuse)  # type: ignore[call-arg]


def _pointer(parts) -> str:
    """A JSON pointer ('/properties/city/type'), appended to the key path of the schema."""
    return "".join(f"/{p}" for p in parts)


def _validator_class(schema: dict):
    """(class, problem): the Draft validator class ``$schema`` names, Draft 2020-12 without one."""
    import jsonschema

    dialect = schema.get("$schema")
    if dialect is None:
        return jsonschema.Draft202012Validator, None
    cls = jsonschema.validators.validator_for(schema, default=None) if isinstance(dialect, str) else None
    if cls is None:
        return None, (f"/$schema: {dialect!r} is not a JSON Schema dialect jsonschema knows; use e.g. "
                      "'https://json-schema.org/draft/2020-12/schema', or drop $schema")
    return cls, None


def _refs(node: Any, where: tuple = ()) -> Iterator[tuple[tuple, str]]:
    """(path, value) of every reference keyword, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in REF_KEYWORDS and isinstance(value, str):
                yield where + (key,), value
            elif key not in _DATA_KEYWORDS:
                yield from _refs(value, where + (key,))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _refs(item, where + (i,))


def _ref_problems(schema: dict, cls) -> list[str]:
    """Resolve every reference with a registry that refuses to retrieve anything."""
    from referencing.exceptions import NoSuchAnchor, PointerToNowhere, Unresolvable

    specification = _specification(cls)
    root = specification.create_resource(schema)
    resolver = _registry().resolver_with_root(root)
    problems = []
    for where, ref in _refs(schema):
        scoped = _scope(resolver, specification, schema, where[:-1])
        try:
            scoped.lookup(ref)
        except (PointerToNowhere, NoSuchAnchor):
            problems.append(f"{_pointer(where)}: {ref!r} points to nothing in this schema; fix the pointer "
                            "(e.g. '#/$defs/<name>' with the schema under $defs)")
        except Unresolvable:
            problems.append(f"{_pointer(where)}: {ref!r} refers outside this schema; only local references "
                            f"are allowed: {_LOCAL_HINT}")
    return problems


def _specification(cls):
    import referencing.jsonschema

    return referencing.jsonschema.specification_with(cls.META_SCHEMA["$schema"])


def _scope(resolver, specification, schema: dict, where: tuple):
    """The resolver at ``where``: the base URI changes under every subschema with its own id."""
    node: Any = schema
    for part in where:
        node = node[part]
        if isinstance(node, dict):
            resource = specification.create_resource(node)
            if isinstance(resource.id(), str):
                resolver = resolver.in_subresource(resource)
    return resolver


def _dialect_problem(schema: dict, cls) -> str | None:
    import jsonschema

    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        where = list(exc.absolute_path)
        hint = f"; a type is one of {_JSON_TYPES}" if where and where[-1] == "type" else ""
        return f"{_pointer(where)}: {exc.message} (checked against {cls.META_SCHEMA['$schema']}){hint}"
    return None


@lru_cache(maxsize=256)
def _checked(canonical: str) -> tuple[tuple[str, ...], Any]:
    """(problems, validator or None) of a schema given as canonical JSON."""
    schema = json.loads(canonical)
    if not isinstance(schema, dict):
        return (": expected a JSON schema mapping, e.g. {type: object, properties: {city: {type: string}}}",), None
    cls, problem = _validator_class(schema)
    if problem:
        return (problem,), None
    problem = _dialect_problem(schema, cls)
    if problem:
        return (problem,), None
    problems = tuple(_ref_problems(schema, cls)) + tuple(pattern_problems(schema))
    if problems:
        return problems, None
    return (), linear_validator_class(cls)(schema, registry=_registry())


def _canonical(schema: Any) -> str:
    return json.dumps(schema, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def schema_problems(schema: Any, path: str = "schema") -> list[str]:
    """Every problem of ``schema`` as ``<path><JSON pointer>: <what>; <fix>`` (empty when usable)."""
    try:
        canonical = _canonical(schema)
    except (TypeError, ValueError) as exc:
        return [f"{path}: not JSON ({exc}); a JSON schema holds only mappings, lists, text, numbers, "
                "booleans and null"]
    problems, _ = _checked(canonical)
    return [f"{path}{p}" for p in problems]


def local_validator(schema: dict):
    """The validator of ``schema`` (checked first: ConfigError if it has problems); its ``$ref``
    resolution never leaves the schema."""
    from ..errors import ConfigError

    problems = schema_problems(schema)
    if problems:
        raise ConfigError(problems, context="JSON schema")
    return _checked(_canonical(schema))[1]
