"""The compiled data path types its classes in .pxd files beside the .py files: a field added
to one and not the other compiles into a class that fails at run time (or silently keeps a
Python attribute). Every compiled class's `__slots__` must equal its .pxd fields."""

import ast
import re
from pathlib import Path

import pytest

from lb.compiled import MODULES, source_path

_CLASS = re.compile(r"^cdef class (\w+)")
_FIELD = re.compile(r"^\s+cdef (?:public |readonly )?[\w.\[\]]+(?: \w+)? (\w+)\s*(?:#.*)?$")


def pxd_fields(path: Path) -> dict[str, set[str]]:
    classes: dict[str, set[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        m = _CLASS.match(line)
        if m:
            current = classes.setdefault(m.group(1), set())
            continue
        if current is None or not line.strip() or line.lstrip().startswith(("#", "@")):
            continue
        if not line.startswith((" ", "\t")):
            current = None
            continue
        m = _FIELD.match(line)
        if m and "(" not in line.split("#", 1)[0]:  # a method declaration, not a field
            current.add(m.group(1))
    return classes


def py_fields(path: Path) -> dict[str, set[str]]:
    """Each class's own `__slots__`, or, without them, the attributes its __init__ assigns."""
    out: dict[str, set[str]] = {}
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if (
                isinstance(stmt, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in stmt.targets)
                and isinstance(stmt.value, ast.Tuple)
            ):
                out[node.name] = {ast.literal_eval(e) for e in stmt.value.elts}
            elif isinstance(stmt, ast.FunctionDef) and stmt.name == "__init__":
                assigned = {
                    t.attr
                    for n in ast.walk(stmt)
                    if isinstance(n, ast.Assign | ast.AnnAssign)
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                    if isinstance(t, ast.Attribute)
                    and isinstance(t.value, ast.Name)
                    and t.value.id == "self"
                }
                out.setdefault(node.name, assigned)
    return out


@pytest.mark.parametrize("module", MODULES)
def test_fields_match_pxd_declarations(module: str) -> None:
    py = Path(source_path(module))
    pxd_path = py.with_suffix(".pxd")
    assert pxd_path.exists(), f"{module} is compiled but has no .pxd"
    declared = pxd_fields(pxd_path)
    fields = py_fields(py)
    assert declared, f"{pxd_path} declares no class"
    for name, typed in declared.items():
        assert name in fields, f"{module}.{name} is typed in the .pxd but not defined"
        own = fields[name]
        assert own == typed, (
            f"{module}.{name}: only in the .py: {sorted(own - typed)}; "
            f"only in the .pxd: {sorted(typed - own)}"
        )


def test_the_check_sees_a_drift(tmp_path: Path) -> None:
    pxd = tmp_path / "m.pxd"
    pxd.write_text("cdef class A:\n    cdef public object x\n    cdef public bint y\n")
    py = tmp_path / "m.py"
    py.write_text('class A:\n    __slots__ = ("x",)\n')
    assert pxd_fields(pxd) == {"A": {"x", "y"}} != py_fields(py)
