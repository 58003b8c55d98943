"""murmur2 as the Java client computes it: vectors from Kafka's own UtilsTest."""

from shadowline.partitioning import murmur2, partition_for

# org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed Java ints)
KAFKA_VECTORS = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


def test_murmur2_matches_kafkas_test_vectors():
    for text, signed in KAFKA_VECTORS.items():
        assert murmur2(text.encode()) == signed & 0xFFFFFFFF, text


def test_partition_is_the_positive_hash_modulo_the_count():
    for text, signed in KAFKA_VECTORS.items():
        for n in (1, 2, 3, 12):
            assert partition_for(text.encode(), n) == (signed & 0x7FFFFFFF) % n


def test_empty_and_every_tail_length_hash_without_error():
    seen = {murmur2(b"x" * n) for n in range(9)}
    assert len(seen) == 9
