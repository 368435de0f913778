"""The classifier's command-line subcommands, ``train`` and ``evaluate``; triage.cli registers them
with ``add_subcommands``. Each command prints one JSON line, so scripts can read the numbers."""
import argparse
import json
import sys
from pathlib import Path

from triage import classifier


def add_subcommands(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train the appeal classifier on a labelled CSV (id,subject,body,label)")
    train.add_argument("--data", required=True, type=Path, help="labelled CSV file")
    train.add_argument("--out", type=Path, default=classifier.DEFAULT_MODEL_PATH,
                       help="where to write the model (default: the packaged model)")
    train.add_argument("--version", default=None,
                       help="model version stored in the artifact (default: appeals-YYYY.MM-1)")
    train.add_argument("--cv", type=int, default=None, metavar="K",
                       help="folds of the cross-validation used for calibration; also print the "
                            f"CV scores (default folds: {classifier.DEFAULT_PARAMS['cv_folds']})")
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser(
        "evaluate", help="score a model on a labelled CSV (id,subject,body,label)")
    evaluate.add_argument("--data", required=True, type=Path, help="labelled CSV file")
    evaluate.add_argument("--model", type=Path, default=classifier.DEFAULT_MODEL_PATH,
                          help="model file (default: the packaged model)")
    evaluate.set_defaults(func=run_evaluate)


def run_train(args) -> int:
    try:
        rows = classifier.read_csv(args.data)
    except (OSError, ValueError) as e:
        return fail(e)
    version = args.version or default_version()
    params = {"cv_folds": args.cv} if args.cv else {}
    try:
        model = classifier.train(rows, version, **params)
    except ValueError as e:  # e.g. a label with fewer messages than folds
        return fail(e)
    model.save(args.out)
    print(f"trained {version} on {len(rows)} messages -> {args.out}", file=sys.stderr)
    if args.cv:
        print(json.dumps({"model_version": version, "n": len(rows), "cv": model.metadata["cv"]},
                         ensure_ascii=False))
    return 0


def run_evaluate(args) -> int:
    try:
        model = classifier.Classifier.load(args.model)
        rows = classifier.read_csv(args.data)
    except (OSError, ValueError) as e:
        return fail(e)
    scores = classifier.evaluate(model, rows)
    print(json.dumps({**scores, "model_version": model.version}, ensure_ascii=False))
    return 0


def fail(error) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 2


def default_version() -> str:
    from datetime import date
    return f"appeals-{date.today():%Y.%m}-1"


if __name__ == "__main__":  # stand-alone use: python -m triage.cli_model train|evaluate …
    parser = argparse.ArgumentParser(prog="python -m triage.cli_model")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    arguments = parser.parse_args()
    sys.exit(arguments.func(arguments))
