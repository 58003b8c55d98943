"""The join's core on plain records and times: no broker, no framework."""

from __future__ import annotations

from shadowline.streams.core import JoinerCore, Record

from shadowline.config import parse_config
from shadowline.envelopes import Prediction, Request
from shadowline.partitioning import partition_for

T = 1_790_000_000_000
OUT = {"label": 1, "probabilities": {"0": 0.2, "1": 0.8}}
CFG = parse_config(
    {
        "joiner": {"late_grace_s": 10},
        "experiments": [
            {
                "name": "e",
                "production_model": "prod",
                "window_s": 2,
                "candidates": [{"name": "a", "model": "m:f"}, {"name": "b", "model": "m:f"}],
            }
        ],
    },
    env={},
)
REQUESTS = CFG.kafka.topic("requests")
PREDICTIONS = CFG.kafka.topic("predictions")
AVRO = [("content-type", b"avro/binary")]


class Feed:
    """Records with increasing offsets, as a consumer would hand them over."""

    def __init__(self) -> None:
        self.offset = 0

    def _rec(self, topic: str, key: bytes, value: bytes, partition: int) -> Record:
        self.offset += 1
        return Record(topic, partition, self.offset, key, value, AVRO)

    def request(self, rid: str, partition: int = 0) -> Record:
        req = Request(rid, "e", T, {"x": 1}, unit_id=f"u-{rid}")
        return self._rec(REQUESTS, req.key, req.encode(), partition)

    def pred(self, rid: str, role: str, model: str, partition: int = 0, **kw) -> Record:
        p = Prediction(rid, "e", role, model, kw.pop("output", OUT), 2.0, T, **kw)
        return self._rec(PREDICTIONS, p.key, p.encode(), partition)

    def raw(self, topic: str, key: bytes, value: bytes, partition: int = 0) -> Record:
        return self._rec(topic, key, value, partition)


def core(**kw) -> JoinerCore:
    c = JoinerCore(CFG, **kw)
    c.assign(0)
    c.assign(1)
    return c


def statuses(step) -> list[tuple[str, str, str]]:
    return sorted((r.request_id, r.candidate_model, r.status) for r in step.rows)


def test_partners_pair_as_soon_as_they_meet_and_states_wait_for_their_rows():
    c, f = core(), Feed()
    step = c.handle([f.request("r1"), f.pred("r1", "production", "prod"),
                     f.pred("r1", "candidate", "a")], T)  # fmt: skip
    assert statuses(step) == [("r1", "a", "matched")]
    assert step.rows[0].unit_id == "u-r1"
    # the state now says "a was emitted": it may only be written after the row
    assert [w.key for w in step.late] == [b"r1"] and step.early == []
    step = c.handle([f.pred("r2", "production", "prod")], T)
    assert step.rows == [] and [w.key for w in step.early] == [b"r2"] and step.late == []


def test_each_key_is_written_once_per_batch():
    c, f = core(), Feed()
    step = c.handle([f.request("r"), f.pred("r", "production", "prod"),
                     f.pred("r", "candidate", "a"), f.pred("r", "candidate", "b")], T)  # fmt: skip
    assert len(step.rows) == 2
    assert [(w.partition, w.key) for w in step.early + step.late] == [(0, b"r")]


def test_duplicates_change_nothing_and_write_nothing():
    c, f = core(), Feed()
    c.handle([f.pred("r", "production", "prod"), f.pred("r", "candidate", "a")], T)
    step = c.handle([f.pred("r", "production", "prod"), f.pred("r", "candidate", "a")], T)
    assert step.rows == [] and step.early == [] and step.late == []
    assert c.stats.duplicates == 2


def test_the_sweep_closes_windows_when_due_and_forgets_after_the_grace():
    c, f = core(), Feed()
    c.handle([f.pred("r", "production", "prod"), f.pred("r", "candidate", "a")], T)
    assert c.handle([], T + 1999).rows == []  # window_s = 2
    step = c.handle([], T + 2000)
    assert statuses(step) == [("r", "b", "missing_candidate")]
    assert c.stats.expired == 1
    # a late partner corrects the row within late_grace_s
    step = c.handle([f.pred("r", "candidate", "b")], T + 5000)
    assert statuses(step) == [("r", "b", "late")] and step.rows[0].revision == 3
    step = c.handle([], T + 2000 + 10_000)
    assert [(w.key, w.value) for w in step.early] == [(b"r", None)]  # a tombstone
    assert c.pending(0) == 0 and c.stats.purged == 1


def test_a_window_with_no_partner_at_all_ends_as_rows_for_every_candidate():
    c, f = core(), Feed()
    c.handle([f.request("lonely")], T)
    step = c.handle([], T + 2000)
    assert statuses(step) == [("lonely", "a", "missing_both"), ("lonely", "b", "missing_both")]


def test_restored_state_pairs_with_partners_that_come_after_the_restore():
    c, f = core(), Feed()
    s1 = c.handle([f.pred("r", "production", "prod"), f.pred("q", "production", "prod")], T)
    s2 = c.handle([f.pred("q", "candidate", "a")], T)
    log = [(w.key, w.value) for s in (s1, s2) for w in s.early + s.late]
    fresh = JoinerCore(CFG)
    fresh.assign(0, log)
    assert fresh.pending(0) == 2 and fresh.stats.restored == 2
    step = fresh.handle([f.pred("r", "candidate", "a"), f.pred("q", "candidate", "a")], T + 100)
    # r pairs normally; q's `a` was emitted before the restore: a duplicate now
    assert statuses(step) == [("r", "a", "matched")]
    assert fresh.stats.duplicates == 1
    # the restored deadlines still close windows
    assert statuses(fresh.handle([], T + 2000)) == [("q", "b", "missing_candidate"),
                                                     ("r", "b", "missing_candidate")]  # fmt: skip


def test_restore_keeps_the_latest_entry_per_key_and_honours_tombstones():
    c, f = core(), Feed()
    first = c.handle([f.pred("r", "production", "prod")], T).early[0].value
    fresh = JoinerCore(CFG)
    fresh.assign(0, [(b"r", first), (b"r", None)])
    assert fresh.pending(0) == 0
    fresh.assign(1, [(b"r", None), (b"r", first)])
    assert fresh.pending(1) == 1


def test_revoked_state_can_be_taken_back_as_it_was():
    c, f = core(), Feed()
    c.handle([f.pred("r", "production", "prod")], T)
    kept = c.revoke(0)
    assert c.owned == [1]
    c.assign(0, kept=kept)
    assert statuses(c.handle([f.pred("r", "candidate", "a")], T)) == [("r", "a", "matched")]


def test_partitions_keep_separate_state():
    c, f = core(), Feed()
    c.handle([f.pred("r", "production", "prod", partition=0)], T)
    step = c.handle([f.pred("r", "candidate", "a", partition=1)], T)
    assert step.rows == [] and c.pending(0) == 1 and c.pending(1) == 1


def test_requests_off_their_murmur2_partition_are_counted():
    c, f = core(partitions=2), Feed()
    keys = [f"k-{i}" for i in range(40)]
    home = {k: partition_for(k.encode(), 2) for k in keys}
    assert set(home.values()) == {0, 1}
    step = c.handle([f.pred(k, "production", "prod", partition=home[k]) for k in keys], T)
    assert step.misplaced == [] and c.stats.misplaced == 0
    wrong = [k + "-x" for k in keys]
    step = c.handle(
        [f.pred(k, "production", "prod", partition=1 - partition_for(k.encode(), 2))
         for k in wrong], T,
    )  # fmt: skip
    assert c.stats.misplaced == len(wrong)
    assert step.misplaced_by_topic() == {PREDICTIONS: len(wrong)}
    topic, rid, got, expected = step.misplaced[0]
    assert (topic, rid) == (PREDICTIONS, wrong[0]) and got == 1 - expected


def test_unusable_predictions_are_dead_lettered_with_the_reason_and_requests_skipped():
    c, f = core(), Feed()
    step = c.handle([
        f.raw(PREDICTIONS, b"x", b"\xc3\x01garbage"),
        f.raw(REQUESTS, b"y", b"not json"),  # the workers dead-letter bad requests
        f.pred("z", "candidate", "nobody"),
    ], T)  # fmt: skip
    reasons = [d.reason for d in step.dead]
    assert len(reasons) == 2
    assert "DecodeError" in reasons[0]
    assert reasons[1] == "candidate 'nobody' is not configured for 'e'"
    assert step.dead[0].value == b"\xc3\x01garbage" and step.dead[0].offset == 1
    assert c.stats.skipped == 1 and step.decode_errors == {PREDICTIONS: 1, REQUESTS: 1}


def test_a_request_id_claimed_by_two_experiments_is_dead_lettered():
    cfg = parse_config({"experiments": [
        {"name": "e", "production_model": "p", "candidates": [{"name": "a", "model": "m:f"}]},
        {"name": "g", "production_model": "p", "candidates": [{"name": "a", "model": "m:f"}]},
    ]}, env={})  # fmt: skip
    c = JoinerCore(cfg)
    one = Prediction("r", "e", "production", "p", OUT, 1.0, T)
    two = Prediction("r", "g", "production", "p", OUT, 1.0, T)
    step = c.handle([Record(PREDICTIONS, 0, 1, one.key, one.encode(), AVRO),
                     Record(PREDICTIONS, 0, 2, two.key, two.encode(), AVRO)], T)  # fmt: skip
    assert [d.reason for d in step.dead] == ["request_id already belongs to experiment 'e'"]
