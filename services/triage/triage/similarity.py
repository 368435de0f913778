"""Near-duplicate text search for hot spots (热点) and repeat petitions (重复访): MinHash signatures
of character 3-gram sets, and a banded LSH index over them whose look-ups stay sublinear in the
number of stored appeals. Pure computation (numpy), no I/O: the service feeds it from its database.

Why not datasketch's MinHashLSH: its in-memory storage keeps a Python set per bucket; measured here
at 100,000 signatures it held 576 MB, which is about 5 GB at the million appeals the index must
hold. This index keeps the same banding scheme in sorted numpy arrays instead (about 0.8 GB at a
million, signatures included):

- each band of ``rows`` signature values hashes to one 64-bit bucket key, salted with the entry's
  time window (``window_seconds``, default a day) and carrying its group (the town) in the low 16
  bits: a bucket holds one band value of one town in one window;
- new entries go to a small in-memory table (a dict), which is frozen into a sorted segment when
  full; segments of similar size are merged (a log-structured merge), so there are O(log n) of them;
- a query looks up its ``bands`` keys of each window it asks about (those from ``since`` on, or all
  the index holds) in the table and, with a binary search, in every segment:
  O(bands · windows · log² n), plus the check of the candidates' signatures against the query's.

A bucket contributes at most its ``max_bucket`` newest entries to a query, so that a flood of one
text cannot make look-ups linear. Because buckets are per window and per town, the cap applies per
window and per town: a flood of copies elsewhere or earlier does not push out what a hot-spot query
(one town, the last few days) looks for. With one bucket for all time (``window_seconds=None``) a
million stored appeals, each resampled a few hundred times, lost a quarter of the real
near-duplicate pairs to the cap (bench/hotspots.py measures both).

Entries are removed lazily: ``expire`` marks them dead, merges drop them, ``compact`` renumbers.
Similarity is the Jaccard similarity of the two texts' 3-gram sets, estimated by the share of equal
signature values.
"""
import re

import numpy as np

MASK_32 = np.uint64(0xFFFFFFFF)
GROUP_BITS = np.uint64(0xFFFF)       # the low bits of a bucket key: the entry's group number
BUCKET_BITS = ~GROUP_BITS           # the rest: band value and time window
WINDOW_SECONDS = 24 * 3600.0        # the time window of the buckets (a day)
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

    def __init__(self, hasher=None, bands=32, rows=3, memtable_entries=2048, max_bucket=64,
                 window_seconds=WINDOW_SECONDS):
        self.hasher = hasher or MinHasher()
        if bands * rows > self.hasher.num_perm:
            raise ValueError("bands × rows must not exceed the signature length")
        if window_seconds is not None and window_seconds <= 0:
            raise ValueError("window_seconds must be positive (or None: one window for all time)")
        self.bands, self.rows, self.max_bucket = bands, rows, max_bucket
        self.memtable_entries = memtable_entries
        self.window_seconds = window_seconds
        self._windows = set()   # the window numbers that hold entries
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
    def band_hashes(self, signatures):
        """(n, bands) hashes of the bands of (n, num_perm) signatures."""
        used = signatures[:, :self.bands * self.rows].astype(np.uint64)
        bands = used.reshape(len(signatures), self.bands, self.rows)
        combined = (bands * self._row_weights).sum(axis=2, dtype=np.uint64)
        return _mix(combined ^ self._band_salt)

    def window_of(self, times):
        """The time window number(s) of epoch seconds (0 for all with ``window_seconds=None``)."""
        if self.window_seconds is None:
            return np.zeros(np.shape(times), dtype=np.int64)
        return np.floor(np.asarray(times, dtype=np.float64) / self.window_seconds).astype(np.int64)

    def bucket_keys(self, hashes, windows, group_numbers=None):
        """Bucket keys of band hashes ((n, bands)) in windows ((n,)): the hash salted with the window,
        its low bits replaced by the group number (0 where ``group_numbers`` is None)."""
        salted = hashes if self.window_seconds is None else \
            _mix(hashes ^ _mix(np.asarray(windows).astype(np.uint64) * np.uint64(0x94D049BB133111EB)
                               + np.uint64(1))[:, None])
        keys = salted & BUCKET_BITS
        if group_numbers is not None:
            keys |= (np.asarray(group_numbers).astype(np.uint64) & GROUP_BITS)[:, None]
        return keys

    def band_keys(self, signatures, times=None, group_numbers=None):
        """(n, bands) bucket keys of (n, num_perm) signatures at times (epoch s), in groups."""
        times = np.zeros(len(signatures)) if times is None else times
        return self.bucket_keys(self.band_hashes(signatures), self.window_of(times), group_numbers)

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
        self._windows.update(np.unique(self.window_of(self._time[first:first + n])).tolist())
        buckets = self._entry_keys(ids)
        if n >= self.memtable_entries:
            self._flush()
            self._push_segment(buckets.ravel(), np.repeat(ids, self.bands))
            return
        # the memtable files entries by bucket without the group (a group-less query looks up one key)
        for entry_id, row in zip(ids.tolist(), (buckets & BUCKET_BITS).tolist()):
            for bucket in row:
                self._memtable.setdefault(bucket, []).append(entry_id)
            self._pending.append(entry_id)
        if len(self._pending) >= self.memtable_entries:
            self._flush()

    def _entry_keys(self, ids):
        return self.band_keys(self._sigs[ids], self._time[ids], self._group[ids])

    def _flush(self):
        if not self._pending:
            return
        ids = np.asarray(self._pending, dtype=np.uint32)
        buckets = self._entry_keys(ids)
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
        only in ``group`` and at or after ``since`` when given. A bucket (one band value, group and
        time window) contributes at most its ``max_bucket`` newest entries."""
        if signature is None:
            signature = self.hasher.signature(text)
            if signature is None:
                return []
        number = None
        if group is not None:
            number = self._groups.get(group)
            if number is None:
                return []
        windows = sorted(self._windows) if since is None else \
            [w for w in self._windows if w >= self.window_of(since)]
        if not windows:
            return []
        hashes = self.band_hashes(signature[None, :])
        keys = self.bucket_keys(np.repeat(hashes, len(windows), axis=0), np.asarray(windows)).ravel()
        candidates = self._candidates(keys, number)
        if candidates.size == 0:
            return []
        keep = self._alive[candidates]
        if number is not None:
            keep &= self._group[candidates] == number
        if since is not None:
            keep &= self._time[candidates] >= since
        candidates = candidates[keep]
        scores = np.count_nonzero(self._sigs[candidates] == signature, axis=1) / signature.size
        hits = np.flatnonzero(scores >= threshold)
        ranked = sorted(zip(scores[hits].tolist(), candidates[hits].tolist()), reverse=True)
        return [(self._keys[i], score) for score, i in ranked if self._keys[i] != exclude]

    def _candidates(self, keys, group_number=None):
        """Entry ids in the buckets of ``keys`` (group bits clear): of one group, or of all."""
        cap, found = self.max_bucket, []
        for bucket in keys.tolist():
            ids = self._memtable.get(bucket)
            if ids:
                ids = np.asarray(ids, dtype=np.uint32)
                if group_number is not None:
                    ids = ids[self._group[ids] == group_number]
                found.append(ids[-cap:])
        if group_number is None:
            first, last = keys, keys | GROUP_BITS
        else:
            first = last = keys | (np.uint64(group_number) & GROUP_BITS)
        for segment_keys, ids in self._segments:
            lo = np.searchsorted(segment_keys, first, side="left")
            hi = np.searchsorted(segment_keys, last, side="right")
            hit = hi > lo
            lo, hi = lo[hit], hi[hit]
            if group_number is None:
                # a run of several groups, each oldest first, over the cap: the newest of them all
                mixed = (hi - lo > cap) & (segment_keys[lo] != segment_keys[hi - 1])
                for start, end in zip(lo[mixed].tolist(), hi[mixed].tolist()):
                    found.append(np.sort(ids[start:end])[-cap:])
                lo, hi = lo[~mixed], hi[~mixed]
            if lo.size:
                found.append(ids[_ranges(np.maximum(lo, hi - cap), hi)])
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
        if self.window_seconds is not None:  # a window that ended before ``before`` is empty now
            self._windows = {w for w in self._windows if (w + 1) * self.window_seconds > before}
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
        self.__init__(self.hasher, self.bands, self.rows, self.memtable_entries, self.max_bucket,
                      self.window_seconds)
        self.add_signatures(keys, sigs, groups, times)


def _ranges(starts, ends):
    """The positions start, start + 1, …, end − 1 of every (start, end), in one array."""
    lengths = ends - starts
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return np.arange(lengths.sum()) + shift


class AppealIndex:
    """The appeals of the recent past as the near-duplicate index holds them: what the hot-spot and
    repeat rules ask. Keys are case numbers, groups towns, times the appeals' receipt (epoch s)."""

    def __init__(self, index=None, retention=None):
        self.index = index or NearDuplicateIndex()
        self.retention = retention  # a timedelta: how long an appeal is kept for comparison
        self.changes = 0  # appeals added or dropped so far: an answer read before is still right if unchanged

    @staticmethod
    def text_of(title, content):
        return f"{title}\n{content}"

    def signature(self, title, content):
        return self.index.signature(self.text_of(title, content))

    def signatures(self, messages):
        """:meth:`signature` of many (title, content) pairs, hashed together (a batch's appeals)."""
        if not messages:
            return []
        sigs, ok = self.index.hasher.signatures([self.text_of(t, c) for t, c in messages])
        return [sig if good else None for sig, good in zip(sigs, ok)]

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
        if case_no in self.index:
            return False
        signature = self.signature(title, content) if signature is None else signature
        if signature is None:
            return False
        self.index.add(case_no, None, town_code, received_at.timestamp(), signature=signature)
        self.changes += 1
        return True

    def forget_before(self, instant):
        dropped = self.index.expire(instant.timestamp())
        if dropped:
            self.changes += 1
        return dropped

    def forget_expired(self, now):
        return self.forget_before(now - self.retention) if self.retention else 0

    def __len__(self):
        return len(self.index)

    def __contains__(self, case_no):
        return case_no in self.index
