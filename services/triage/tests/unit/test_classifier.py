"""The appeal classifier: the shipped model, training on real messages, calibrated probabilities,
CSV validation and the artifact round trip."""
import csv
import random
from collections import defaultdict
from pathlib import Path

import pytest

from triage import classifier as clf

# The shared/ data folder sits beside the repository root (../shared next to the checkout);
# parents[4] is the repository root itself, also accepted in case shared/ is placed inside it.
_HERE = Path(__file__).resolve()
TRAINING_FILE = next((p for p in (_HERE.parents[5] / "shared" / "data" / "appeals-train.csv",
                                  _HERE.parents[4] / "shared" / "data" / "appeals-train.csv")
                      if p.exists()), _HERE.parents[5] / "shared" / "data" / "appeals-train.csv")
LABELS = ["交通运输", "劳动和社会保障", "卫生计生", "商贸旅游", "城乡建设", "教育文体", "环境保护"]


@pytest.fixture(scope="module")
def appeals():
    if not TRAINING_FILE.exists():
        pytest.skip(f"training data not found at {TRAINING_FILE} (the shared/ folder beside the repo)")
    return clf.read_csv(TRAINING_FILE)


@pytest.fixture(scope="module")
def split(appeals):
    """A stratified sample: 150 messages per label to train on, 50 per label held out."""
    by_label = defaultdict(list)
    for row in appeals:
        by_label[row["label"]].append(row)
    rng = random.Random(7)
    fit, held_out = [], []
    for rows in by_label.values():
        sample = rng.sample(rows, 200)
        fit += sample[:150]
        held_out += sample[150:]
    return fit, held_out


@pytest.fixture(scope="module")
def small_model(split):
    return clf.train(split[0], "test-1", cv_folds=3)


def test_shipped_model_loads_with_version_labels_and_metadata():
    model = clf.Classifier.load(clf.DEFAULT_MODEL_PATH)
    assert model.version.startswith("appeals-")
    assert model.labels == LABELS
    assert model.metadata["training_size"] >= 3000
    assert model.metadata["cv"]["macro_f1"] > 0.85
    result = model.classify("小区门口道路坑洼积水严重", "下雨天路面积水，车辆和行人无法通行，请尽快修复。")
    assert result.label in LABELS


def test_small_model_is_well_above_chance_on_held_out_messages(small_model, split):
    scores = clf.evaluate(small_model, split[1])
    assert scores["n"] == len(split[1])
    assert scores["macro_f1"] > 0.8, scores  # chance is ≈0.14
    assert set(scores["per_label_f1"]) == set(LABELS)
    assert scores["messages_per_second"] > 0
    assert small_model.metadata["cv"]["folds"] == 3
    assert small_model.metadata["training_size"] == len(split[0])


def test_probabilities_are_a_distribution_ranked_by_probability(small_model, split):
    for row in split[1][:50]:
        result = small_model.classify(row["subject"], row["body"])
        probabilities = [p for _, p in result.ranked]
        assert all(0.0 <= p <= 1.0 for p in probabilities)
        assert sum(probabilities) == pytest.approx(1.0)
        assert probabilities == sorted(probabilities, reverse=True)
        assert sorted(label for label, _ in result.ranked) == sorted(LABELS)
        assert (result.label, result.probability) == result.ranked[0]


def test_odd_messages_still_get_a_distribution(small_model):
    for subject, body in [("", ""), ("  ", None), ("hello", "ＡＢＣ 😀 \U0001F600 \ud800")]:
        result = small_model.classify(subject, body)
        assert sum(p for _, p in result.ranked) == pytest.approx(1.0)


def test_classify_many_agrees_with_classify(small_model, split):
    # rows with no n-gram the model knows among them: the batch gathers only the rows' weights
    items = [(r["subject"], r["body"]) for r in split[1][:40]]
    items[3:3] = [("", ""), ("😀", "\U0001F600")]
    one_by_one = [small_model.classify(s, b) for s, b in items]
    batch = small_model.classify_many(items)
    assert [c.label for c in batch] == [c.label for c in one_by_one]
    assert [c.probability for c in batch] == pytest.approx([c.probability for c in one_by_one])
    assert small_model.classify_many([]) == []


def test_save_and_load_give_identical_predictions(small_model, split, tmp_path):
    path = tmp_path / "model.joblib"
    small_model.save(path)
    loaded = clf.Classifier.load(path)
    assert (loaded.version, loaded.labels) == (small_model.version, small_model.labels)
    assert loaded.metadata == small_model.metadata
    for row in split[1][:60]:
        assert loaded.classify(row["subject"], row["body"]) == \
            small_model.classify(row["subject"], row["body"])


def test_csv_missing_a_column_is_rejected_naming_it(tmp_path):
    path = tmp_path / "no-label.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["id", "subject", "body"], ["1", "路灯不亮", "小区路灯坏了"]])
    with pytest.raises(ValueError, match="label"):
        clf.read_csv(path)


def test_training_needs_two_labels():
    rows = [{"subject": "路灯", "body": "路灯坏了", "label": "城乡建设"}] * 10
    with pytest.raises(ValueError, match="two labels"):
        clf.train(rows, "x")


def test_not_an_artifact_is_rejected(tmp_path):
    import joblib
    joblib.dump({"something": "else"}, tmp_path / "other.joblib")
    with pytest.raises(ValueError, match="not a triage classifier"):
        clf.Classifier.load(tmp_path / "other.joblib")
