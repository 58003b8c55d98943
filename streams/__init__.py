"""The Faust joiner: pairs production and candidate predictions by request ID."""
