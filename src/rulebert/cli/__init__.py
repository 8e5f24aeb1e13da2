"""Front end: the ``rulebert`` command line. :mod:`rulebert.cli.entry_point` parses arguments and turns
errors into exit codes; :mod:`rulebert.cli.commands` does what each command says. ``python -m rulebert.cli``
and ``torchrun -m rulebert.cli`` run it too."""

from rulebert.cli.entry_point import main

__all__ = ["main"]
