"""Near-duplicate search for hot spots (热点) at 1 million stored appeals: triage.similarity's MinHash
LSH index, as the triage service uses it (one appeal added at a time, one query per new appeal).

The data: the 4,279 real citizen messages of ../shared/data/appeals-hotspots.csv, scaled up to
1,000,000 by resampling with perturbation (a random real message with digits changed, a span cut
out, a sentence moved, place codes swapped and a few characters inserted); the real messages are
mixed in at random positions. The stream arrives evenly over the service's retention (168 hours),
so that all of it is stored at once.

Two indexes are fed the same stream (signatures computed once): the shipped one (buckets per day:
the bucket cap applies per time window) and, as the baseline, the same index with one window for
all time (as it was before, a bucket keeps its 64 newest entries over all stored appeals). Prints,
at 10k, 100k and 1M stored appeals: the insert rate over the stage (signatures computed in batches
of 1,024, then one add at a time; and the adds alone, for both indexes), the query
rate and latency p50/p99 (signature included) of a query over all stored appeals (no town or time
filter) and of a hot-spot query (the last 72 hours), resident memory; then, for both indexes, the
recall on the real near-duplicates (pairs of real messages whose exact 3-gram Jaccard similarity is
at least the threshold, found by brute force) at 1M. The last line is one JSON object.

    .venv/bin/python bench/hotspots.py [--size 1000000] [--queries 2000] [--seed 7] [--no-baseline]
"""
import argparse
import csv
import json
import random
import re
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# bench/triage.py would shadow the triage package: put the package ahead of this directory
sys.path.insert(0, str(REPO / "services" / "triage"))

import numpy as np  # noqa: E402
from scipy import sparse  # noqa: E402

from triage.similarity import NearDuplicateIndex, normalise  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "appeals-hotspots.csv"
THRESHOLD = 0.5  # the hot-spot similarity in the shipped taxonomy
RETENTION = 168 * 3600.0  # NEAR_DUPLICATE_RETENTION_HOURS: the stream spans it
HOTSPOT_WINDOW = 72 * 3600.0  # hotspot.window_hours of the shipped taxonomy
STAGES = (10_000, 100_000, 1_000_000)
PLACES = ["A市", "A1区", "A2区", "A3区", "A4区", "A5区", "A6区", "A7县", "B市", "K4县", "西地省"]
FILLER = "的了在是和有也就都请这那很还已被对把让给从向"


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_messages():
    with open(DATA, encoding="utf-8", newline="") as f:
        return [f"{row['subject']}\n{row['body']}" for row in csv.DictReader(f)]


def perturb(text, rng):
    """Another citizen writing about the same kind of thing: digits changed, a span cut out, a
    sentence moved, a place swapped, a few characters inserted."""
    text = re.sub(r"\d+", lambda m: str(rng.randrange(1, 999)), text)
    sentences = [s for s in re.split(r"(?<=[。！？；\n])", text) if s]
    if len(sentences) > 2:
        sentences.insert(rng.randrange(len(sentences)), sentences.pop(rng.randrange(len(sentences))))
    text = "".join(sentences)
    if len(text) > 40:
        start = rng.randrange(len(text) - 20)
        text = text[:start] + text[start + rng.randrange(5, 20):]
    for place in PLACES:
        if place in text and rng.random() < 0.5:
            text = text.replace(place, rng.choice(PLACES))
    chars = list(text)
    for _ in range(rng.randrange(1, 6)):
        chars.insert(rng.randrange(len(chars) + 1), rng.choice(FILLER))
    return "".join(chars)


def real_near_duplicates(messages):
    """Pairs (i, j) of real messages whose exact Jaccard similarity of 3-gram sets ≥ THRESHOLD."""
    vocabulary, indices, pointers = {}, [], [0]
    for text in messages:
        t = normalise(text)
        for gram in {t[i:i + 3] for i in range(max(1, len(t) - 2))}:
            indices.append(vocabulary.setdefault(gram, len(vocabulary)))
        pointers.append(len(indices))
    x = sparse.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, pointers),
                          shape=(len(messages), len(vocabulary)))
    inter = (x @ x.T).toarray()
    sizes = np.asarray(x.sum(axis=1)).ravel()
    jaccard = inter / (sizes[:, None] + sizes[None, :] - inter)
    pairs = np.argwhere(np.triu(jaccard >= THRESHOLD, 1))
    return [(int(i), int(j)) for i, j in pairs]


def measure_queries(index, texts, count, rng, since=None):
    latencies = []
    sample = [texts[rng.randrange(len(texts))] for _ in range(count)]
    started = time.perf_counter()
    for text in sample:
        t0 = time.perf_counter()
        index.query(text, THRESHOLD, since=since)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"queries_per_second": round(count / elapsed, 1), "query_p50_ms": round(float(np.percentile(ms, 50)), 3),
            "query_p99_ms": round(float(np.percentile(ms, 99)), 3)}


def recall(index, messages, truth):
    found = 0
    for i, j in truth:
        hits = {key for key, _ in index.query(messages[i], THRESHOLD)}
        found += f"r{j}" in hits
    return found / len(truth) if truth else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=STAGES[-1])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the one-window baseline index (half the time and memory)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    stages = [s for s in STAGES if s < args.size] + [args.size]

    messages = read_messages()
    truth = real_near_duplicates(messages)
    print(f"data: {len(messages)} real messages from {DATA.name}; scaled up to {args.size:,} stored "
          f"appeals by resampling with perturbation (real messages mixed in at random positions), "
          f"arriving evenly over {RETENTION / 3600:.0f} hours")
    print(f"real near-duplicate pairs (exact 3-gram Jaccard >= {THRESHOLD}): {len(truth)}")
    # where each real message goes in the stream
    real_at = dict(zip(rng.sample(range(args.size), len(messages)), range(len(messages))))
    step = RETENTION / args.size

    index = NearDuplicateIndex()
    baseline = None if args.no_baseline else NearDuplicateIndex(window_seconds=None)
    print(f"index: MinHash {index.hasher.num_perm} values, {index.bands} bands × {index.rows} rows, "
          f"memtable {index.memtable_entries}, bucket cap {index.max_bucket} per "
          f"{index.window_seconds / 3600:.0f}-hour window; baseline: "
          f"{'the same with one window for all time' if baseline else 'skipped'}")
    results, recent, position = [], [], 0
    for stage in stages:
        sign_seconds = add_seconds = baseline_seconds = 0.0
        while position < stage:
            # the stream in chunks: texts, their signatures (batched), then one add at a time
            chunk = range(position, min(stage, position + 1024))
            keys, texts = [], []
            for at in chunk:
                real = real_at.get(at)
                texts.append(messages[real] if real is not None else perturb(rng.choice(messages), rng))
                keys.append(f"r{real}" if real is not None else f"s{at}")
            t0 = time.perf_counter()
            signatures, ok = index.hasher.signatures(texts)
            t1 = time.perf_counter()
            for key, at, signature, good in zip(keys, chunk, signatures, ok):
                if good:
                    index.add(key, None, None, at * step, signature=signature)
            t2 = time.perf_counter()
            if baseline is not None:
                for key, at, signature, good in zip(keys, chunk, signatures, ok):
                    if good:
                        baseline.add(key, None, None, at * step, signature=signature)
            sign_seconds, add_seconds = sign_seconds + t1 - t0, add_seconds + t2 - t1
            baseline_seconds += time.perf_counter() - t2
            for text in texts:
                if len(recent) < 5000:
                    recent.append(text)
                elif rng.random() < 0.01:
                    recent[rng.randrange(len(recent))] = text
            position = chunk[-1] + 1
        added = stage - (results[-1]["stored"] if results else 0)
        insert_rate = added / (sign_seconds + add_seconds)
        now = (stage - 1) * step
        texts = recent + messages
        row = {"stored": stage, "inserts_per_second": round(insert_rate, 1),
               "adds_per_second": round(added / add_seconds, 1),
               "baseline_adds_per_second": round(added / baseline_seconds, 1) if baseline else None,
               **measure_queries(index, texts, args.queries, rng),
               "hotspot_query": measure_queries(index, texts, args.queries, rng,
                                                since=now - HOTSPOT_WINDOW)}
        if baseline is not None:
            row["baseline"] = measure_queries(baseline, texts, args.queries, rng)
        row.update({"index_mb": round(index.nbytes() / 2**20, 1), "rss_mb": round(rss_mb(), 1)})
        results.append(row)
        print(f"{stage:>9,} stored: insert {row['inserts_per_second']:>8,.0f}/s (adds alone "
              f"{row['adds_per_second']:,.0f}/s)  query "
              f"{row['queries_per_second']:>7,.0f}/s  p50 {row['query_p50_ms']:.2f} ms  "
              f"p99 {row['query_p99_ms']:.2f} ms | last 72 h p50 {row['hotspot_query']['query_p50_ms']:.2f} "
              f"ms p99 {row['hotspot_query']['query_p99_ms']:.2f} ms"
              + (f" | baseline p50 {row['baseline']['query_p50_ms']:.2f} ms "
                 f"p99 {row['baseline']['query_p99_ms']:.2f} ms" if baseline else "")
              + f" | index arrays {row['index_mb']} MB, max RSS {row['rss_mb']} MB", flush=True)

    ours = recall(index, messages, truth)
    print(f"recall on the real near-duplicates at {args.size:,} stored: {ours:.3f}")
    theirs = recall(baseline, messages, truth) if baseline is not None else None
    if theirs is not None:
        print(f"  baseline (one window for all time): {theirs:.3f}; ratio {ours / theirs:.3f}")
    growth = results[-1]["query_p50_ms"] / results[0]["query_p50_ms"]
    size_growth = results[-1]["stored"] / results[0]["stored"]
    print(f"query p50 grew {growth:.1f}× while the stored appeals grew {size_growth:.0f}× (sublinear)")
    print(json.dumps({"benchmark": "hotspots", "data": "appeals-hotspots.csv resampled with perturbation",
                      "threshold": THRESHOLD, "window_hours": index.window_seconds / 3600,
                      "stages": results, "real_pairs": len(truth),
                      "recall": round(ours, 4) if ours is not None else None,
                      "baseline_recall": round(theirs, 4) if theirs is not None else None,
                      "recall_ratio": round(ours / theirs, 4) if theirs else None,
                      "p50_growth": round(growth, 2), "size_growth": size_growth}, ensure_ascii=False))


if __name__ == "__main__":
    main()
