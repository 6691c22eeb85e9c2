"""Where a key lives in a Redis Cluster: hash tags that keep what one script touches together.

A Redis Cluster splits keys over 16,384 slots by a hash of the key, or of the part of
the key between the first ``{`` and the next ``}`` (its *hash tag*). A script may only
touch keys of one slot. The cluster store therefore writes every key under one of
``SHARDS`` hash tags: ``{prefix}{<tag>}q:{quota}:{key}`` for a counter,
``{prefix}{<tag>}h:{id}`` for the reservation record of the counters in that shard,
``{prefix}{<tag>}r:…`` for a report's marker there and ``{prefix}{<tag>}usage:events``
for the shard's usage stream. The tag of a counter is the shard of its scope key
(``u=alice``, ``g=acme``, ``*``…), so every quota of one user lives in one slot and a
decision touches one shard per scope, most often one or two.

The tags are chosen once so that shard ``i`` hashes into the ``i``-th of ``SHARDS``
equal ranges of slots: however the cluster assigns slot ranges to its masters, the
shards spread over them evenly. Users spread over the shards by CRC-32 of their scope.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

__all__ = ["SHARDS", "TAGS", "shard_of", "tag_of", "tagged_prefix", "check_prefix"]

SHARDS = 64


def _tags(count: int) -> tuple[str, ...]:
    """``count`` short tags, the ``i``-th hashing into the ``i``-th range of slots."""
    found: list[str | None] = [None] * count
    j = 0
    while None in found:
        tag = f"t{j}"
        i = key_slot(tag.encode()) * count // REDIS_CLUSTER_HASH_SLOTS
        if found[i] is None:
            found[i] = tag
        j += 1
    return tuple(t for t in found if t is not None)


TAGS = _tags(SHARDS)


def shard_of(scope: str) -> int:
    """The shard of a scope key (or any other string a key is placed by)."""
    return zlib.crc32(scope.encode("utf-8", "surrogatepass")) % SHARDS


def tag_of(scope: str) -> str:
    return TAGS[shard_of(scope)]


@lru_cache(maxsize=SHARDS * 4)
def tagged_prefix(prefix: str, tag: str) -> str:
    """The prefix of every key of shard ``tag``: ``{prefix}{<tag>}``."""
    return f"{prefix}{{{tag}}}"


def check_prefix(prefix: str) -> str:
    """``prefix``, or ValueError when it holds a brace (it would move the hash tag)."""
    if "{" in prefix or "}" in prefix:
        raise ValueError(
            f"store: the key prefix {prefix!r} may not hold {{ or }} on a Redis Cluster "
            "(the keys carry hash tags)"
        )
    return prefix
