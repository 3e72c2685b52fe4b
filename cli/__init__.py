"""The ``pyrovae`` command line (installed as ``pyrovae.cli``): one module per command group,
started by :mod:`.main`.

The house rule is to import at the top of a module. The CLI is the one place that breaks it on
purpose: :mod:`.main` answers ``pyrovae --help`` and TAB completion without importing torch (a
few seconds), and imports a command's module, with the library's heavy modules, only once the
command line names that command; the commands may likewise defer what only some of their paths
need (torch, to set ``--threads``).
"""
