"""Semantic similarity of two texts from a small sentence-embedding model.

The model is WordLlama's 256-dimensional ``l2_supercat`` (static token embeddings,
mean-pooled; 16 MB of weights and its tokenizer ship inside the ``wordllama`` wheel),
installed by the ``text`` extra: ``pip install 'shadowline[text]'``. It is loaded
from the package's own files, never from the network: WordLlama's ``load()`` looks
for the tokenizer in a folder the wheel does not have and then tries Hugging Face,
so the files are opened here directly.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from shadowline.config import ExperimentConfig
from shadowline.divergence import Similarity
from shadowline.errors import ConfigError

WEIGHTS = "weights/l2_supercat_256.safetensors"
TOKENIZER = "tokenizers/l2_supercat_tokenizer_config.json"


@functools.cache
def load_model() -> Any:
    """The bundled WordLlama model (loaded once per process, about 0.5 s)."""
    try:
        import wordllama
        from safetensors import safe_open
        from tokenizers import Tokenizer
        from wordllama.inference import WordLlamaInference
    except ImportError as exc:
        raise ConfigError(
            f"text_semantic = true needs the text extra: pip install 'shadowline[text]' ({exc})"
        ) from exc
    root = Path(wordllama.__file__).parent
    for name in (WEIGHTS, TOKENIZER):
        if not (root / name).is_file():
            raise ConfigError(f"text_semantic: the wordllama package has no {name} at {root}")
    with safe_open(str(root / WEIGHTS), framework="np", device="cpu") as f:
        embedding = f.get_tensor("embedding.weight")
    return WordLlamaInference(embedding, Tokenizer.from_file(str(root / TOKENIZER)))


def similarity(a: str, b: str) -> float:
    """Cosine similarity of the two texts' sentence embeddings, in [-1, 1]."""
    if not a.strip() or not b.strip():
        return float(a.strip() == b.strip())
    return float(load_model().similarity(a, b))


def similarity_for(exp: ExperimentConfig) -> Similarity | None:
    """The similarity function a text experiment asks for, or None."""
    return similarity if exp.output == "text" and exp.text_semantic else None
