"""The appeal classifier: reads a citizen message (subject + body) and names its first-level
category (一级标签) with a calibrated probability, so dispatchers can review the unsure ones.

Plain module (no framework imports); the service, the CLI and the benchmark all use it.

The model, chosen by 5-fold stratified cross-validation on the training file (see bench/triage.py):

* two TF-IDF views of a message (sublinear tf, L2-normalised per view): character 1–4-grams of
  subject + body, and character 1–3-grams of the subject alone (the subject is the citizen's own
  summary, so it gets a view of its own), weighted 0.5 against the message view (the subject is in
  both; at equal weight it dominated: cross-validated macro-F1 0.9045 at 1.0, 0.9109 at 0.5);
* NB-SVM: per label, a linear SVM one-vs-rest on features scaled by the naive-Bayes log-count ratio
  of that label (Wang & Manning 2012), balanced class weights — it beat plain LinearSVC,
  LogisticRegression, ComplementNB and their ensembles in cross-validation;
* calibration: a multinomial logistic regression fitted on the out-of-fold SVM scores turns the
  seven scores into probabilities (one small matrix product at run time).

jieba word uni+bigrams as a third view made no difference in cross-validation of this recipe
(macro-F1 0.9046 with, 0.9045 without; in a later 3-fold screen word unigrams gained ~0.5–0.9
points, bigrams less) but cost ~80 MB of RSS, ~0.8 s of load time and 0.6–2 ms of CPU per message
(its dictionary and Python segmenter: the single-message rate would fall below 1,000/s), so the
model does without them and without jieba. Stacking NB-SVM with LinearSVC, LogisticRegression,
ComplementNB, ridge or modified-Huber SGD gained at most 0.5 points in the screen; see bench/triage.py.
Per-label decision offsets, kNN, LSA, self-training on the unlabelled hotspot messages and other
n-gram ranges did not help either (services/triage/README.md, *The classifier*, has the table).

Character n-grams are coded as integers (characters numbered by an alphabet learnt in training,
four 15-bit digits per n-gram) and looked up in sorted arrays with numpy, which
keeps the model small in memory and a single classification well under a millisecond.

The artifact holds only plain data (alphabet, n-gram codes, idf and weight arrays, metadata), not
pickled scikit-learn objects, so it loads fast and does not depend on the scikit-learn version;
scikit-learn is needed for training only.
"""
from __future__ import annotations

import csv
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import joblib
import numpy as np
from scipy import sparse

DEFAULT_MODEL_PATH = Path(__file__).parent / "data" / "classifier.joblib"
ARTIFACT_FORMAT = "wuji-triage-nbsvm/1"
REQUIRED_COLUMNS = ("id", "subject", "body", "label")

DEFAULT_PARAMS = {
    "C": 1.0,               # SVM regularisation; 1–3 were equal in CV, 0.3 clearly worse
    "cv_folds": 5,          # folds for the out-of-fold scores the calibration is fitted on
    "min_df": 2,            # n-grams seen in one message only are noise (and bloat the model)
    "max_body_chars": 3000,  # bounds the cost of pathological long messages (p95 is ≈1,400)
    "seed": 0,
}

# The views of a message the model reads: name, which text, n-gram lengths, weight.
VIEWS = (
    ("message_chars", "message", (1, 4), 1.0),
    ("subject_chars", "subject", (1, 3), 0.5),  # chosen by CV: see the module docstring
)
DIGIT_BITS = 15  # an n-gram code holds up to four character numbers of 15 bits (< 32,768 characters)



@dataclass(frozen=True)
class Classification:
    label: str
    probability: float
    ranked: list[tuple[str, float]]  # every label with its probability, most likely first


# --- the classifier -------------------------------------------------------------------------------

@dataclass(eq=False)
class Classifier:
    version: str
    labels: list[str]
    features: "MessageFeatures"
    weights: np.ndarray             # (n_features, n_labels) float32: NB ratio × SVM weight per label
    bias: np.ndarray                # (n_labels,)
    calibration_coef: np.ndarray    # (n_labels, n_labels): SVM scores → multinomial logits
    calibration_bias: np.ndarray    # (n_labels,)
    params: dict
    metadata: dict = field(default_factory=dict)  # trained_at, training_size, cv scores, …

    @classmethod
    def load(cls, path=DEFAULT_MODEL_PATH) -> "Classifier":
        artifact = joblib.load(path)
        if not isinstance(artifact, dict) or artifact.get("format") != ARTIFACT_FORMAT:
            raise ValueError(f"{path} is not a triage classifier artifact ({ARTIFACT_FORMAT})")
        del artifact["format"]
        artifact["features"] = MessageFeatures(**artifact["features"])
        return cls(**artifact)

    def save(self, path=DEFAULT_MODEL_PATH) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        artifact = {"format": ARTIFACT_FORMAT, **{name: getattr(self, name) for name in (
            "version", "labels", "weights", "bias", "calibration_coef", "calibration_bias",
            "params", "metadata")}, "features": self.features.as_dict()}
        joblib.dump(artifact, path, compress=3)

    def classify(self, subject: str, body: str) -> Classification:
        columns, values = self.features.of_message(subject, body)
        scores = values @ self.weights[columns] + self.bias
        return self._classification(self._probabilities(scores[None, :])[0])

    def classify_many(self, items: list[tuple[str, str]]) -> list[Classification]:
        if not items:
            return []
        return [self._classification(row) for row in self._probabilities(self.scores(items))]

    def scores(self, items: list[tuple[str, str]]) -> np.ndarray:
        """Uncalibrated SVM scores, one row per (subject, body)."""
        matrix = self.features.matrix(items)
        # only the weight rows of the batch's n-grams: ``matrix @ self.weights`` would first copy all
        # of the float32 weights to float64 (1.7 ms a batch, whatever its size)
        used = sparse.csr_matrix((matrix.data, np.arange(matrix.nnz), matrix.indptr),
                                 shape=(matrix.shape[0], matrix.nnz))
        return used @ self.weights[matrix.indices].astype(np.float64) + self.bias

    def _probabilities(self, scores):
        return _softmax(scores @ self.calibration_coef.T + self.calibration_bias)

    def _classification(self, probabilities):
        order = np.argsort(-probabilities, kind="stable")
        ranked = [(self.labels[i], float(probabilities[i])) for i in order]
        return Classification(label=ranked[0][0], probability=ranked[0][1], ranked=ranked)


# --- reading a message ----------------------------------------------------------------------------

_WHITESPACE = re.compile(r"\s+")


def message_texts(subject, body, max_body_chars) -> dict[str, str]:
    """The texts the views read. Whitespace is dropped because the training data has none."""
    subject = _WHITESPACE.sub("", subject or "").lower()
    body = _WHITESPACE.sub("", body or "").lower()[:max_body_chars]
    return {"subject": subject, "message": subject + "。" + body}


class MessageFeatures:
    """A message as TF-IDF features of character n-grams, one block of columns per view.

    ``alphabet`` numbers the characters seen in training (1, 2, …; 0 = unknown); every view has the
    sorted codes of its n-grams (its vocabulary) and their idf."""

    def __init__(self, alphabet: str, views: list[dict], max_body_chars: int):
        self.alphabet, self.views, self.max_body_chars = alphabet, views, max_body_chars
        self.n_features = sum(len(v["codes"]) for v in views)
        self._numbers = np.zeros(0x110000, dtype=np.uint16)  # code point → character number
        self._numbers[_code_points(alphabet)] = np.arange(1, len(alphabet) + 1)

    def as_dict(self) -> dict:
        return {"alphabet": self.alphabet, "views": self.views,
                "max_body_chars": self.max_body_chars}

    @classmethod
    def fit(cls, messages, min_df: int, max_body_chars: int) -> "MessageFeatures":
        """Vocabulary (n-grams in at least ``min_df`` messages) and smoothed idf of every view."""
        texts = [message_texts(s, b, max_body_chars) for s, b in messages]
        seen = Counter(ch for t in texts for ch in t["message"])
        alphabet = "".join(sorted(ch for ch, _ in seen.most_common(2 ** DIGIT_BITS - 1)))
        features, views, offset = cls(alphabet, [], max_body_chars), [], 0
        for name, text, (lo, hi), weight in VIEWS:
            assert hi * DIGIT_BITS < 63, "n-gram codes must fit in int64"
            per_message = [np.unique(features._ngram_codes(t[text], lo, hi)) for t in texts]
            codes, df = np.unique(np.concatenate(per_message), return_counts=True)
            codes, df = codes[df >= min_df], df[df >= min_df]
            views.append({"name": name, "text": text, "ngrams": (lo, hi), "weight": weight,
                          "offset": offset, "codes": codes,
                          "idf": np.log((1 + len(texts)) / (1 + df)) + 1.0})
            offset += len(codes)
        return cls(alphabet, views, max_body_chars)

    def of_message(self, subject, body) -> tuple[np.ndarray, np.ndarray]:
        """(column indices, values) of one message's non-zero features."""
        texts = message_texts(subject, body, self.max_body_chars)
        columns, values = [], []
        for view in self.views:
            codes, counts = np.unique(self._ngram_codes(texts[view["text"]], *view["ngrams"]),
                                      return_counts=True)
            where = np.searchsorted(view["codes"], codes)
            known = where < len(view["codes"])
            known[known] = view["codes"][where[known]] == codes[known]
            if not known.any():
                continue
            where = where[known]
            tfidf = (1.0 + np.log(counts[known])) * view["idf"][where]  # sublinear tf
            columns.append(where + view["offset"])
            values.append(tfidf * (view["weight"] / np.sqrt(tfidf @ tfidf)))
        if not columns:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        return np.concatenate(columns), np.concatenate(values)

    def matrix(self, items) -> sparse.csr_matrix:
        rows = [self.of_message(s, b) for s, b in items]
        indptr = np.cumsum([0] + [len(cols) for cols, _ in rows])
        columns = np.concatenate([cols for cols, _ in rows]) if rows else np.zeros(0, np.int64)
        values = np.concatenate([vals for _, vals in rows]) if rows else np.zeros(0)
        return sparse.csr_matrix((values, columns, indptr), shape=(len(rows), self.n_features))

    def _ngram_codes(self, text: str, lo: int, hi: int) -> np.ndarray:
        """Every n-gram (lo ≤ n ≤ hi) as an integer: its character numbers as base-2**15 digits.
        Numbers start at 1, so n-grams of different lengths never share a code; n-grams with an
        unknown character are dropped."""
        numbers = self._numbers[_code_points(text)].astype(np.int64)
        unknown_before = np.concatenate(([0], np.cumsum(numbers == 0)))
        codes = []
        for n in range(lo, min(hi, len(numbers)) + 1):
            m = len(numbers) - n + 1
            code = numbers[:m].copy()
            for j in range(1, n):
                code = (code << DIGIT_BITS) | numbers[j:j + m]
            codes.append(code[unknown_before[n:n + m] == unknown_before[:m]])
        return np.concatenate(codes) if codes else np.zeros(0, dtype=np.int64)


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)


# --- training -------------------------------------------------------------------------------------

def train(rows: Iterable[dict], version: str, **params) -> Classifier:
    """Train on rows with subject, body and label. The probabilities are calibrated on out-of-fold
    scores, and the cross-validated scores go into the artifact's metadata."""
    from sklearn.linear_model import LogisticRegression  # scikit-learn: training only

    params = _training_params(params)
    rows = list(rows)
    cv = cross_validate(rows, **params)
    classifier = _fit_scorer([(r["subject"], r["body"]) for r in rows], cv.gold, cv.labels, params)
    calibrator = LogisticRegression(C=1.0, max_iter=1000).fit(cv.out_of_fold_scores, cv.gold)
    assert list(calibrator.classes_) == cv.labels
    classifier.calibration_coef = calibrator.coef_.astype(np.float64)
    classifier.calibration_bias = calibrator.intercept_.astype(np.float64)
    classifier.version = version
    classifier.metadata = {
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "training_size": len(rows),
        "label_counts": dict(sorted(Counter(cv.gold.tolist()).items())),
        "cv": cv.summary,
        "model": "NB-SVM on TF-IDF (message char 1-4, subject char 1-3), "
                 "multinomial-logistic calibration on out-of-fold scores",
    }
    return classifier


@dataclass
class CrossValidation:
    labels: list[str]
    gold: np.ndarray                 # labels in row order
    out_of_fold_scores: np.ndarray   # SVM scores from models that never saw the row
    probabilities: np.ndarray        # calibrated out-of-fold probabilities (calibration cross-fitted)
    summary: dict                    # macro_f1, accuracy, per_label_f1, log_loss, calibration error


def cross_validate(rows: Iterable[dict], **params) -> CrossValidation:
    """Stratified k-fold cross-validation of the whole recipe: vocabulary, idf, SVMs and calibration
    are all fitted without the scored rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, log_loss
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    params = _training_params(params)
    rows = list(rows)
    messages = [(r["subject"], r["body"]) for r in rows]
    gold = np.array([r["label"] for r in rows])
    labels = sorted(set(gold.tolist()))
    if len(labels) < 2:
        raise ValueError("training needs at least two labels")

    folds = StratifiedKFold(params["cv_folds"], shuffle=True, random_state=params["seed"])
    scores = np.zeros((len(rows), len(labels)))
    for fit_idx, held_idx in folds.split(messages, gold):
        fold_model = _fit_scorer([messages[i] for i in fit_idx], gold[fit_idx], labels, params)
        scores[held_idx] = fold_model.scores([messages[i] for i in held_idx])
    probabilities = cross_val_predict(LogisticRegression(C=1.0, max_iter=1000), scores, gold,
                                      cv=folds, method="predict_proba")

    predicted = np.array(labels)[probabilities.argmax(1)]
    per_label = f1_score(gold, predicted, labels=labels, average=None)
    summary = {
        "folds": params["cv_folds"],
        "macro_f1": round(float(f1_score(gold, predicted, average="macro")), 4),
        "accuracy": round(float(accuracy_score(gold, predicted)), 4),
        "per_label_f1": {label: round(float(f), 4) for label, f in zip(labels, per_label)},
        "log_loss": round(float(log_loss(gold, probabilities, labels=labels)), 4),
        "expected_calibration_error": round(expected_calibration_error(
            probabilities.max(1), predicted == gold), 4),
    }
    return CrossValidation(labels, gold, scores, probabilities, summary)


def _training_params(params) -> dict:
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise TypeError(f"unknown training parameters: {sorted(unknown)}")
    return {**DEFAULT_PARAMS, **params}


def _fit_scorer(messages, gold, labels, params) -> Classifier:
    """Features and per-label NB-SVM weights, with identity calibration."""
    from sklearn.svm import LinearSVC

    features = MessageFeatures.fit(messages, params["min_df"], params["max_body_chars"])
    matrix = features.matrix(messages)
    present = matrix.copy()
    present.data[:] = 1.0
    weights = np.zeros((features.n_features, len(labels)), dtype=np.float32)
    bias = np.zeros(len(labels))
    for k, label in enumerate(labels):
        is_label = gold == label
        # naive-Bayes log-count ratio: how much more often a feature occurs in this label's messages
        p = np.asarray(present[is_label].sum(0)).ravel() + 1.0
        q = np.asarray(present[~is_label].sum(0)).ravel() + 1.0
        ratio = np.log((p / p.sum()) / (q / q.sum()))
        svm = LinearSVC(C=params["C"], class_weight="balanced", random_state=params["seed"])
        svm.fit(matrix @ sparse.diags(ratio), is_label)
        weights[:, k] = ratio * svm.coef_.ravel()
        bias[k] = svm.intercept_[0]
    n = len(labels)
    return Classifier(version="", labels=list(labels), features=features, weights=weights,
                      bias=bias, calibration_coef=np.eye(n), calibration_bias=np.zeros(n),
                      params=params)


def _softmax(logits):
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def expected_calibration_error(confidence, correct, bins=10) -> float:
    """Mean |accuracy − confidence| over equal-width confidence bins, weighted by bin size."""
    confidence, correct = np.asarray(confidence), np.asarray(correct, dtype=float)
    edges = np.minimum((confidence * bins).astype(int), bins - 1)
    return float(sum(abs(correct[edges == b].mean() - confidence[edges == b].mean())
                     * (edges == b).mean() for b in range(bins) if (edges == b).any()))


# --- data and evaluation --------------------------------------------------------------------------

def read_csv(path) -> list[dict]:
    """Labelled messages from a UTF-8 CSV with columns id, subject, body, label."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: missing column(s) {', '.join(missing)} "
                                 f"(need {', '.join(REQUIRED_COLUMNS)})")
            rows = []
            for line, row in enumerate(reader, start=2):
                if not (row["label"] or "").strip():
                    raise ValueError(f"{path}, line {line}: empty label")
                rows.append({c: (row[c] or "") for c in REQUIRED_COLUMNS})
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return rows


def evaluate(classifier: Classifier, rows) -> dict:
    """Scores on labelled rows, classifying one message at a time (as the service does)."""
    from sklearn.metrics import accuracy_score, f1_score

    rows = list(rows)
    gold = [r["label"] for r in rows]
    started = time.perf_counter()
    predicted = [classifier.classify(r["subject"], r["body"]).label for r in rows]
    elapsed = time.perf_counter() - started
    labels = sorted(set(gold) | set(predicted))
    per_label = f1_score(gold, predicted, labels=labels, average=None, zero_division=0)
    return {
        "n": len(rows),
        "accuracy": round(float(accuracy_score(gold, predicted)), 4),
        "macro_f1": round(float(f1_score(gold, predicted, average="macro", zero_division=0)), 4),
        "per_label_f1": {label: round(float(f), 4) for label, f in zip(labels, per_label)},
        "messages_per_second": round(len(rows) / elapsed, 1) if elapsed > 0 else None,
    }
