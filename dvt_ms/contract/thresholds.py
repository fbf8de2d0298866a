"""The thresholds document (``thresholds.yaml``): calibrated per-exit thresholds, the table of
budgets they were chosen from, and the digest of the weights they belong to (docs/thresholds.md).

Written by calibration (``run_eval.sh``); the authors' published table (``dynamic_threshold`` in
the results the converter writes beside a converted checkpoint, ``X.published.yaml``) reads as
one too. Export stores a document in the manifest; inference takes one with ``--thresholds``.

``select_row`` is the one rule choosing a row of the table: the default setting, a budget and a
target accuracy all go through it.
"""
import math

from ..errors import ManifestError
from ..schema import Field, check_fields, check_value, raise_problems
from .digest import DIGEST_FIELDS, check_bound, digest_problems
from .exit_rule import ALWAYS
from .yamlio import dump_yaml, read_yaml

__all__ = ["THRESHOLDS_NAME", "ROW_KEYS", "select_row", "budget_problem", "accuracy_problem", "thresholds_document",
           "dump_thresholds", "thresholds_from_published", "read_thresholds", "thresholds_fields", "thresholds_problems",
           "check_thresholds", "load_thresholds", "choose_thresholds"]

THRESHOLDS_NAME = "thresholds.yaml"
#: What every row of a budget table holds (besides anything else calibration records).
ROW_KEYS = ("exit_thresholds", "calibration_gflops", "calibration_accuracy")


def _row_fields(num_exits):
    """The fields of a budget table's row (``num_exits`` None: any number of exits)."""
    return (
        Field("budget_index", "int", nullable=True, minimum=1, doc="the row's number in the budget table"),
        Field("exit_thresholds", "floats", required=True, length=num_exits, doc="one threshold per exit"),
        Field("calibration_gflops", "number", required=True, minimum=0.0,
              doc="GFLOPs per image on the calibration images"),
        Field("calibration_accuracy", "number", required=True, minimum=0.0, maximum=100.0,
              doc="top-1 (%) on the calibration images"),
        Field("validation_gflops", "number", nullable=True, minimum=0.0),
        Field("validation_accuracy", "number", nullable=True, minimum=0.0, maximum=100.0),
        Field("validation_exit_shares", "floats", nullable=True, length=num_exits, minimum=0.0, maximum=1.0),
    )


def thresholds_fields(num_exits):
    """The fields of a thresholds document for a model of ``num_exits`` exits."""
    return (
        Field("model", "str", required=True, doc="the preset calibrated"),
        Field("num_exits", "int", nullable=True, minimum=1),
        Field("exit_gflops", "floats", nullable=True, length=num_exits, minimum=0.0,
              doc="each exit's cumulative GFLOPs per image"),
        Field("exit_thresholds", "floats", required=True, length=num_exits, doc="the default setting"),
        Field("default_budget_index", "int", nullable=True, minimum=1),
        Field("budgets", "mappings", nullable=True, fields=_row_fields(num_exits), doc="the budget table"),
        Field("digest", "mapping", nullable=True, fields=DIGEST_FIELDS,
              doc="the architecture and weights calibrated"),
        Field("calibration", "mapping", nullable=True, doc="what the thresholds were calibrated on"),
    )


def _is_finite_number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


# What is wrong with a requested budget / target accuracy called ``name`` (None: nothing): the one
# wording of the command line's early check (``--budget``) and of ``select_row`` (``budget``).
def budget_problem(name, value):
    if value is not None and not (_is_finite_number(value) and value > 0):
        return f"{name} must be a positive number of GFLOPs per image, got {value}"
    return None


def accuracy_problem(name, value):
    if value is not None and not _is_finite_number(value):
        return f"{name} must be a finite top-1 percentage, got {value}"
    return None


def select_row(rows, budget_gflops=None, target_accuracy=None, source="the budget table"):
    """The one selection rule over a budget table (rows with ``calibration_gflops`` and
    ``calibration_accuracy``, measured on the calibration images):

    - no target: the best calibration accuracy, the cheapest among equals;
    - ``budget_gflops``: the same among the rows whose calibration cost fits the budget;
    - ``target_accuracy`` (%): the cheapest row reaching it, the most accurate among equals.

    A target no row meets is a ManifestError naming ``source`` and the attainable range."""
    if not rows:
        raise ManifestError(f"{source} has no budget table; pass --thresholds or calibrate with run_eval.sh")
    if budget_gflops is not None and target_accuracy is not None:
        raise ValueError("give a budget or a target accuracy, not both")
    problem = budget_problem("budget", budget_gflops) or accuracy_problem("target accuracy", target_accuracy)
    if problem:
        raise ManifestError(problem)
    if target_accuracy is not None:
        reaching = [row for row in rows if row["calibration_accuracy"] >= target_accuracy]
        if not reaching:
            best = max(row["calibration_accuracy"] for row in rows)
            raise ManifestError(f"target accuracy {target_accuracy}% is above every calibrated setting in {source} "
                                f"(at most {best:.2f}% on the calibration images)")
        return min(reaching, key=lambda row: (row["calibration_gflops"], -row["calibration_accuracy"]))
    fitting = rows
    if budget_gflops is not None:
        fitting = [row for row in rows if row["calibration_gflops"] <= budget_gflops]
        if not fitting:
            cheapest = min(row["calibration_gflops"] for row in rows)
            raise ManifestError(f"budget {budget_gflops} GFLOPs is below the cheapest calibrated setting in {source} "
                                f"({cheapest:.4f} GFLOPs per image on the calibration images)")
    return max(fitting, key=lambda row: (row["calibration_accuracy"], -row["calibration_gflops"]))


def thresholds_document(model_name, exit_gflops, rows, digest, calibration=None):
    """The thresholds document of a calibration: its ``rows`` (the budget table), the default
    setting chosen by ``select_row``, ``digest`` (``digest.digest_of``) of the weights calibrated."""
    chosen = select_row(rows)
    document = {"model": model_name, "num_exits": len(exit_gflops), "exit_gflops": [float(g) for g in exit_gflops],
                "exit_thresholds": [float(t) for t in chosen["exit_thresholds"]],
                "default_budget_index": chosen.get("budget_index"), "budgets": rows, "digest": dict(digest)}
    if calibration is not None:
        document["calibration"] = dict(calibration)
    return document


def dump_thresholds(document):
    """The document as YAML text, every row in full (no anchors: a hand edit changes one row)."""
    return dump_yaml(document)


def thresholds_from_published(results, source):
    """The thresholds document of the authors' published table (``X.published.yaml`` as the
    converter writes it): one row per published budget; costs and accuracies are their published
    budgeted-batch figures (ImageNet validation) when those cover every row, and then the default
    is chosen by ``select_row``; without them the document has no budget table and its default
    is the last published row (the most accurate end of the curve)."""
    table = results.get("dynamic_threshold")
    if not isinstance(table, list) or not table or not all(isinstance(row, list) for row in table):
        raise ManifestError(f"{source}: dynamic_threshold must be the published table (a list of rows), "
                            f"got {table!r:.60}")
    num_exits = len(table[0])
    published_row = Field("dynamic_threshold", "floats", length=num_exits)
    problems = []
    rows = []
    for index, thresholds in enumerate(table):
        try:
            values = list(check_value(published_row, thresholds))
        except ValueError as error:
            problems.append(f"dynamic_threshold[{index}] {error}")
            continue
        values[-1] = float(ALWAYS)      # the last exit answers whatever reaches it
        rows.append({"budget_index": index + 1, "exit_thresholds": values})
    document = {"model": results.get("model"), "num_exits": num_exits}
    if isinstance(results.get("flops"), list) and len(results["flops"]) == num_exits:
        try:
            document["exit_gflops"] = list(check_value(Field("flops", "floats"), results["flops"]))
        except ValueError as error:
            problems.append(f"flops {error}")
    raise_problems(problems, source, ManifestError)
    figures = results.get("budgeted_batch_classification")
    if isinstance(figures, list) and len(figures) == 2 and all(isinstance(f, list) and len(f) == len(rows)
                                                                for f in figures):
        for row, gflops, accuracy in zip(rows, *figures):
            row.update(calibration_gflops=float(gflops), calibration_accuracy=float(accuracy))
        chosen = select_row(rows, source=source)
        document["budgets"] = rows
        kind = "the authors' published budgeted-batch figures (ImageNet validation)"
    else:
        chosen = rows[-1]
        kind = "no published figures for every row: no budget table"
    document.update(exit_thresholds=list(chosen["exit_thresholds"]), default_budget_index=chosen["budget_index"],
                    calibration={"source": f"the authors' published dynamic_threshold table ({kind})"},
                    digest=results.get("digest"))
    return document


def read_thresholds(path):
    """The thresholds document at ``path`` (calibration's, or the published results beside a
    converted checkpoint), or a ManifestError naming the file."""
    document = read_yaml(path, "thresholds")
    if not isinstance(document, dict):
        raise ManifestError(f"{path}: not a thresholds file (expected a mapping, got {type(document).__name__})")
    if "dynamic_threshold" in document and "exit_thresholds" not in document:
        document = thresholds_from_published(document, path)
    return document


def thresholds_problems(thresholds, model_name, num_exits):
    """Every problem of a thresholds document for the model ``model_name`` of ``num_exits`` exits
    (either None if unknown), each named by its path in the document: one number per exit in
    ``exit_thresholds`` and in every row of its ``budgets`` table (if it has one), the model's
    name, the digest's form."""
    values, problems = check_fields(thresholds_fields(num_exits), thresholds)
    if model_name is not None and "model" in values and values["model"] != model_name:
        problems.append(f"model must be {model_name!r} (the model's), got {values['model']!r}: "
                        "thresholds of another model")
    if values.get("digest"):
        problems += digest_problems(values["digest"])
    return problems


def check_thresholds(thresholds, model_name, num_exits, source):
    """A thresholds document must be for this model (``thresholds_problems``); one ManifestError
    headed by ``source`` lists every problem. Returns ``thresholds``."""
    raise_problems(thresholds_problems(thresholds, model_name, num_exits), source, ManifestError)
    return thresholds


def load_thresholds(path, manifest, model_source, accept_mismatch=False):
    """The thresholds document at ``path`` checked against an exported model's ``manifest``
    (``model_source`` names it): fields, the model and the weights digest."""
    document = check_thresholds(read_thresholds(path), manifest["model"], manifest["num_exits"], path)
    check_bound(document.get("digest"), path, manifest.get("digest"), model_source, accept_mismatch)
    return document


def choose_thresholds(document, source, budget_gflops=None, target_accuracy=None):
    """``(exit thresholds, the chosen row or None)``: the document's default setting, or the row
    ``select_row`` picks for a budget or a target accuracy."""
    if budget_gflops is None and target_accuracy is None:
        return [float(t) for t in document["exit_thresholds"]], None
    row = select_row(document.get("budgets") or [], budget_gflops, target_accuracy, source)
    return [float(t) for t in row["exit_thresholds"]], row
