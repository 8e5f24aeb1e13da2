"""``python -m rulebert.cli`` (and ``torchrun -m rulebert.cli``): the ``rulebert`` command."""

import sys

from rulebert.cli.entry_point import main

sys.exit(main())
