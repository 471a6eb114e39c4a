"""An option that several commands share is declared once (``mmlens.cli_options``), so its help text and default
cannot drift between commands: no typer option or argument is written out twice in the CLI modules."""

import ast
from collections import defaultdict
from pathlib import Path

from typer.main import get_command

import mmlens.cli_options as shared
from mmlens.cli import app

CLI_MODULES = sorted((Path(shared.__file__).parent).glob("cli*.py"))


def _declarations() -> dict[str, list[str]]:
    found = defaultdict(list)
    for path in CLI_MODULES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("Option", "Argument"):
                found[ast.unparse(node)].append(f"{path.name}:{node.lineno}")
    return found


def test_no_option_is_declared_twice():
    found = _declarations()
    assert len(CLI_MODULES) >= 8 and len(found) >= 100  # the scan sees the CLI
    repeated = {text: places for text, places in found.items() if len(places) > 1}
    assert not repeated, f"declare these once in mmlens/cli_options.py: {repeated}"


def test_shared_options_reach_every_command_that_uses_them():
    helps = defaultdict(set)

    def walk(command, path):
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])
        for p in command.params:
            helps[p.opts[0]].add((" ".join(path), p.help if hasattr(p, "help") else None, repr(p.default)))

    walk(get_command(app), [])
    model_help = shared.ModelOpt.help
    with_model = {cmd for cmd, help_, _ in helps["--model"] if help_ == model_help}
    assert {"lens", "trace", "knockout", "explain", "serve", "generate", "tuned-lens", "benchmark",
            "explain-dataset", "sae train", "sae inspect", "dataset-stats heads"} <= with_model
    assert {cmd for cmd, help_, _ in helps["--shard-size"]} == {"explain-dataset", "dataset-stats neurons",
                                                                 "dataset-stats heads", "dataset-stats pruning"}
    assert len({(help_, default) for _, help_, default in helps["--shard-size"]}) == 1
    assert len({(help_, default) for _, help_, default in helps["--engine"]}) == 1
