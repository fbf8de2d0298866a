"""dvt_ms.schema, the one validation style: every problem of a document at once, each naming the
key, the value and where it came from, unknown keys with the nearest valid one."""
import subprocess
import sys

import pytest

from dvt_ms.errors import ConfigError, ManifestError
from dvt_ms.schema import Field, check_fields, check_value, raise_problems, suggest_key

FIELDS = (
    Field("name", "str", required=True, doc="what it is called"),
    Field("size", "int", 3, minimum=1),
    Field("ratio", "float", 0.5, minimum=0.0, below=1.0),
    Field("sides", "ints", (1, 2)),
    Field("weights", "floats", None, nullable=True),
    Field("mode", "str", "fast", choices=("fast", "exact")),
    Field("labels", "strs", None, nullable=True),
)


def test_a_valid_document_gets_its_defaults_and_converted_values():
    values, problems = check_fields(FIELDS, {"name": "x", "sides": [4, 5], "ratio": 0, "weights": [1, 2.5]})
    assert problems == []
    assert values == {"name": "x", "size": 3, "ratio": 0.0, "sides": (4, 5), "weights": (1.0, 2.5), "mode": "fast",
                      "labels": None}
    assert isinstance(values["ratio"], float)


def test_every_problem_is_reported_at_once_naming_source_key_and_value():
    _, problems = check_fields(FIELDS, {"size": 0, "ratio": 1.0, "mode": "slow", "sides": [], "labels": ["a", "a"],
                                        "sizee": 2}, source="doc.yaml")
    assert problems == [
        "doc.yaml: size must be >= 1, got 0",
        "doc.yaml: ratio must be < 1.0, got 1.0",
        "doc.yaml: mode must be one of fast, exact, got 'slow'",
        "doc.yaml: sides must be a non-empty list of integers, got [] (list)",
        "doc.yaml: labels must not repeat a name, got a more than once",
        "doc.yaml: unknown key 'sizee'; did you mean 'size'?",
        "doc.yaml: name is missing (what it is called)",
    ]


@pytest.mark.parametrize("kind, value, expected", [
    ("bool", "yes", "must be true or false, got 'yes' (str)"),
    ("int", True, "must be an integer, got True (bool)"),
    ("int", 2.0, "must be an integer, got 2.0 (float)"),
    ("float", "fast", "must be a number, got 'fast' (str)"),
    ("number", "0.5", "must be a number (written as one, not quoted), got '0.5' (str)"),
    ("pair", [3, 1], "must be [low, high] with low <= high, got [3, 1]"),
    ("mapping", [1], "must be a mapping of key: value, got [1] (list)"),
])
def test_wrong_types_say_what_was_expected(kind, value, expected):
    with pytest.raises(ValueError, match=expected.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        check_value(Field("key", kind), value)


def test_open_bounds_exclude_their_end():
    field = Field("eps", "float", above=0.0, below=1.0)
    assert check_value(field, 1e-8) == 1e-8
    for value, message in ((0.0, "must be > 0.0, got 0.0"), (1.0, "must be < 1.0, got 1.0")):
        with pytest.raises(ValueError, match=message):
            check_value(field, value)


def test_yaml_1_1_exponents_without_a_dot_are_numbers():
    assert check_value(Field("lr", "float"), "1e-3") == 1e-3


def test_null_is_refused_unless_the_field_allows_it():
    with pytest.raises(ValueError, match="must be set"):
        check_value(Field("size", "int", 3), None)
    assert check_value(Field("size", "int", nullable=True), None) is None


def test_nearest_key_prefers_close_names_and_knows_other_tools_names():
    names = ("lr", "epochs", "warmup_epochs")
    aliases = {"learning_rate": "lr", "num_epochs": "epochs"}
    assert suggest_key("lerning_rate", names, aliases) == "lr"
    assert suggest_key("warmup-epoch", names, aliases) == "warmup_epochs"
    assert suggest_key("zzz", names, aliases) is None


def test_the_error_lists_every_problem_and_keeps_them_for_callers():
    with pytest.raises(ManifestError) as raised:
        raise_problems(["a is wrong", "b is wrong"], "manifest.yaml", ManifestError)
    assert str(raised.value) == "manifest.yaml:\n  a is wrong\n  b is wrong"
    assert raised.value.problems == ["a is wrong", "b is wrong"]
    with pytest.raises(ConfigError, match="^invalid config: one$"):
        raise_problems(["one"], "invalid config")
    raise_problems([], "nothing to say")


def test_the_schema_module_needs_neither_numpy_nor_yaml():
    code = ("import sys; sys.modules['numpy'] = None; sys.modules['yaml'] = None; "
            "import dvt_ms.schema; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


def test_nested_documents_name_the_path_to_each_problem():
    exit_fields = (Field("grid", "int", required=True, minimum=1), Field("file", "str", required=True))
    fields = (Field("preprocess", "mapping", required=True,
                    fields=(Field("img_size", "int", required=True, minimum=1),
                            Field("mean", "floats", required=True, length=3))),
              Field("exits", "mappings", required=True, fields=exit_fields))
    document = {"preprocess": {"img_size": 0, "mean": [0.5, 0.5]},
                "exits": [{"grid": 7, "file": "exit1.mindir"}, {"grid": "ten", "fil": "exit2.mindir"}]}
    values, problems = check_fields(fields, document, source="manifest.yaml")
    assert problems == [
        "manifest.yaml: preprocess.img_size must be >= 1, got 0",
        "manifest.yaml: preprocess.mean must have 3 items, got 2: [0.5, 0.5]",
        "manifest.yaml: exits[1].grid must be an integer, got 'ten' (str)",
        "manifest.yaml: exits[1]: unknown key 'fil'; did you mean 'file'?",
        "manifest.yaml: exits[1].file is missing (a string)",
    ]
    assert values["exits"][0] == {"grid": 7, "file": "exit1.mindir"}


def test_nan_is_not_a_number():
    for kind, value in (("float", float("nan")), ("float", "nan"), ("number", float("nan")),
                        ("floats", [1.0, float("nan")])):
        with pytest.raises(ValueError, match="must be"):
            check_value(Field("x", kind), value)
