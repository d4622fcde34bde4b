"""Static checks of the security rules that every package must keep."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["bertscale", "benchmarks"]


def _python_files() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]


def _calls(tree: ast.AST, dotted: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == dotted:
            yield node


def test_there_is_code_to_check():
    assert len(_python_files()) >= 5


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_torch_load_is_weights_only(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for call in _calls(tree, "torch.load"):
        kwargs = {kw.arg: kw.value for kw in call.keywords}
        value = kwargs.get("weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, (
            f"{path}:{call.lineno}: torch.load without weights_only=True"
        )


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pickle_loading(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for name in ("pickle.load", "pickle.loads", "np.load", "numpy.load"):
        for call in _calls(tree, name):
            kwargs = {kw.arg: kw.value for kw in call.keywords}
            if name.endswith("np.load") or name == "numpy.load":
                value = kwargs.get("allow_pickle")
                assert value is None or (isinstance(value, ast.Constant) and value.value is False), (
                    f"{path}:{call.lineno}: np.load with allow_pickle"
                )
            else:
                pytest.fail(f"{path}:{call.lineno}: {name} of untrusted data")


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_wildcard_bind_default(path):
    text = path.read_text(encoding="utf-8")
    for lineno, line in enumerate(text.splitlines(), 1):
        if "0.0.0.0" in line and "default" in line:
            pytest.fail(f"{path}:{lineno}: a server default binds 0.0.0.0")
