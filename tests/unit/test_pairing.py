from shadowline.streams import pairing

from shadowline.config import parse_config
from shadowline.envelopes import Prediction, Request

CFG = parse_config(
    {
        "experiments": [
            {
                "name": "e",
                "production_model": "prod",
                "window_s": 1,
                "candidates": [{"name": "a", "model": "m:f"}, {"name": "b", "model": "m:f"}],
            }
        ]
    },
    env={},
)
EXP = CFG.experiments[0]
T = 1_800_000_000_000
OUT = {"label": 1, "probabilities": {"0": 0.1, "1": 0.9}}


def pred(role, model, output=OUT, error=None, latency=2.0):
    return Prediction("r", "e", role, model, output, latency, T, error)


def fresh():
    return pairing.new_state("r", EXP, T, 0, now=T)


def test_pairs_emit_as_soon_as_both_sides_arrive():
    s = fresh()
    assert pairing.on_prediction(s, pred("candidate", "a", latency=5.0), EXP, T) == []
    rows = pairing.on_prediction(s, pred("production", "prod", latency=2.0), EXP, T)
    assert [(r.candidate_model, r.status, r.revision) for r in rows] == [("a", "matched", 1)]
    assert rows[0].latency_delta_ms == 3.0 and rows[0].agree is True
    rows = pairing.on_prediction(s, pred("candidate", "b"), EXP, T)
    assert [(r.candidate_model, r.status) for r in rows] == [("b", "matched")]
    assert pairing.complete(s, EXP)


def test_duplicates_are_ignored_and_counted():
    s = fresh()
    pairing.on_prediction(s, pred("production", "prod"), EXP, T)
    assert len(pairing.on_prediction(s, pred("candidate", "a"), EXP, T)) == 1
    assert pairing.on_prediction(s, pred("candidate", "a"), EXP, T) == []
    assert pairing.on_prediction(s, pred("production", "prod"), EXP, T) == []
    pairing.on_request(s, Request("r", "e", T, {}, unit_id="u"))
    pairing.on_request(s, Request("r", "e", T, {}, unit_id="u"))
    assert s.duplicates == 3 and s.unit_id == "u"


def test_window_close_marks_missing_and_a_late_partner_corrects_the_row():
    s = fresh()
    pairing.on_prediction(s, pred("production", "prod"), EXP, T)
    pairing.on_prediction(s, pred("candidate", "a"), EXP, T)
    rows = pairing.on_deadline(s, EXP, T + 1000, grace_ms=5000)
    assert [(r.candidate_model, r.status, r.revision) for r in rows] == [
        ("b", "missing_candidate", 0)
    ]
    assert pairing.on_deadline(s, EXP, T + 2000, grace_ms=5000) == []
    late = pairing.on_prediction(s, pred("candidate", "b"), EXP, T + 3000)
    assert [(r.candidate_model, r.status, r.revision) for r in late] == [("b", "late", 3)]
    assert late[0].agree is True
    # a later verdict always outranks the one it corrects
    assert late[0].revision > rows[0].revision


def test_missing_production_and_missing_both():
    s = fresh()
    pairing.on_request(s, Request("r", "e", T, {}))
    pairing.on_prediction(s, pred("candidate", "a"), EXP, T)
    rows = {r.candidate_model: r for r in pairing.on_deadline(s, EXP, T + 1000, 5000)}
    assert rows["a"].status == "missing_production" and rows["a"].candidate_output == OUT
    assert rows["b"].status == "missing_both"
    # production arrives late: both one-sided rows learn of it
    late = {
        r.candidate_model: r for r in pairing.on_prediction(s, pred("production", "prod"), EXP, T)
    }
    assert late["a"].status == "late" and late["a"].revision == 3
    assert late["b"].status == "missing_candidate" and late["b"].revision == 2


def test_failed_candidate_is_kept_apart_from_missing():
    s = fresh()
    pairing.on_prediction(s, pred("production", "prod"), EXP, T)
    err = pairing.on_prediction(
        s, pred("candidate", "a", output=None, error="TimeoutError: slow"), EXP, T
    )
    assert err[0].status == "candidate_error" and err[0].candidate_error == "TimeoutError: slow"
    assert err[0].agree is None and err[0].revision == 1
    both = fresh()
    pairing.on_prediction(both, pred("production", "prod", output=None, error="X: y"), EXP, T)
    rows = pairing.on_prediction(both, pred("candidate", "a", output=None, error="X: z"), EXP, T)
    assert rows[0].status == "both_error"


def test_malformed_candidate_output_becomes_a_candidate_error():
    s = fresh()
    pairing.on_prediction(s, pred("production", "prod"), EXP, T)
    rows = pairing.on_prediction(
        s, pred("candidate", "a", output={"probabilities": {"0": 2.0}}), EXP, T
    )
    assert rows[0].status == "candidate_error"
    assert "OutputError" in rows[0].candidate_error


def test_state_survives_serialisation():
    s = fresh()
    pairing.on_request(s, Request("r", "e", T, {}, unit_id="u", arm="x"))
    pairing.on_prediction(s, pred("production", "prod"), EXP, T)
    pairing.on_prediction(s, pred("candidate", "a"), EXP, T)
    back = pairing.Pending.loads(s.dumps())
    assert back == s


def test_a_compacted_complete_state_still_recognises_duplicates():
    s = fresh()
    pairing.on_prediction(s, pred("production", "prod"), EXP, T)
    pairing.on_prediction(s, pred("candidate", "a"), EXP, T)
    pairing.on_prediction(s, pred("candidate", "b"), EXP, T)
    assert pairing.complete(s, EXP)
    pairing.compact(s)
    back = pairing.Pending.loads(s.dumps())
    assert back.production is not None and back.production.output is None
    assert pairing.on_prediction(back, pred("candidate", "a"), EXP, T) == []
    assert pairing.on_prediction(back, pred("production", "prod"), EXP, T) == []
    assert back.duplicates == 2
