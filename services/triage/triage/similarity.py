"""Near-duplicate text search for hot spots (热点) and repeat petitions (重复访): MinHash signatures
of character 3-gram sets, and a banded LSH index over them whose look-ups stay sublinear in the
number of stored appeals. Pure computation (numpy), no I/O: the service feeds it from its database.

Why not datasketch's MinHashLSH: its in-memory storage keeps a Python set per bucket; measured here
at 100,000 signatures it held 576 MB, which is about 5 GB at the million appeals the index must
hold. This index keeps the same banding scheme in sorted numpy arrays instead (about 0.8 GB at a
million, signatures included):

- each band of ``rows`` signature values hashes to one 64-bit bucket key;
- new entries go to a small in-memory table (a dict), which is frozen into a sorted segment when
  full; segments of similar size are merged (a log-structured merge), so there are O(log n) of them;
- a query looks up its ``bands`` keys in the table and, with a binary search, in every segment:
  O(bands · log² n), plus the check of the candidates' signatures against the query's.

Entries are removed lazily: ``expire`` marks them dead, merges drop them, ``compact`` renumbers.
Similarity is the Jaccard similarity of the two texts' 3-gram sets, estimated by the share of equal
signature values.
"""
import re

import numpy as np

MASK_32 = np.uint64(0xFFFFFFFF)
_NOT_TEXT = re.compile(r"[\W_]+")
_DIGITS = re.compile(r"\d+")


def normalise(text):
    """What counts for similarity: letters and CJK characters, every run of digits as one ``0``
    (house numbers, dates and serial numbers differ between people writing about one thing)."""
    return _DIGITS.sub("0", _NOT_TEXT.sub("", text or "").lower())


def _mix(x):
    """A 64-bit finaliser (MurmurHash3's fmix64), element-wise; uint64 arithmetic wraps."""
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


class MinHasher:
    """MinHash signatures (``num_perm`` 32-bit values) of a text's character ``shingle``-gram set."""

    def __init__(self, num_perm=96, shingle=3, seed=20261125):
        rng = np.random.default_rng(seed)
        # one hash function per value, multiply-add-shift ((a·h + b) mod 2^64) >> 32 with random
        # 64-bit a (odd) and b: a strongly universal family, three operations per shingle and value
        # (an affine map mod a prime over these small h would barely wrap, and its minimum would
        # mostly pick the smallest h for every value)
        top = np.iinfo(np.uint64).max
        self.a = rng.integers(0, top, size=(num_perm, 1), dtype=np.uint64, endpoint=True) | np.uint64(1)
        self.b = rng.integers(0, top, size=(num_perm, 1), dtype=np.uint64, endpoint=True)
        self.num_perm = num_perm
        self.shingle = shingle
        self._weights = _mix(np.arange(1, shingle + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))

    def shingles(self, text):
        """The 32-bit hashes of the text's distinct shingles (one shingle if the text is shorter)."""
        text = normalise(text)
        if not text:
            return np.empty(0, dtype=np.uint64)
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        k = min(self.shingle, len(points))
        windows = np.lib.stride_tricks.sliding_window_view(points, k)
        hashed = _mix((windows * self._weights[:k]).sum(axis=1, dtype=np.uint64)) & MASK_32
        return np.unique(hashed)

    def signature(self, text):
        """The signature (uint32, ``num_perm``), or None for a text with nothing to compare."""
        shingles = self.shingles(text)
        if shingles.size == 0:
            return None
        values = (self.a * shingles[None, :] + self.b) >> np.uint64(32)
        return values.min(axis=1).astype(np.uint32)


    def signatures(self, texts, chunk=32):
        """Signatures of many texts, (n, num_perm) uint32, and a mask of those that had something to
        compare (the others' rows are meaningless), computed ``chunk`` texts per array operation."""
        parts = [self._signatures(texts[i:i + chunk]) for i in range(0, len(texts), chunk)]
        if not parts:
            return np.zeros((0, self.num_perm), dtype=np.uint32), np.zeros(0, dtype=bool)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _signatures(self, texts):
        shingled = [self.shingles(t) for t in texts]
        sizes = np.array([s.size for s in shingled])
        ok = sizes > 0
        result = np.zeros((len(texts), self.num_perm), dtype=np.uint32)
        if ok.any():
            flat = np.concatenate([s for s in shingled if s.size])
            starts = np.concatenate([[0], np.cumsum(sizes[ok])[:-1]])
            values = (self.a * flat[None, :] + self.b) >> np.uint64(32)
            result[ok] = np.minimum.reduceat(values, starts, axis=1).T.astype(np.uint32)
        return result, ok


def similarity(a, b):
    """Estimated Jaccard similarity of two signatures."""
    return float(np.count_nonzero(a == b)) / a.size


class NearDuplicateIndex:
    """Banded MinHash LSH over (key, group, time, signature) entries; see the module docstring.

    ``group`` (e.g. the town) and ``time`` (epoch seconds) let a query ask for near-duplicates in
    one place and a recent window only. Keys are unique: adding a key again changes nothing."""

    def __init__(self, hasher=None, bands=32, rows=3, memtable_entries=2048, max_bucket=64):
        self.hasher = hasher or MinHasher()
        if bands * rows > self.hasher.num_perm:
            raise ValueError("bands × rows must not exceed the signature length")
        self.bands, self.rows, self.max_bucket = bands, rows, max_bucket
        self.memtable_entries = memtable_entries
        self._band_salt = _mix(np.arange(1, bands + 1, dtype=np.uint64))
        self._row_weights = _mix(np.arange(1, rows + 1, dtype=np.uint64) * np.uint64(0x632BE59BD9B4E019))
        self._ids = {}          # key → id
        self._keys = []         # id → key
        self._groups = {}       # group → small int
        self._capacity = 0
        self._group = np.empty(0, dtype=np.int32)
        self._time = np.empty(0, dtype=np.float64)
        self._alive = np.empty(0, dtype=bool)
        self._sigs = np.empty((0, self.hasher.num_perm), dtype=np.uint32)
        self._memtable = {}     # bucket key → [ids]
        self._pending = []      # ids in the memtable, in order
        self._segments = []     # (sorted bucket keys uint64, ids uint32), oldest first
        self.dead = 0

    # --- size -------------------------------------------------------------------------------------
    def __len__(self):
        return len(self._keys) - self.dead

    def __contains__(self, key):
        return key in self._ids

    def nbytes(self):
        arrays = [self._group, self._time, self._alive, self._sigs]
        arrays += [a for segment in self._segments for a in segment]
        return sum(a.nbytes for a in arrays)

    # --- bucket keys --------------------------------------------------------------------------------
    def band_keys(self, signatures):
        """(n, bands) bucket keys of (n, num_perm) signatures."""
        used = signatures[:, :self.bands * self.rows].astype(np.uint64)
        bands = used.reshape(len(signatures), self.bands, self.rows)
        combined = (bands * self._row_weights).sum(axis=2, dtype=np.uint64)
        return _mix(combined ^ self._band_salt)

    # --- adding -------------------------------------------------------------------------------------
    def _grow(self, needed):
        if needed <= self._capacity:
            return
        capacity = max(needed, 2 * self._capacity, 1024)
        self._group = np.resize(self._group, capacity)
        self._time = np.resize(self._time, capacity)
        self._alive = np.resize(self._alive, capacity)
        sigs = np.empty((capacity, self.hasher.num_perm), dtype=np.uint32)
        sigs[:len(self._keys)] = self._sigs[:len(self._keys)]
        self._sigs = sigs
        self._capacity = capacity

    def _group_no(self, group):
        return self._groups.setdefault(group, len(self._groups))

    def add(self, key, text, group=None, at=0.0, signature=None):
        """Index a text (or its precomputed signature). Returns False if the key is already there or
        the text has nothing to compare."""
        if key in self._ids:
            return False
        if signature is None:
            signature = self.hasher.signature(text)
            if signature is None:
                return False
        self.add_signatures([key], signature[None, :], [group], [at])
        return True

    def add_signatures(self, keys, signatures, groups, times):
        """Index many entries at once (a rebuild, a benchmark): the bucket keys are computed in one go
        and large batches become a segment directly. Keys already present must not be passed."""
        n = len(keys)
        if n == 0:
            return
        first = len(self._keys)
        self._grow(first + n)
        ids = np.arange(first, first + n, dtype=np.uint32)
        for offset, key in enumerate(keys):
            self._ids[key] = first + offset
        self._keys.extend(keys)
        self._group[first:first + n] = [self._group_no(g) for g in groups]
        self._time[first:first + n] = times
        self._alive[first:first + n] = True
        self._sigs[first:first + n] = signatures
        buckets = self.band_keys(np.asarray(signatures))
        if n >= self.memtable_entries:
            self._flush()
            self._push_segment(buckets.ravel(), np.repeat(ids, self.bands))
            return
        for entry_id, row in zip(ids.tolist(), buckets.tolist()):
            for bucket in row:
                self._memtable.setdefault(bucket, []).append(entry_id)
            self._pending.append(entry_id)
        if len(self._pending) >= self.memtable_entries:
            self._flush()

    def _flush(self):
        if not self._pending:
            return
        ids = np.asarray(self._pending, dtype=np.uint32)
        buckets = self.band_keys(self._sigs[ids])
        self._memtable, self._pending = {}, []
        self._push_segment(buckets.ravel(), np.repeat(ids, self.bands))

    def _push_segment(self, buckets, ids):
        order = np.argsort(buckets, kind="stable")  # equal buckets keep id (= arrival) order
        self._segments.append((buckets[order], ids[order]))
        # keep segments of geometrically growing size: O(log n) of them
        while len(self._segments) >= 2 and len(self._segments[-2][0]) < 2 * len(self._segments[-1][0]):
            newer = self._segments.pop()
            older = self._segments.pop()
            self._segments.append(self._merge(older, newer))

    def _merge(self, older, newer):
        buckets = np.concatenate([older[0], newer[0]])
        ids = np.concatenate([older[1], newer[1]])
        keep = self._alive[ids]
        if not keep.all():
            buckets, ids = buckets[keep], ids[keep]
        order = np.argsort(buckets, kind="stable")
        return buckets[order], ids[order]

    # --- querying -----------------------------------------------------------------------------------
    def signature(self, text):
        return self.hasher.signature(text)

    def query(self, text=None, threshold=0.5, group=None, since=None, signature=None, exclude=None):
        """[(key, similarity)] of live entries at least ``threshold`` similar, most similar first;
        only in ``group`` and at or after ``since`` when given. A bucket contributes at most its
        ``max_bucket`` most recent entries (a flood of one text must not make a query linear)."""
        if signature is None:
            signature = self.hasher.signature(text)
            if signature is None:
                return []
        candidates = self._candidates(self.band_keys(signature[None, :])[0])
        if candidates.size == 0:
            return []
        keep = self._alive[candidates]
        if group is not None:
            number = self._groups.get(group)
            if number is None:
                return []
            keep &= self._group[candidates] == number
        if since is not None:
            keep &= self._time[candidates] >= since
        candidates = candidates[keep]
        scores = np.count_nonzero(self._sigs[candidates] == signature, axis=1) / signature.size
        hits = np.flatnonzero(scores >= threshold)
        ranked = sorted(zip(scores[hits].tolist(), candidates[hits].tolist()), reverse=True)
        return [(self._keys[i], score) for score, i in ranked if self._keys[i] != exclude]

    def _candidates(self, buckets):
        found = []
        for bucket in buckets.tolist():
            ids = self._memtable.get(bucket)
            if ids:
                found.append(np.asarray(ids[-self.max_bucket:], dtype=np.uint32))
        for keys, ids in self._segments:
            lo = np.searchsorted(keys, buckets, side="left")
            hi = np.searchsorted(keys, buckets, side="right")
            for start, end in zip(lo.tolist(), hi.tolist()):
                if end > start:
                    found.append(ids[max(start, end - self.max_bucket):end])
        if not found:
            return np.empty(0, dtype=np.uint32)
        return np.unique(np.concatenate(found))

    # --- forgetting ---------------------------------------------------------------------------------
    def expire(self, before):
        """Mark entries older than ``before`` (epoch seconds) dead; returns how many."""
        count = len(self._keys)
        old = np.flatnonzero(self._alive[:count] & (self._time[:count] < before))
        self._alive[old] = False
        self.dead += old.size
        if self.dead > max(len(self), 10000):
            self.compact()
        return int(old.size)

    def compact(self):
        """Rebuild from the live entries only (renumbered), freeing what the dead ones held."""
        count = len(self._keys)
        live = np.flatnonzero(self._alive[:count])
        names = {number: group for group, number in self._groups.items()}
        keys = [self._keys[i] for i in live.tolist()]
        groups = [names[g] for g in self._group[live].tolist()]
        times, sigs = self._time[live].copy(), self._sigs[live].copy()
        self.__init__(self.hasher, self.bands, self.rows, self.memtable_entries, self.max_bucket)
        self.add_signatures(keys, sigs, groups, times)


class AppealIndex:
    """The appeals of the recent past as the near-duplicate index holds them: what the hot-spot and
    repeat rules ask. Keys are case numbers, groups towns, times the appeals' receipt (epoch s)."""

    def __init__(self, index=None, retention=None):
        self.index = index or NearDuplicateIndex()
        self.retention = retention  # a timedelta: how long an appeal is kept for comparison

    @staticmethod
    def text_of(title, content):
        return f"{title}\n{content}"

    def signature(self, title, content):
        return self.index.signature(self.text_of(title, content))

    def similarity(self, signature, title, content):
        """How similar an appeal's text is to a signature (0 when either has nothing to compare)."""
        other = self.signature(title, content)
        if signature is None or other is None:
            return 0.0
        return similarity(signature, other)

    def neighbours(self, signature, town_code, since, threshold, exclude=None):
        """[(case_no, similarity)] of the appeals in the town received at or after ``since``."""
        if signature is None:
            return []
        return self.index.query(signature=signature, threshold=threshold, group=town_code,
                                since=since.timestamp(), exclude=exclude)

    def remember(self, case_no, title, content, town_code, received_at, signature=None):
        signature = self.signature(title, content) if signature is None else signature
        if signature is None or case_no in self.index:
            return False
        self.index.add(case_no, None, town_code, received_at.timestamp(), signature=signature)
        return True

    def forget_before(self, instant):
        return self.index.expire(instant.timestamp())

    def forget_expired(self, now):
        return self.forget_before(now - self.retention) if self.retention else 0

    def __len__(self):
        return len(self.index)
