"""The ``reann-nequip`` command: one subcommand per module of this package.

Each subcommand module defines ``HELP`` (one line), ``configure(parser)`` adding its arguments, and
``run(args) -> int``. Modules keep torch/nequip imports inside ``run`` so that ``--help`` stays fast.
"""

import argparse
import importlib
import sys
from typing import List, Optional

# subcommand name -> module implementing it
SUBCOMMANDS = {
    "build-lammps": "reann_nequip.cli.build_lammps",
    "convert": "reann_nequip.cli.convert",
    "import": "reann_nequip.cli.import_reann",
    "evaluate": "reann_nequip.cli.evaluate",
    "select": "reann_nequip.cli.select",
    "train-committee": "reann_nequip.cli.train_committee",
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="reann-nequip",
        description="REANN tools for nequip: REANN data and parameter files, model import, "
        "evaluation, active-learning frame selection and the LAMMPS plugin build.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(sub)
        sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
