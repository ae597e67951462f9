"""Training helpers usable from nequip YAML configs."""

from .units import ScaledField

__all__ = ["ScaledField"]
