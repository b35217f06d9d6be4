"""The JSON reports keep the schema docs/report-schema.md documents.

The tables there are read as the schema: every documented key must be present (unless marked `?`)
with its documented type, and every key a report holds must be documented. Each report is made
on the digits demo model through the real command line, so renaming a field, changing its type
or adding one without its row fails here.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re

import numpy as np
import pytest
from conftest import REPO

from onnxcomp.cli import main

DOC = REPO / "docs" / "report-schema.md"
REPORTS = ("optimize", "check", "compare", "inspect", "passes", "distill")
# Sections documented once and used in several places: (section, path) pairs they belong at.
EMBEDDED = {
    "output comparison": [("optimize", "validation.outputs[]"), ("optimize", "passes[].numeric[]"),
                          ("compare", "outputs[]")],
    "fidelity": [("pass sparsify-initializers", "details.fidelity"),
                 ("pass insert-qdq", "details.insert-qdq.budget.fidelity")],
}
TYPES = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "list": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


# ---------- the schema, read from the doc ----------

def tokens(path: str) -> tuple[str, ...]:
    """`a.b[].c{}` -> ("a", "b", "[]", "c", "{}")."""
    return tuple(re.findall(r"\[\]|\{\}|[^.\[\]{}]+", path))


def read_schema(text: str) -> dict[str, list[tuple[tuple, tuple, bool]]]:
    """{section: [(key tokens, allowed types, optional)]} from the doc's `| `key` | type | ... |` rows."""
    sections, current = {}, None
    for line in text.splitlines():
        heading = re.match(r"#{2,3} (.+)", line)
        if heading:
            current = heading.group(1).strip()
            sections[current] = []
            continue
        row = re.match(r"\| `([^`]+)`(\?)? \| ([a-z ]+) \|", line)
        if row and current:
            types = tuple(t.strip() for t in row.group(3).split(" or "))
            assert set(types) <= set(TYPES), f"{DOC.name}: unknown type in {line!r}"
            sections[current].append((tokens(row.group(1)), types, bool(row.group(2))))
    for name, places in EMBEDDED.items():
        for section, at in places if name in sections else ():
            sections[section] += [(tokens(at) + t, types, opt) for t, types, opt in sections[name]]
    return sections


def pass_rows(schema, name: str):
    """Rows for one optimize pass record: the common `passes[].` rows plus the pass's own section."""
    common = [(t[2:], types, opt) for t, types, opt in schema["optimize"] if t[:2] == ("passes", "[]") and t[2:]]
    return common + schema[f"pass {name}"]


# ---------- checking a report against rows ----------

def _is_pattern(token: str) -> bool:
    return "<" in token


def _matches(row_token: str, token: str) -> bool:
    if row_token == "{}":
        return token != "[]"
    if _is_pattern(row_token):
        return token != "[]" and re.fullmatch(re.sub(r"<[^>]+>", ".+", re.escape(row_token)), token) is not None
    return row_token == token


def _resolve(value, path):
    """Every value at `path` (lists and open maps expanded); parents that are absent yield nothing."""
    if not path:
        yield value
        return
    head, rest = path[0], path[1:]
    if head == "[]":
        items = value if isinstance(value, list) else []
    elif head == "{}":
        items = list(value.values()) if isinstance(value, dict) else []
    else:
        items = [value[head]] if isinstance(value, dict) and head in value else []
    for item in items:
        yield from _resolve(item, rest)


def _show(path) -> str:
    return ".".join(path).replace(".[]", "[]").replace(".{}", "{}") or "(root)"


def schema_problems(report, rows, opaque=()) -> list[str]:
    """Missing keys, wrong types and undocumented keys, one line each (empty: the report fits)."""
    problems = []
    literal = {(t[:-1], t[-1]) for t, _, _ in rows if t and t[-1] not in ("[]", "{}") and not _is_pattern(t[-1])}

    def check(value, types, where):
        if not any(TYPES[t](value) for t in types):
            problems.append(f"{where}: {type(value).__name__} {value!r:.60}, documented {' or '.join(types)}")

    for path, types, optional in rows:
        *parent, last = path
        for holder in _resolve(report, tuple(parent)):
            if last == "[]":
                for item in holder if isinstance(holder, list) else []:
                    check(item, types, _show(path))
            elif last == "{}" or _is_pattern(last):
                for key, item in holder.items() if isinstance(holder, dict) else []:
                    if _matches(last, key) and (tuple(parent), key) not in literal:
                        check(item, types, _show((*parent, key)))
            elif isinstance(holder, dict):
                if last in holder:
                    check(holder[last], types, _show(path))
                elif not optional:
                    problems.append(f"{_show(path)}: missing (documented as always present)")

    def walk(value, path):
        if path in opaque:
            return
        children = value.items() if isinstance(value, dict) else \
            [("[]", item) for item in value] if isinstance(value, list) else []
        for key, child in children:
            here = (*path, key)
            if not any(len(t) == len(here) and all(map(_matches, t, here)) for t, _, _ in rows):
                problems.append(f"{_show(here)}: not documented in {DOC.name}")
                continue
            walk(child, here)

    walk(report, ())
    return sorted(set(problems))


# ---------- the reports, made once on the digits model ----------

@pytest.fixture(scope="module")
def made(models_dir, tmp_path_factory):
    """{report name: [report, ...]}, each as a pipeline reads it (the real CLI, in this process)."""
    tmp, m = tmp_path_factory.mktemp("reports"), models_dir
    out = {name: [] for name in REPORTS}

    def run(*args, ok=(0,)):
        """Run the CLI; its stdout (module scope cannot use capsys)."""
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            try:
                main([str(a) for a in args])
                code = 0
            except SystemExit as exc:
                code = exc.code
        assert code in ok, (args, code, buffer.getvalue()[-2000:])
        return buffer.getvalue()

    def report_file(path):
        return json.loads(path.read_text())

    digits, calib, test = m / "digits_cnn.onnx", m / "digits_calib.npz", m / "digits_test.npz"
    run("optimize", digits, "-o", tmp / "opt.onnx", "--val", test, "--verify", "numeric", "--report", tmp / "opt.json")
    run("optimize", digits, "-o", tmp / "int8.onnx", "--quantize", "int8", "--calib", calib, "--val", test,
        "--target", "ort", "--report", tmp / "int8.json")
    run("optimize", digits, "-o", tmp / "small.onnx", "--prune-channels", "0.5", "--sparsify", "2:4",
        "--calib", calib, "--val", test, "--report", tmp / "small.json")
    run("optimize", digits, "-o", tmp / "sparse.onnx", "--sparsify", "0.5", "--report", tmp / "sparse.json")
    out["optimize"] = [report_file(tmp / f"{n}.json") for n in ("opt", "int8", "small", "sparse")]
    for target in ("ort", "tensorrt"):
        out["check"].append(json.loads(run("check", tmp / "int8.onnx", "--target", target, "--json", ok=(0, 3))))
    out["compare"].append(json.loads(run("compare", digits, tmp / "int8.onnx", "--data", test, "--json", ok=(0, 4))))
    out["compare"].append(json.loads(run("compare", digits, tmp / "opt.onnx", "--json")))
    out["inspect"].append(json.loads(run("inspect", digits, "--json")))
    out["passes"].append(json.loads(run("passes", "--json")))
    with np.load(m / "digits_train.npz") as train:  # a few labelled samples: the schema, not the training
        np.savez(tmp / "few.npz", **{k: v[:64] for k, v in train.items()})
    run("distill", "--teacher", digits, "--student", tmp / "small.onnx", "--data", tmp / "few.npz",
        "--val", tmp / "few.npz", "-o", tmp / "student.onnx", "--epochs", "1", "--batch-size", "32",
        "--report", tmp / "distill.json")
    out["distill"].append(report_file(tmp / "distill.json"))
    return out


@pytest.fixture(scope="module")
def schema():
    return read_schema(DOC.read_text())


def test_the_doc_documents_every_report_and_pass(schema):
    from onnxcomp.pipeline.registry import all_passes

    assert set(REPORTS) <= set(schema)
    shipped = {name for name, cls in all_passes().items() if cls.__module__.startswith("onnxcomp.passes.")}
    assert {f"pass {name}" for name in shipped} <= set(schema), "every shipped pass has its section"
    assert all(len(schema[name]) >= 8 for name in REPORTS)


@pytest.mark.parametrize("name", REPORTS)
def test_report_keeps_its_documented_schema(made, schema, name):
    problems = []
    for i, report in enumerate(made[name]):
        if name == "optimize":
            problems += [f"[{i}] {p}" for p in schema_problems(report, schema[name], opaque={("passes", "[]")})]
            for record in report["passes"]:
                problems += [f"[{i}] passes[{record['name']}].{p}"
                             for p in schema_problems(record, pass_rows(schema, record["name"]))]
        else:
            problems += [f"[{i}] {p}" for p in schema_problems(report, schema[name])]
    assert not problems, f"{name} report differs from {DOC.name}:\n" + "\n".join(problems)


def test_the_runs_exercise_the_passes_and_cases_documented(made):
    names = {r["name"] for report in made["optimize"] for r in report["passes"]}
    assert names == {"cleanup", "fold-bn", "insert-qdq", "remove-channels", "sparsify-initializers"}
    assert any(r["numeric"] for r in made["optimize"][0]["passes"])  # --verify numeric records
    assert {c["target"] for c in made["check"]} == {"ort", "tensorrt"}
    assert any(c["findings"] for c in made["check"])
    assert "accuracy_reference" in made["compare"][0] and "accuracy_reference" not in made["compare"][1]
    assert made["distill"][0]["mode"] == "onnx-student" and made["distill"][0]["metric"] == "accuracy"


# ---------- the checker itself can fail ----------

ROWS = [(tokens("a"), ("int",), False), (tokens("b"), ("list",), False), (tokens("b[]"), ("object",), False),
        (tokens("b[].name"), ("str",), False), (tokens("b[].note"), ("str", "null"), True),
        (tokens("ops"), ("object",), False), (tokens("ops{}"), ("int",), False),
        (tokens("stats"), ("object",), False), (tokens("stats.total"), ("int",), False),
        (tokens("stats.<op>_removed"), ("int",), True)]
GOOD = {"a": 1, "b": [{"name": "x"}, {"name": "y", "note": None}], "ops": {"Conv": 2, "Add": 1},
        "stats": {"total": 3, "identity_removed": 2}}


def test_checker_accepts_a_fitting_report():
    assert schema_problems(GOOD, ROWS) == []


@pytest.mark.parametrize("edit, expected", [
    (lambda r: r.pop("a"), "a: missing"),                                        # a rename: gone ...
    (lambda r: r.update(A=r.pop("a")), "A: not documented"),                     # ... and new
    (lambda r: r.update(a="1"), "a: str"),                                       # another type
    (lambda r: r["b"][0].pop("name"), "b[].name: missing"),
    (lambda r: r["b"][1].update(note=3), "b[].note: int"),
    (lambda r: r["ops"].update(Relu=1.5), "ops.Relu: float"),
    (lambda r: r["stats"].update(nodes_removed="2"), "stats.nodes_removed: str"),
    (lambda r: r["stats"].update(total=True), "stats.total: bool"),               # bool is not an int
    (lambda r: r["b"][0].update(extra=1), "b[].extra: not documented"),
])
def test_checker_reports_each_breach(edit, expected):
    report = copy.deepcopy(GOOD)
    edit(report)
    problems = schema_problems(report, ROWS)
    assert any(p.startswith(expected) for p in problems), problems


def test_reader_takes_keys_types_and_optional_marks():
    text = "## r\n\n| key | type | meaning |\n|---|---|---|\n| `a.b[]` | int or null | x |\n| `c`? | str | y |\n"
    assert read_schema(text)["r"] == [(("a", "b", "[]"), ("int", "null"), False), (("c",), ("str",), True)]
