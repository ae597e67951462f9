"""REANN interatomic potentials as a NequIP extension.

Imported by nequip itself through the ``nequip.extension`` entry point while nequip is still
initialising, so this file must stay light: no ``nequip.model`` import (circular), no models.
"""

from . import _keys  # noqa: F401  (registers the tensor fields with nequip)
from ._cli_compat import accept_config_file_argument
from ._version import __version__

accept_config_file_argument()

__all__ = ["__version__"]
