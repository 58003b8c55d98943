"""The Faust joiner: pairs production and candidate predictions by request ID."""

from shadowline.extras import require

require("pipeline")
