"""The layering rules, checked on the source: no module reads another module's private
names, kernels/ is imported only as fastconv.kernels, and importing fastconv.explain
changes nothing in the registry."""
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRODUCT = ("fastconv", "kernels", "benchmarks", "dev")
# module._CONSTANT: another module's private name (torch's own and the extension module
# fastconv._C are interfaces, not private state)
PRIVATE = re.compile(r"(?<![\w.])(?!torch\b|self\b|cls\b)\w+(?:\.(?!_)\w+)*\._(?!C\b)[A-Z][A-Z0-9_]*\b")


def _code_lines(path):
    for i, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#", 1)[0]
        if code.strip():
            yield i, code


def test_no_module_reads_another_modules_private_names():
    found = [f"{p.relative_to(ROOT)}:{i}: {m.group(0)}"
             for top in PRODUCT for p in sorted((ROOT / top).rglob("*.py"))
             for i, code in _code_lines(p) for m in PRIVATE.finditer(code)]
    assert not found, found


def test_kernels_imported_only_as_fastconv_kernels():
    bare = re.compile(r"^\s*(from kernels(\.|\s)|import kernels\b)")
    found = [f"{p.relative_to(ROOT)}:{i}" for top in (*PRODUCT, "tests")
             for p in sorted((ROOT / top).rglob("*.py"))
             for i, code in _code_lines(p) if bare.match(code)]
    assert not found, found


def test_importing_explain_leaves_the_registry_alone():
    code = ("import fastconv\n"
            "from fastconv import registry\n"
            "before = {a.name: a for a in registry.algorithms(include_internal=True)}\n"
            "import fastconv.explain, fastconv.explain.model, fastconv.explain.report\n"
            "after = {a.name: a for a in registry.algorithms(include_internal=True)}\n"
            "assert before.keys() == after.keys()\n"
            "assert all(before[n] is after[n] for n in before), 'explain replaced an entry'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=300)
