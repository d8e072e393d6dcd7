"""The mount's cached objects view (``fileview._CachedObjects``) takes ``out`` as the store's own
objects do: ``tensor_bytes`` decodes a base tensor straight into the caller's window through it,
the same bytes as a fresh array, and a window of the wrong size is refused before anything else."""

from __future__ import annotations

import numpy as np
import pytest

from deltastore.filecache import DecodedCache
from deltastore.fileview import _CachedStore
from deltastore.materialize import tensor_bytes


def test_cached_objects_decode_into_the_callers_window(store, base_dir):
    v = store.add_base("m", base_dir)
    cached = _CachedStore(store, DecodedCache(64 << 20, prefetch_workers=0))
    entries = store.manifest(v.manifest).tensor_map()
    for entry in list(entries.values())[:4]:
        fresh = tensor_bytes(store, v.manifest, entry)
        for verify in (True, False):
            window = np.zeros(entry.nbytes, dtype=np.uint8)
            got = tensor_bytes(cached, v.manifest, entry, out=window, verify=verify)
            assert got is window and np.array_equal(window, fresh)
            again = cached.objects.get_array(entry.object, verify=verify, nbytes=entry.nbytes)
            assert np.array_equal(again, fresh) and again is not window
    with pytest.raises(ValueError, match="exactly nbytes"):
        cached.objects.get_array(entry.object, nbytes=entry.nbytes, out=np.zeros(entry.nbytes + 1, dtype=np.uint8))
