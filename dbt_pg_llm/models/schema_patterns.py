"""JSON-schema ``pattern`` / ``patternProperties`` matched in linear time (RE2), never by backtracking.

An answer is data a run does not control: it echoes its row. jsonschema matches patterns with
Python's ``re``, a backtracking engine: ``"pattern": "^(a+)+$"`` against 30 'a' and a 'b' took 43 s
(doubling per character), holding the GIL the whole time -- no request was sent and the claim
heartbeat thread could not beat, so the live run looked dead (issue 16 §4, decision 0023).

Here the keywords that match patterns against an answer (``pattern``, ``patternProperties``, and
``additionalProperties``, which decides which names the patterns cover) run on google-re2: time
linear in the answer, whatever the pattern. RE2 refuses what needs backtracking (backreferences,
lookaround) and oversized repetitions; ``pattern_problems`` reports those when the schema is parsed,
each naming its key path and the fix, so nothing is paid for before a pattern is known to be
matchable. ``unevaluatedProperties`` beside ``patternProperties`` is refused as well: jsonschema
computes the evaluated names with Python's ``re`` inside code that cannot be replaced piecemeal.

RE2's classes follow JSON Schema's ECMA-262 meaning where Python's differ: ``\\d`` and ``\\w`` are
ASCII, ``$`` is the end of the text (Python's also matched before a final newline).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterator

__all__ = ["compiled_pattern", "pattern_problems", "linear_validator_class"]

# Keywords whose values are data, not subschemas: nothing in them is a pattern.
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
# Keywords whose value maps names (not keywords) to subschemas.
_NAMED_SUBSCHEMAS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas",
                               "dependencies"})
_FIX = ("pg_llm matches patterns with RE2 (linear time: an answer cannot stall the run), which has no "
        "backreferences (\\1) or lookaround ((?=...), (?!...), (?<=...)) and limits repetition counts to 1000; "
        "rewrite the pattern without them (e.g. spell out the alternatives), or check that rule in SQL after "
        "the fill")


@lru_cache(maxsize=None)
def _options():
    import re2

    options = re2.Options()
    options.log_errors = False  # a refused pattern is reported as a schema problem, not printed to stderr
    return options


@lru_cache(maxsize=1024)
def compiled_pattern(pattern: str):
    """``pattern`` compiled by RE2 (re2.error when RE2 refuses it); compiled once per pattern."""
    import re2

    return re2.compile(pattern, _options())


def _search(regex, text: str) -> bool:
    try:
        return regex.search(text) is not None
    except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800"): RE2 matches UTF-8, so U+FFFD it
        return regex.search(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")) is not None


def _schema_keywords(node: Any, where: tuple = ()) -> Iterator[tuple[tuple, str, Any]]:
    """(path, keyword, value) of every keyword used as a keyword (not as a property name or in
    data), depth first."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _schema_keywords(item, where + (i,))
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in _DATA_KEYWORDS:
            continue
        yield where + (key,), key, value
        if key in _NAMED_SUBSCHEMAS and isinstance(value, dict):
            for name, sub in value.items():
                yield from _schema_keywords(sub, where + (key, name))
        else:
            yield from _schema_keywords(value, where + (key,))


def _patterns(node: Any) -> Iterator[tuple[tuple, str]]:
    """(path, regex) of every ``pattern`` value and ``patternProperties`` name."""
    for path, key, value in _schema_keywords(node):
        if key == "pattern" and isinstance(value, str):
            yield path, value
        elif key == "patternProperties" and isinstance(value, dict):
            for name in value:
                yield path + (name,), name


def _keyword_paths(node: Any, keyword: str) -> Iterator[tuple]:
    """The path of every ``keyword`` used as a keyword (not as a property name or in data)."""
    return (path for path, key, _ in _schema_keywords(node) if key == keyword)


def _pointer(parts) -> str:
    return "".join(f"/{p}" for p in parts)


def pattern_problems(schema: Any) -> list[str]:
    """``<JSON pointer>: <what>; <fix>`` for every pattern RE2 cannot match (empty when all can)."""
    import re2

    problems = []
    for where, pattern in _patterns(schema):
        try:
            compiled_pattern(pattern)
        except re2.error as exc:
            reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) \
                else str(exc)
            problems.append(f"{_pointer(where)}: {pattern!r} cannot be matched in linear time ({reason}); {_FIX}")
    if any(True for _ in _keyword_paths(schema, "patternProperties")):
        for where in _keyword_paths(schema, "unevaluatedProperties"):
            problems.append(f"{_pointer(where)}: unevaluatedProperties in a schema with patternProperties is not "
                            "supported (jsonschema would match the property names with Python's backtracking "
                            "regex engine); use additionalProperties beside the patternProperties instead")
    return problems


# -- the keywords, as jsonschema's own (_keywords.py) but matching with RE2 -------------------------
def _pattern(validator, pattern, instance, schema):
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not _search(compiled_pattern(pattern), instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator, patterns, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        regex = compiled_pattern(pattern)
        for name, value in instance.items():
            if _search(regex, name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _additional_properties(validator, additional, instance, schema):
    from jsonschema.exceptions import ValidationError

    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = [compiled_pattern(p) for p in schema.get("patternProperties", {})]
    extras = [name for name in instance
              if name not in properties and not any(_search(regex, name) for regex in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            joined = ", ".join(repr(each) for each in sorted(extras))
            regexes = ", ".join(repr(each) for each in sorted(schema["patternProperties"]))
            yield ValidationError(f"{joined} {verb} not match any of the regexes: {regexes}")
        else:
            verb = "was" if len(extras) == 1 else "were"
            names = ", ".join(repr(each) for each in sorted(extras, key=str))
            yield ValidationError(f"Additional properties are not allowed ({names} {verb} unexpected)")


_LINEAR_KEYWORDS = {"pattern": _pattern, "patternProperties": _pattern_properties,
                    "additionalProperties": _additional_properties}


@lru_cache(maxsize=None)
def linear_validator_class(cls):
    """``cls`` (a jsonschema Draft validator class) with its pattern keywords matched by RE2."""
    import jsonschema

    overrides = {k: f for k, f in _LINEAR_KEYWORDS.items() if k in cls.VALIDATORS}
    return jsonschema.validators.extend(cls, overrides)
