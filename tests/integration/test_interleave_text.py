"""In-process interleave of language models on the real broker, warehouse and joiner.

Four candidates answer every request beside production inside the serving process:
a paraphraser, an off-topic model, one that raises on some inputs and one that
hangs past its timeout on some. The caller always gets production's answer; the
joiner pairs every candidate like shadow traffic and scores the text divergence,
semantic similarity included (the bundled embedding model, no network).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from shadowline import Interleave
from tests.integration.helpers import rows, start_pipeline, wait_for

N = 120
OUTPUT = Path(__file__).resolve().parents[2] / ".shadowline" / "test-output"
FACTS = [
    ("capital of France", "Paris is the capital of France."),
    ("largest planet", "Jupiter is the largest planet in the solar system."),
    ("boiling point of water", "Water boils at 100 degrees Celsius at sea level."),
    ("author of Hamlet", "Hamlet was written by William Shakespeare."),
]
PARAPHRASES = {
    "capital of France": "The capital city of France is Paris.",
    "largest planet": "The biggest planet in our solar system is Jupiter.",
    "boiling point of water": "At sea level, water reaches its boiling point at 100 °C.",
    "author of Hamlet": "William Shakespeare is the author of Hamlet.",
}
EXPERIMENT = {
    "name": "assistant",
    "mode": "interleave",
    "output": "text",
    "text_semantic": True,
    "production_model": "prod",
    "window_s": 5,
    "candidates": [
        {"name": "paraphraser", "model": "unused:in_process"},
        {"name": "offtopic", "model": "unused:in_process"},
        {"name": "crashy", "model": "unused:in_process"},
        {"name": "hangs", "model": "unused:in_process", "timeout_ms": 100},
    ],
}


def test_in_process_candidates_are_paired_and_scored_and_never_touch_the_caller(
    config_factory: Any, child_env: dict[str, str], tmp_path: Any
) -> None:
    config, path = config_factory([EXPERIMENT])
    pipeline = start_pipeline(config, path, child_env, tmp_path / "logs")
    answers = dict(FACTS)
    release = threading.Event()

    def crashy(x: dict[str, Any]) -> str:
        if x["n"] % 4 == 0:
            raise RuntimeError("CUDA error: device-side assert triggered")
        return answers[x["topic"]]

    def hangs(x: dict[str, Any]) -> str:
        if x["n"] % 6 == 0:
            release.wait()
        return answers[x["topic"]]

    try:
        inter = Interleave(
            config, "assistant",
            control=lambda x: answers[x["topic"]],
            candidates={
                "paraphraser": lambda x: PARAPHRASES[x["topic"]],
                "offtopic": lambda x: "Our quarterly revenue grew by five percent.",
                "crashy": crashy,
                "hangs": hangs,
            },
            max_in_flight=64,  # room for every hung call: none is skipped
        )  # fmt: skip
        served = []
        for n in range(N):
            topic = FACTS[n % len(FACTS)][0]
            served.append(inter({"n": n, "topic": topic}, request_id=f"a{n}"))
        assert served == [FACTS[n % len(FACTS)][1] for n in range(N)]
        assert inter.flush(30) == 0
        assert inter.counters.timeouts == N // 6 and inter.counters.candidate_errors == N // 4
        assert inter.counters.skipped_overloaded == 0
        release.set()
        inter.close()
        wait_for(
            lambda: rows(config, "SELECT count() AS n FROM comparisons_final")[0]["n"] == 4 * N,
            120, f"{4 * N} comparisons", pipeline,
        )  # fmt: skip
    finally:
        release.set()
        pipeline.stop()

    by = {
        r["candidate_model"]: r
        for r in rows(
            config,
            "SELECT candidate_model, count() AS n, countIf(status = 'matched') AS matched, "
            "countIf(status = 'candidate_error') AS errors, any(candidate_error) AS error, "
            "avgIf(metrics['semantic_similarity'], status = 'matched') AS similarity, "
            "avgIf(metrics['exact_match'], status = 'matched') AS exact, "
            "avgIf(metrics['token_f1'], status = 'matched') AS f1, "
            "avgIf(metrics['edit_distance'], status = 'matched') AS edit "
            "FROM comparisons_final GROUP BY candidate_model",
        )
    }
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "interleave_text.json").write_text(json.dumps(by, indent=2, default=str))
    assert by["paraphraser"]["matched"] == N and by["paraphraser"]["exact"] == 0
    assert by["paraphraser"]["similarity"] > 0.8 > 0.3 > by["offtopic"]["similarity"]
    assert by["paraphraser"]["f1"] > by["offtopic"]["f1"]
    assert by["offtopic"]["edit"] > by["paraphraser"]["edit"]
    assert by["crashy"]["errors"] == N // 4
    assert by["crashy"]["error"] == "RuntimeError: CUDA error: device-side assert triggered"
    assert by["crashy"]["exact"] == 1.0  # where it answered, it answered like production
    assert by["hangs"]["errors"] == N // 6
    errors = rows(
        config,
        "SELECT DISTINCT candidate_error AS e FROM comparisons_final "
        "WHERE candidate_model = 'hangs' AND status = 'candidate_error'",
    )
    assert [r["e"] for r in errors] == [
        "TimeoutError: candidate 'hangs' did not answer within 100 ms"
    ]
