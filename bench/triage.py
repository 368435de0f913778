"""Triage classifier benchmark: cross-validated quality of our model against the anchor baseline,
measured in the same run on the same folds, plus what the service pays to run it.

    .venv/bin/python bench/triage.py [--data shared/data/appeals-train.csv] [--model PATH]
                                     [--folds 5] [--threshold 0.6] [--runs 5]

* quality: k-fold stratified cross-validation on the training file (never the held-out set) of our
  whole recipe (triage.classifier.cross_validate: features, NB-SVM and calibration all refitted per
  fold) and of the baseline (TF-IDF char 1–3-grams of subject + body, LinearSVC), same folds;
* review: with a dispatcher review threshold on the calibrated probability, the share of messages
  sent to review and the accuracy of those that are not (on the out-of-fold probabilities);
* cost of the shipped model: single-message classifications per second (a classify() loop over
  the training messages, median of several runs) and the batch rate (classify_many), load time
  (median), file size, and RSS after loading it in a fresh process (VmRSS from /proc/self/status).

Prints a readable block; the last line is one JSON object with macro_f1, baseline_macro_f1, ratio,
messages_per_second, load_seconds, rss_mb, review_share, accuracy_not_reviewed and more.
Takes about two minutes on two cores.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# this script is itself called triage.py: put the package ahead of the script's directory
sys.path.insert(0, str(REPO / "services" / "triage"))

import numpy as np  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402
from sklearn.svm import LinearSVC  # noqa: E402

from triage import classifier as clf  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "appeals-train.csv"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", type=Path, default=clf.DEFAULT_MODEL_PATH)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=0.6,
                        help="review threshold on the calibrated probability (default 0.6)")
    parser.add_argument("--runs", type=int, default=5, help="timing repetitions (median)")
    args = parser.parse_args(argv)

    rows = clf.read_csv(args.data)
    print(f"data: {len(rows)} labelled messages, {args.folds}-fold stratified CV (seed 0)")

    cost = shipped_model_cost(args.model, rows, args.runs)
    print(f"shipped model {cost['model_version']}: {cost['model_mb']:.1f} MB on disk, "
          f"load {cost['load_seconds']:.3f} s (median), RSS after load {cost['rss_mb']:.0f} MB "
          f"(fresh process, numpy/scipy included)")
    print(f"  single-message: {cost['messages_per_second']:,.0f} messages/s (median of {args.runs}), "
          f"batch: {cost['batch_messages_per_second']:,.0f} messages/s")

    started = time.perf_counter()
    ours = clf.cross_validate(rows, cv_folds=args.folds)
    ours_seconds = time.perf_counter() - started
    started = time.perf_counter()
    baseline = baseline_cross_validation(rows, args.folds)
    baseline_seconds = time.perf_counter() - started

    print(f"ours (NB-SVM char n-grams, calibrated): macro-F1 {ours.summary['macro_f1']:.4f}, "
          f"accuracy {ours.summary['accuracy']:.4f}, log loss {ours.summary['log_loss']:.3f}, "
          f"ECE {ours.summary['expected_calibration_error']:.3f}  [{ours_seconds:.0f} s]")
    print(f"baseline (char 1-3 TF-IDF + LinearSVC): macro-F1 {baseline['macro_f1']:.4f}, "
          f"accuracy {baseline['accuracy']:.4f}  [{baseline_seconds:.0f} s]")
    ratio = ours.summary["macro_f1"] / baseline["macro_f1"]
    print(f"ratio of macro-F1 ours/baseline: {ratio:.4f}")
    print("per-label F1 (ours | baseline):")
    for label in ours.labels:
        print(f"  {label}\t{ours.summary['per_label_f1'][label]:.3f} | "
              f"{baseline['per_label_f1'][label]:.3f}")

    review = review_split(ours, args.threshold)
    print(f"review threshold {args.threshold}: {review['review_share']:.1%} of messages to review; "
          f"accuracy of the rest {review['accuracy_not_reviewed']:.4f} "
          f"(of the reviewed: {review['accuracy_reviewed']:.4f})")

    print(json.dumps({
        "n": len(rows), "folds": args.folds,
        "macro_f1": ours.summary["macro_f1"], "accuracy": ours.summary["accuracy"],
        "baseline_macro_f1": baseline["macro_f1"], "baseline_accuracy": baseline["accuracy"],
        "ratio": round(ratio, 4),
        "log_loss": ours.summary["log_loss"],
        "expected_calibration_error": ours.summary["expected_calibration_error"],
        **cost,
        "threshold": args.threshold, **review,
    }, ensure_ascii=False))


def baseline_cross_validation(rows, folds) -> dict:
    """The anchor baseline on the same folds as clf.cross_validate (same seed and order)."""
    texts = np.array([r["subject"] + "。" + r["body"] for r in rows], dtype=object)
    gold = np.array([r["label"] for r in rows])
    predicted = np.empty(len(rows), dtype=object)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=clf.DEFAULT_PARAMS["seed"])
    for fit_idx, held_idx in splitter.split(texts, gold):
        vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3))
        svm = LinearSVC().fit(vectorizer.fit_transform(texts[fit_idx]), gold[fit_idx])
        predicted[held_idx] = svm.predict(vectorizer.transform(texts[held_idx]))
    labels = sorted(set(gold))
    per_label = f1_score(gold, predicted.astype(str), labels=labels, average=None)
    return {"macro_f1": round(float(f1_score(gold, predicted.astype(str), average="macro")), 4),
            "accuracy": round(float(accuracy_score(gold, predicted.astype(str))), 4),
            "per_label_f1": dict(zip(labels, per_label))}


def review_split(cv, threshold) -> dict:
    """Messages whose calibrated probability is below the threshold go to a dispatcher."""
    confidence = cv.probabilities.max(axis=1)
    correct = np.array(cv.labels)[cv.probabilities.argmax(axis=1)] == cv.gold
    reviewed = confidence < threshold
    return {
        "review_share": round(float(reviewed.mean()), 4),
        "accuracy_not_reviewed": round(float(correct[~reviewed].mean()), 4)
        if (~reviewed).any() else None,
        "accuracy_reviewed": round(float(correct[reviewed].mean()), 4) if reviewed.any() else None,
    }


def shipped_model_cost(model_path, rows, runs) -> dict:
    load_times = []
    for _ in range(runs):
        started = time.perf_counter()
        model = clf.Classifier.load(model_path)
        load_times.append(time.perf_counter() - started)
    messages = [(r["subject"], r["body"]) for r in rows]
    model.classify(*messages[0])  # warm up

    single_rates = []
    for _ in range(runs):
        started = time.perf_counter()
        for subject, body in messages:
            model.classify(subject, body)
        single_rates.append(len(messages) / (time.perf_counter() - started))
    started = time.perf_counter()
    model.classify_many(messages)
    batch_rate = len(messages) / (time.perf_counter() - started)

    return {
        "model_version": model.version,
        "messages_per_second": round(statistics.median(single_rates), 1),
        "batch_messages_per_second": round(batch_rate, 1),
        "load_seconds": round(statistics.median(load_times), 4),
        "model_mb": round(Path(model_path).stat().st_size / 2**20, 2),
        "rss_mb": rss_after_load_in_fresh_process(model_path),
    }


def rss_after_load_in_fresh_process(model_path) -> float:
    """VmRSS of a new interpreter that imports the classifier, loads the model and classifies one
    message: what the model costs a service process, without this benchmark's scikit-learn."""
    probe = (
        "import sys; sys.path.insert(0, sys.argv[2])\n"
        "from triage.classifier import Classifier\n"
        "Classifier.load(sys.argv[1]).classify('路灯不亮', '小区路灯坏了一个月')\n"
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(model_path),
                          str(REPO / "services" / "triage")],
                         check=True, capture_output=True, text=True).stdout
    return round(int(out.split()[-1]) / 1024, 1)


if __name__ == "__main__":
    main()
