"""shadowline: validate candidate models on mirrored production traffic."""

from shadowline.errors import ShadowlineError
from shadowline.tap import Mirror

__all__ = ["Mirror", "ShadowlineError"]
__version__ = "0.1.0"
