"""Let ``nequip-train path/to/config.yaml [overrides…]`` work, as REANN users will type it.

nequip-train is a Hydra application: it takes the config as ``-cd DIR -cn NAME`` and parses any
other positional argument as an override, so a bare file path fails with a parse error. nequip
imports its extensions (this package) before Hydra reads the command line; at that moment, and
only when the program is ``nequip-train`` and its first argument is an existing ``.yaml``/``.yml``
file, we rewrite that one argument into ``-cd DIR -cn NAME``. Everything else is left untouched.
"""

import os
import sys


def accept_config_file_argument() -> None:
    argv = sys.argv
    if len(argv) < 2 or os.path.basename(argv[0]) != "nequip-train":
        return
    path = argv[1]
    stem, extension = os.path.splitext(path)
    if extension not in (".yaml", ".yml") or not os.path.isfile(path):
        return
    config_dir = os.path.dirname(os.path.abspath(path))
    sys.argv = [argv[0], "-cd", config_dir, "-cn", os.path.basename(stem)] + argv[2:]
