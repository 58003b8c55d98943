"""Which partition a key belongs to, the way the Java client's default partitioner says.

Every message about one request must land on the same partition of every topic,
whatever client produced it, or the joiner's partition-local state never sees the
partners meet. The Java client (and so most JVM and Go services through their
Kafka libraries' "Java-compatible" settings) hashes keys with murmur2;
librdkafka's default (``consistent_random``) uses CRC-32 and disagrees for about
half the keys of a two-partition topic. Our producers therefore set librdkafka's
``murmur2_random``, and the joiner uses the function below to count events that
are not on their key's partition.
"""

from __future__ import annotations

import struct

# librdkafka's name for the Java client's default partitioner (murmur2 for keyed
# messages, random for keyless ones; ours always have keys).
PARTITIONER = "murmur2_random"

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF


def murmur2(key: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``) as an
    unsigned 32-bit integer."""
    length = len(key)
    h = (_SEED ^ length) & _MASK
    tail = length & ~3
    for k in struct.unpack_from(f"<{tail >> 2}I", key):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length & 3
    if extra == 3:
        h ^= key[tail + 2] << 16
    if extra >= 2:
        h ^= key[tail + 1] << 8
    if extra >= 1:
        h ^= key[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner picks for ``key``
    (``toPositive(murmur2(key)) % partitions``)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
