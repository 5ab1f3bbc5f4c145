"""Package layout rules (style.md §1-§2): fusedssl.kernels / fusedssl.engine only, imports flow engine -> kernels."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path, names: bool = False):
    """(module, level) of every import; with ``names``, (module, level, imported names)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield (a.name, 0, ()) if names else (a.name, 0)
        elif isinstance(node, ast.ImportFrom):
            got = tuple(a.name for a in node.names)
            yield (node.module or "", node.level, got) if names else (node.module or "", node.level)


def test_installation_exposes_no_top_level_kernels_or_engine(tmp_path):
    """Run outside the source tree (whose folders are importable from its root): only fusedssl.* is installed."""
    code = ("import importlib.util as u, fusedssl.kernels as k; "
            "print(u.find_spec('kernels') is None or 'fusedssl' not in str(u.find_spec('kernels').origin), "
            "u.find_spec('engine') is None, k.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    no_kernels, no_engine, path = out.stdout.split()
    assert no_kernels == "True" and no_engine == "True", out.stdout
    assert Path(path).resolve().is_relative_to(ROOT / "kernels") or "site-packages" in path


def test_top_level_tree():
    for name in ("setup.py", "README.md", "csrc", "kernels", "engine", "configs", "tests", "bench"):
        assert (ROOT / name).exists(), name


def test_import_rules():
    for path in (ROOT / "kernels").glob("*.py"):
        for mod, level in _imports(path):
            assert "engine" not in mod, f"{path.name} imports {mod}: kernels/ must not import engine"
            assert level > 0 or not mod.startswith("kernels"), f"{path.name} imports a top-level kernels"
    for path in (ROOT / "engine").rglob("*.py"):
        for mod, level in _imports(path):
            assert level > 0 or not (mod == "kernels" or mod.startswith("kernels.")), \
                f"{path.name} imports a top-level {mod}"
            assert not mod.startswith("fusedssl.kernels."), \
                f"{path.name} imports {mod}: engine uses only the public list `from fusedssl import kernels`"
        for mod, _level, names in _imports(path, names=True):
            private = [n for n in names if n.startswith("_")]
            assert not (mod == "fusedssl.kernels" and private), \
                f"{path.name} imports {private} from fusedssl.kernels: engine uses only its public names"


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line for b in blocks for line in b.splitlines() if line.startswith("pip install")]


def test_ci_runs_exactly_the_readme_test_command_in_a_fresh_venv():
    """CI must prove what a new user runs: the README's install-and-test line, verbatim, inside a new venv."""
    test_cmd = next(c for c in _readme_commands() if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines(), "the README's test command and .ci/run differ"
    assert "-m venv" in ci and "system-site-packages" not in ci
    assert ci.index("-m venv") < ci.index(test_cmd)


def test_readme_installs_the_build_requirements_first():
    """Without torch in place before the --no-build-isolation install, the extension is silently skipped."""
    main, tests = (c for c in _readme_commands() if "FUSEDSSL_BUILD_CUDA" not in c)
    for cmd in (main, tests):
        first, second = cmd.split(" && ")[:2]
        assert first == "pip install -r build-requirements.txt" and "--no-build-isolation" in second, cmd
    reqs = (ROOT / "build-requirements.txt").read_text()
    assert re.search(r"^torch>=", reqs, re.M) and re.search(r"^setuptools>=70", reqs, re.M)


# The anatomy of every op family file in kernels/: these sections, in this order (each family has the ones it needs)
SECTIONS = ["references", "Triton kernels", "launchers and helpers", "custom ops (torch.compile sees these)",
            "providers (one per backend)", "public ops"]


def test_every_kernel_family_file_has_the_same_anatomy():
    families = [p for p in sorted((ROOT / "kernels").glob("*.py")) if not p.name.startswith("_")]
    assert len(families) >= 9
    for path in families:
        text = path.read_text()
        found = [m.group(1) for m in re.finditer(r"^# -{3,} (.+)$", text, re.M)]
        assert found and all(s in SECTIONS for s in found), f"{path.name}: sections {found}, expected {SECTIONS}"
        assert found == sorted(found, key=SECTIONS.index), f"{path.name}: sections out of order: {found}"
        assert found[0] == "references" and found[-1] == "public ops", f"{path.name}: {found}"
        for node in ast.parse(text).body:  # references are plain functions: registered in the providers section
            if isinstance(node, ast.FunctionDef) and node.name.endswith("_ref"):
                hooks = [ast.unparse(d) for d in node.decorator_list if "register" in ast.unparse(d)]
                assert not hooks, f"{path.name}: {node.name} carries {hooks}; register it under providers"
