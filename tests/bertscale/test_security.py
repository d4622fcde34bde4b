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


WILDCARDS = ("0.0.0.0", "::")


def _wildcard_uses(tree: ast.AST) -> list[int]:
    """Lines where a wildcard address is a value (a default, an assignment, an argument), not a test."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in WILDCARDS:
            up = parents.get(node)
            while isinstance(up, (ast.Tuple, ast.List, ast.Set)):
                up = parents.get(up)
            if not isinstance(up, ast.Compare):  # `host in ("0.0.0.0", "::")` checks a value, binds nothing
                lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_wildcard_bind_default(path):
    for lineno in _wildcard_uses(ast.parse(path.read_text(encoding="utf-8"))):
        pytest.fail(f"{path}:{lineno}: a wildcard address as a value: servers bind 127.0.0.1 by default")


def test_the_wildcard_check_sees_defaults_wherever_they_are():
    """Defaults on a line without the word 'default' (the check's earlier blind spot) are caught."""
    caught = [
        'def serve(host="0.0.0.0"): ...',
        "@dataclass\nclass C:\n    host: str = '0.0.0.0'",
        'parser.add_argument(\n    "--host",\n    default="0.0.0.0",\n)',
        'HOST = os.environ.get("HOST", "0.0.0.0")',
        'BIND = ("::", 80)',
    ]
    for source in caught:
        assert _wildcard_uses(ast.parse(source)), source
    assert not _wildcard_uses(ast.parse('loopback = host in ("0.0.0.0", "::", "")'))
    assert not _wildcard_uses(ast.parse('"""pass --host 0.0.0.0 deliberately"""'))
