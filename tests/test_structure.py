"""The package's shape: imports point one way (no cycle, function-level imports included),
no module imports an entry point, and no module grows past the size one reader can hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "aevb"
ENTRY_POINTS = {"aevb.train", "aevb.evaluate", "aevb.figures_cli"}  # the console scripts of pyproject.toml
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Every aevb module ``path`` imports, at any depth of the file (inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # "from aevb import x" imports the module aevb.x when there is one
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in known and c != name}
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imported_modules(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_import_reader_sees_function_level_and_relative_imports(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("def f():\n    from aevb.train import build\n    from . import checkpoints\n")
    known = {"aevb.train", "aevb.checkpoints", "aevb.m"}
    assert imported_modules("aevb.m", mod, known) == {"aevb.train", "aevb.checkpoints"}


def test_the_import_graph_of_aevb_has_no_cycle():
    graph = import_graph()
    assert {"aevb.building", "aevb.runs", "aevb.pictures"} <= set(graph)  # the graph covers the package
    assert "aevb.building" in graph["aevb.checkpoints"]  # and sees its edges
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_an_entry_point():
    offenders = {name: sorted(deps & ENTRY_POINTS) for name, deps in import_graph().items() if deps & ENTRY_POINTS}
    assert not offenders, f"modules importing a console entry point: {offenders}"


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_size(name):
    n = len(modules()[name].read_text().splitlines())
    assert n <= MAX_LINES, f"{name} has {n} lines (at most {MAX_LINES}: split it by job)"


def test_the_module_contract_is_explicit():
    """What a LightningModule receives (run_config, a constructor argument that checkpoints carry)
    and what the trainer sets (the split test_step scores, through select_eval_split) is explicit."""
    import functools

    import torch

    from aevb.errors import ConfigError
    from aevb.likelihoods import Bernoulli
    from aevb.models import AEVB
    from aevb.nets.mlp import MLPDecoder, MLPEncoder

    def model(**kwargs):
        return AEVB(MLPEncoder((1, 4, 4), 2, hidden_dim=3), MLPDecoder((1, 4, 4), 2, Bernoulli(), hidden_dim=3),
                    functools.partial(torch.optim.SGD, lr=0.1), latent_dim=2, n_train=10, **kwargs)

    ckpt: dict = {}
    model(run_config={"data": {"name": "x"}}).on_save_checkpoint(ckpt)
    assert ckpt["aevb_config"] == {"data": {"name": "x"}} and "run_config" not in model().hparams
    plain: dict = {}
    model().on_save_checkpoint(plain)
    assert "aevb_config" not in plain
    m = model()
    assert m.eval_split == "test"
    m.select_eval_split("train_eval")
    assert m.eval_split == "train_eval"
    with pytest.raises(ConfigError, match="no evaluation split 'train'"):
        m.select_eval_split("train")  # the running training meters are not an evaluation split
