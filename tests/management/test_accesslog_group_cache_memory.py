"""Review of d9697a0: the capture's ``_group_ids`` lru_cache is bounded by
count (4,096 texts), not by size.  A user's ``auto_groups`` text has no
length limit but the 1 MiB request body (ids are checked to exist, not to
be distinct: one group id repeated ~25,000 times is accepted), so an account
admin whose 4,096 users (distinct texts) show up in access logs makes the
management server keep ~4 GiB of texts and tuples after the batches are
stored (before d9697a0 the decoded lists were garbage once a batch was
stored).  Scaled down: 64 users' 256 kB texts must not stay in memory."""

from __future__ import annotations

import gc
import json
import tracemalloc

from nbgateway.management.store import _accesslog


def test_large_auto_groups_texts_are_not_kept_after_the_batch():
    _accesslog._group_ids.cache_clear() if hasattr(_accesslog._group_ids, "cache_clear") else None
    gid = "d4e1c0a2-8b5f-4c1e-9a77-0123456789ab"
    texts = [json.dumps([gid] * (6_500 + i)) for i in range(64)]  # ~256 kB each, distinct
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for text in texts:
            assert len(_accesslog._group_ids(text)) > 6_000
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the texts themselves are this test's; what the call left behind is the cache's
    assert kept - base < 4 * 1024 * 1024, f"{(kept - base) / 2**20:.1f} MiB kept"
