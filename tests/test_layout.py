"""How the package is put together: no module reaches into another's
private names, and the environment is read by the command line, which
passes what it read on as parameters (issue 16)."""
import ast
from pathlib import Path

from harness.paths import REPO

MODULES = sorted((REPO / "harness").glob("*.py"))
# Where reading the environment is the point: the command line, the cache
# root (HARNESS_CACHE, XDG_CACHE_HOME: where every build is kept, for every
# process alike), and the user's terminal type for an interactive shell.
READS_ENV = {"cli.py": None, "paths.py": {"HARNESS_CACHE", "XDG_CACHE_HOME"},
             "ssh.py": {"TERM"}}


def _tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text(), str(path))


def private_imports(tree: ast.AST) -> list[str]:
    """`from harness.x import _name` and `x._name` on an imported harness module."""
    bad, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("harness"):
            for alias in node.names:
                if alias.name.startswith("_"):
                    bad.append(f"from {node.module} import {alias.name}")
                elif node.module == "harness":
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules.update(a.asname or a.name.split(".")[-1] for a in node.names
                           if a.name.startswith("harness."))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id in modules and node.attr.startswith("_") and \
                not node.attr.startswith("__"):
            bad.append(f"{node.value.id}.{node.attr}")
    return bad


def env_reads(tree: ast.AST) -> list[str]:
    """Names read with os.environ.get / os.environ[...] / os.getenv; a bare
    os.environ anywhere but as the base of a child's environment
    (dict(os.environ, ...)) counts as '*'."""
    def is_environ(n):
        return isinstance(n, ast.Attribute) and n.attr == "environ" and \
            isinstance(n.value, ast.Name) and n.value.id == "os"
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    got = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.args and isinstance(node.args[0], ast.Constant) and \
                ((node.func.attr == "get" and is_environ(node.func.value)) or
                 (node.func.attr == "getenv" and isinstance(node.func.value, ast.Name)
                  and node.func.value.id == "os")):
            got.append(node.args[0].value)
        elif isinstance(node, ast.Subscript) and is_environ(node.value) and \
                isinstance(node.slice, ast.Constant):
            got.append(node.slice.value)
        elif is_environ(node):
            up = parents.get(node)
            child_env = isinstance(up, ast.Call) and isinstance(up.func, ast.Name) and \
                up.func.id == "dict" and up.args and up.args[0] is node
            used = isinstance(up, ast.Attribute) or isinstance(up, ast.Subscript)
            if not (child_env or used):
                got.append("*")
    return got


def test_no_module_imports_another_modules_private_names():
    bad = {p.name: private_imports(_tree(p)) for p in MODULES}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_environment_is_read_by_the_command_line_only():
    bad = {}
    for p in MODULES:
        allowed = READS_ENV.get(p.name, set())
        if allowed is None:
            continue
        extra = [n for n in env_reads(_tree(p)) if n not in allowed]
        if extra:
            bad[p.name] = extra
    assert bad == {}


def test_the_checks_see_what_they_look_for():
    tree = ast.parse("import os\nfrom harness import qemu\nfrom harness.x import _y\n"
                     "a = os.environ.get('QEMU')\nb = os.getenv('HOME')\n"
                     "c = os.environ['KERNEL_SRC']\nd = dict(os.environ, A='1')\n"
                     "e = qemu._live\nf = list(os.environ)\n")
    assert private_imports(tree) == ["from harness.x import _y", "qemu._live"]
    assert sorted(env_reads(tree)) == ["*", "HOME", "KERNEL_SRC", "QEMU"]
