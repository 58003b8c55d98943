"""shadowline: validate candidate models on mirrored production traffic."""

from shadowline.errors import ShadowlineError
from shadowline.interleave import Interleave
from shadowline.router import Assignment, Router
from shadowline.tap import Mirror

__all__ = ["Assignment", "Interleave", "Mirror", "Router", "ShadowlineError"]
__version__ = "0.1.0"
