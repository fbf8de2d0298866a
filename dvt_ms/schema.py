"""Checking documents of ``key: value`` against a list of fields: one validation style for the
run config, the model presets, the demo's parameters and the deployment documents.

A ``Field`` says a key's type, default, doc line and allowed values; a mapping field may hold a
nested document (``fields``), a ``mappings`` field a list of them. ``check_fields`` checks a
whole mapping and returns every problem at once, each naming the key (``preprocess.img_size``,
``exits[2].grid``), the value and where it came from; an unknown key gets the nearest valid key
(or the key another tool's name for it means, ``aliases``). ``raise_problems`` turns the list
into one error (``ConfigError``, ``ManifestError``, ...) whose message lists them all.

Pure Python (no numpy, no YAML): any floor of the package may import it.

    fields = (Field("lr", "float", 5e-4, "peak learning rate", minimum=0.0), ...)
    values, problems = check_fields(fields, {"lr": "fast"}, source="run.yaml")
    raise_problems(problems, "invalid config")   # ConfigError: invalid config:\\n  run.yaml: lr must be ...
"""
import dataclasses
import difflib
import typing

from .errors import ConfigError

__all__ = ["Field", "KINDS", "check_value", "check_fields", "nest_problems", "suggest_key", "raise_problems",
           "format_default"]

# kind -> what the value must be (the words an error uses)
KINDS = {
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "number": "a number (written as one, not quoted)",
    "str": "a string",
    "ints": "a non-empty list of integers",
    "floats": "a non-empty list of numbers",
    "strs": "a non-empty list of non-empty strings",
    "pair": "a list of two numbers [low, high]",
    "mapping": "a mapping of key: value",
    "mappings": "a list of mappings of key: value",
    "any": "any value",
}


@dataclasses.dataclass(frozen=True)
class Field:
    """One key of a document: its type (``kind``, a key of ``KINDS``), default and doc line, and
    the values it allows. ``required`` fields have no default; ``nullable`` ones accept null."""

    name: str
    kind: str
    default: typing.Any = None
    doc: str = ""
    section: str = ""
    nullable: bool = False
    required: bool = False
    choices: tuple = ()
    minimum: typing.Optional[float] = None   # inclusive
    maximum: typing.Optional[float] = None   # inclusive
    above: typing.Optional[float] = None     # exclusive lower bound
    below: typing.Optional[float] = None     # exclusive upper bound
    length: typing.Optional[int] = None      # list kinds: exactly this many items
    fields: tuple = ()                       # mapping / mappings: the fields of the nested document(s)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"field {self.name}: unknown kind {self.kind!r}; kinds: {', '.join(KINDS)}")


def _describe(value):
    return f"{value!r} ({type(value).__name__})"


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_float(value):
    """``value`` as a float, or None (NaN included). YAML 1.1 reads ``1e-3`` (no dot) as a string:
    any spelling ``float()`` accepts is a number."""
    if _is_number(value):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return None if number != number else number   # NaN is no number to check a range against


def _coerce(kind, value):
    """``value`` as ``kind``, or raise ``ValueError`` saying what was expected."""
    expected = f"must be {KINDS[kind]}, got {_describe(value)}"
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if _is_int(value):
            return value
    elif kind == "float":
        number = _as_float(value)
        if number is not None:
            return number
    elif kind == "number":   # a machine-written document's number: no YAML 1.1 string spellings
        if _is_number(value) and value == value:
            return float(value)
    elif kind == "str":
        if isinstance(value, str):
            return value
    elif kind in ("ints", "floats", "strs"):
        item_ok = {"ints": _is_int, "floats": lambda v: _is_number(v) and v == v,
                   "strs": lambda v: isinstance(v, str) and v}[kind]
        if isinstance(value, (list, tuple)) and value and all(item_ok(v) for v in value):
            if kind == "floats":
                return tuple(float(v) for v in value)
            if kind == "strs" and len(set(value)) < len(value):
                repeated = sorted({v for v in value if list(value).count(v) > 1})
                raise ValueError(f"must not repeat a name, got {', '.join(repeated)} more than once")
            return tuple(value)
    elif kind == "pair":
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
            low, high = float(value[0]), float(value[1])
            if low > high:
                raise ValueError(f"must be [low, high] with low <= high, got {list(value)}")
            return low, high
    elif kind == "mapping":
        if isinstance(value, dict):
            return value
    elif kind == "mappings":
        if isinstance(value, (list, tuple)) and all(isinstance(v, dict) for v in value):
            return list(value)
    else:  # any
        return value
    raise ValueError(expected)


def _check_range(field, value):
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if not _is_number(item):
            continue
        if field.minimum is not None and item < field.minimum:
            raise ValueError(f"must be >= {field.minimum}, got {value!r}")
        if field.maximum is not None and item > field.maximum:
            raise ValueError(f"must be <= {field.maximum}, got {value!r}")
        if field.above is not None and item <= field.above:
            raise ValueError(f"must be > {field.above}, got {value!r}")
        if field.below is not None and item >= field.below:
            raise ValueError(f"must be < {field.below}, got {value!r}")
    if field.choices and value not in field.choices:
        raise ValueError(f"must be one of {', '.join(map(str, field.choices))}, got {value!r}")


def check_value(field, value):
    """``value`` checked and converted for ``field`` (lists become tuples, integers floats where
    a number is wanted), or ``ValueError`` whose message completes ``"<key> "``. Nested documents
    (``fields``) are checked by ``check_fields``, not here."""
    if value is None:
        if field.nullable:
            return None
        raise ValueError("must be set (null is not allowed)")
    value = _coerce(field.kind, value)
    if field.length is not None and isinstance(value, (tuple, list)) and len(value) != field.length:
        raise ValueError(f"must have {field.length} items, got {len(value)}: {list(value)!r}")
    _check_range(field, value)
    return value


def suggest_key(key, names, aliases=None):
    """The name in ``names`` a mistyped or foreign ``key`` most likely means, or None.

    ``aliases`` maps other tools' names to ours (``learning_rate`` -> ``lr``), so ``lerning_rate``
    finds ``lr``. A close match (ratio >= 0.75) to a name or alias wins over a looser one (>= 0.6)."""
    key = str(key).strip().lower().replace("-", "_")
    aliases = dict(aliases or {})
    if key in names:
        return key
    if key in aliases:
        return aliases[key]
    candidates = {name: name for name in names}
    candidates.update(aliases)
    for cutoff in (0.75, 0.6):
        close = difflib.get_close_matches(key, candidates, n=1, cutoff=cutoff)
        if close:
            return candidates[close[0]]
    return None


def check_fields(fields, mapping, source=None, aliases=None, values=None, unknown_hint=None):
    """Check every key of ``mapping`` against ``fields``; returns ``(values, problems)``.

    ``values`` starts from ``values`` (e.g. an earlier layer's) or the fields' defaults and takes
    each valid value of ``mapping``; ``problems`` lists one line per bad key, prefixed with
    ``source`` (a file name, "command line") when given: unknown keys (with the nearest valid key,
    else ``unknown_hint``), wrong types, values out of range, missing required keys."""
    by_name = {field.name: field for field in fields}
    prefix = f"{source}: " if source else ""
    if values is None:
        values = {field.name: field.default for field in fields if not field.required}
    else:
        values = dict(values)
    problems = []
    if not isinstance(mapping, dict):
        return values, [f"{prefix}must be {KINDS['mapping']}, got {type(mapping).__name__}"]
    for key, value in mapping.items():
        field = by_name.get(key)
        if field is None:
            close = suggest_key(key, by_name, aliases)
            hint = f"; did you mean {close!r}?" if close else (f"; {unknown_hint}" if unknown_hint else "")
            problems.append(f"{prefix}unknown key {key!r}{hint}")
            continue
        try:
            values[key] = check_value(field, value)
        except ValueError as error:
            problems.append(f"{prefix}{key} {error}")
            continue
        if field.fields and values[key] is not None:   # a nested document, or a list of them
            nested = [(key, values[key])] if field.kind == "mapping" else \
                [(f"{key}[{index}]", item) for index, item in enumerate(values[key])]
            checked = []
            for where, item in nested:
                item_values, item_problems = check_fields(field.fields, item, source=None, aliases=aliases)
                problems += [prefix + problem for problem in nest_problems(where, item_problems)]
                checked.append(item_values)
            values[key] = checked[0] if field.kind == "mapping" else checked
    for field in fields:
        if field.required and field.name not in mapping:
            problems.append(f"{prefix}{field.name} is missing ({field.doc or KINDS[field.kind]})")
    return values, problems


def nest_problems(where, problems):
    """The problems of a nested document named by their path from the outer one: ``img_size must
    be ...`` under ``preprocess`` becomes ``preprocess.img_size must be ...``; an unknown key,
    ``preprocess: unknown key ...``."""
    return [f"{where}: {problem}" if problem.startswith("unknown key") else f"{where}.{problem}"
            for problem in problems]


def raise_problems(problems, heading, error_class=ConfigError):
    """Raise ``error_class`` listing every problem (one line each, under ``heading``) if there are
    any; the list is kept as the error's ``problems`` for callers that fold it into their own."""
    if not problems:
        return
    if len(problems) == 1:
        error = error_class(f"{heading}: {problems[0]}")
    else:
        error = error_class(f"{heading}:\n  " + "\n  ".join(problems))
    error.problems = list(problems)
    raise error


def format_default(value):
    """A default as a YAML reader writes it: null, true/false, [a, b]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)
