"""``pyrovae --help`` and TAB completion of the command names import no torch (its import is
what made them take seconds; how long they take is measured by benchmarks/bench_startup.py,
not here), and every command the table lists is the command its module defines."""
import os
import subprocess
import sys

import pytest

from pyrovae.cli.main import COMMANDS, cli

# run in a fresh interpreter: this test process has imported torch long ago
PROBE = """
import os, sys
from pyrovae.cli.main import main
sys.argv = ["pyrovae", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print("torch loaded" if "torch" in sys.modules else "no torch", file=sys.stderr)
"""


def probe(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args,env,shown", [
    (["--help"], None, "latent-map"),
    ([], {"_PYROVAE_COMPLETE": "bash_complete", "COMP_WORDS": "pyrovae ev", "COMP_CWORD": "1"}, "evaluate"),
    ([], {"_PYROVAE_COMPLETE": "zsh_complete", "COMP_WORDS": "pyrovae ", "COMP_CWORD": "1"}, "traverse"),
    (["--version"], None, "version"),
    (["nonsense"], None, "No such command"),
])
def test_help_and_completion_import_no_torch(args, env, shown):
    result = probe(*args, env=env)
    assert shown in result.stdout + result.stderr, (result.stdout, result.stderr)
    assert result.stderr.strip().endswith("no torch"), result.stderr


def test_a_command_loads_what_it_needs():
    """The probe can fail: a command's own help imports its module, and torch with it."""
    result = probe("fit", "--help")
    assert "--latent-dim" in result.stdout and result.stderr.strip().endswith("torch loaded"), result.stderr


def test_the_table_lists_every_command_with_its_short_help():
    for name, (module, help_line) in COMMANDS.items():
        command = cli.commands[name]
        assert command.name == name and command.get_short_help_str(limit=200) == help_line, name
        assert sys.modules[module].__dict__[name.replace("-", "_")] is command
