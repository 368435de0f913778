"""Near-duplicate search for hot spots (热点) at 1 million stored appeals: triage.similarity's MinHash
LSH index, as the triage service uses it (one appeal added at a time, one query per new appeal).

The data: the 4,279 real citizen messages of ../shared/data/appeals-hotspots.csv, scaled up to
1,000,000 by resampling with perturbation (a random real message with digits changed, a span cut
out, a sentence moved, place codes swapped and a few characters inserted); the real messages are
mixed in at random positions. Prints, at 10k, 100k and 1M stored appeals: the insert rate over the
stage, the query rate and the query latency p50/p99 (signature included; a query searches all stored
appeals, no town or time filter), resident memory; then the recall on the real near-duplicates
(pairs of real messages whose exact 3-gram Jaccard similarity is at least the threshold, found by
brute force) at 1M. The last line is one JSON object.

    .venv/bin/python bench/hotspots.py [--size 1000000] [--queries 2000] [--seed 7]
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


def measure_queries(index, texts, count, rng):
    latencies = []
    sample = [texts[rng.randrange(len(texts))] for _ in range(count)]
    started = time.perf_counter()
    for text in sample:
        t0 = time.perf_counter()
        index.query(text, THRESHOLD)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"queries_per_second": round(count / elapsed, 1), "query_p50_ms": round(float(np.percentile(ms, 50)), 3),
            "query_p99_ms": round(float(np.percentile(ms, 99)), 3)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=STAGES[-1])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    stages = [s for s in STAGES if s < args.size] + [args.size]

    messages = read_messages()
    truth = real_near_duplicates(messages)
    print(f"data: {len(messages)} real messages from {DATA.name}; scaled up to {args.size:,} stored "
          f"appeals by resampling with perturbation (real messages mixed in at random positions)")
    print(f"real near-duplicate pairs (exact 3-gram Jaccard >= {THRESHOLD}): {len(truth)}")
    # where each real message goes in the stream
    real_at = dict(zip(rng.sample(range(args.size), len(messages)), range(len(messages))))

    index = NearDuplicateIndex()
    print(f"index: MinHash {index.hasher.num_perm} values, {index.bands} bands × {index.rows} rows, "
          f"memtable {index.memtable_entries}, bucket cap {index.max_bucket}")
    results, recent, position = [], [], 0
    for stage in stages:
        started = time.perf_counter()
        while position < stage:
            real = real_at.get(position)
            text = messages[real] if real is not None else perturb(rng.choice(messages), rng)
            index.add(f"r{real}" if real is not None else f"s{position}", text, None, float(position))
            if len(recent) < 5000:
                recent.append(text)
            elif rng.random() < 0.01:
                recent[rng.randrange(len(recent))] = text
            position += 1
        insert_rate = (stage - (results[-1]["stored"] if results else 0)) / (time.perf_counter() - started)
        row = {"stored": stage, "inserts_per_second": round(insert_rate, 1),
               **measure_queries(index, recent + messages, args.queries, rng),
               "index_mb": round(index.nbytes() / 2**20, 1), "rss_mb": round(rss_mb(), 1)}
        results.append(row)
        print(f"{stage:>9,} stored: insert {row['inserts_per_second']:>8,.0f}/s  query "
              f"{row['queries_per_second']:>7,.0f}/s  p50 {row['query_p50_ms']:.2f} ms  "
              f"p99 {row['query_p99_ms']:.2f} ms  index arrays {row['index_mb']} MB  "
              f"max RSS {row['rss_mb']} MB", flush=True)

    found = 0
    for i, j in truth:
        hits = {key for key, _ in index.query(messages[i], THRESHOLD)}
        found += f"r{j}" in hits
    recall = found / len(truth) if truth else None
    print(f"recall on the real near-duplicates at {args.size:,} stored: {found}/{len(truth)} = {recall:.3f}")
    growth = results[-1]["query_p50_ms"] / results[0]["query_p50_ms"]
    size_growth = results[-1]["stored"] / results[0]["stored"]
    print(f"query p50 grew {growth:.1f}× while the stored appeals grew {size_growth:.0f}× (sublinear)")
    print(json.dumps({"benchmark": "hotspots", "data": "appeals-hotspots.csv resampled with perturbation",
                      "threshold": THRESHOLD, "stages": results, "real_pairs": len(truth),
                      "recall": round(recall, 4) if recall is not None else None,
                      "p50_growth": round(growth, 2), "size_growth": size_growth}, ensure_ascii=False))


if __name__ == "__main__":
    main()
