#!/usr/bin/env python3
"""How many unseen phrasings of a new intent does the TF-IDF model learn from
29 labels? A stand-in for the learning loop's scenario (docs/LEARNING.md).

For each intent named: the intent is taken out of a copy of `data/`; of its
first 24 English and 24 Chinese rows, those at positions 2, 5 and 7 of each
eight (18) are never trained on, and the first 29 of the rest are added as
`--extra`-style labels of a new intent, weighed by `extra_weights` times
`--weight`. Prints the unseen phrasings answered with the new intent above
the tuned threshold. Uses train_model.py's own functions; writes nothing to
the repository.

  python3 scripts/label_weight_experiment.py --weight 3 branch_hours branch_atm
"""
import argparse
import csv
import os
import shutil
import sys
import tempfile
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train_model as tm  # noqa: E402

FILES = ["banking77/train.csv", "intents/edgedesk_intents.csv", "intents/zh_banking77.csv",
         "intents/branch_intents.csv", "intents/golden.csv"]


def without(data, intent, out):
    """A copy of `data` with no row of `intent`; returns the removed texts."""
    shutil.copytree(data, out)
    removed = []
    for f in FILES:
        rows = tm.read_csv(os.path.join(out, f))
        removed += [t for t, c in rows if c == intent and f != "intents/golden.csv"]
        with open(os.path.join(out, f), "w", newline="", encoding="utf-8") as o:
            w = csv.writer(o)
            w.writerow(["text", "category"])
            w.writerows((t, c) for t, c in rows if c != intent)
    return removed


def run(data, intent, weight, c_value):
    with tempfile.TemporaryDirectory() as tmp:
        rows = without(data, intent, os.path.join(tmp, "data"))
        en = [t for t in rows if not tm.CJK.search(t)][:24]
        zh = [t for t in rows if tm.CJK.search(t)][:24]
        picked = list(enumerate(en + zh))
        unseen = [t for i, t in picked if i % 8 in (2, 5, 7)]
        labels = [t for i, t in picked if i % 8 not in (2, 5, 7)][:29]
        sp = tm.load_splits(os.path.join(tmp, "data"), 42)
    base = len(sp["x_tr"])
    x, y = sp["x_tr"] + labels, sp["y_tr"] + ["new:intent"] * len(labels)
    w = tm.extra_weights(y, base)
    w[base:] *= weight
    pipe, _, _, clf = tm.build_pipeline(42, c_value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.fit(x, y, logisticregression__sample_weight=w)
    classes = list(clf.classes_)
    threshold = tm.tune_threshold(pipe.predict_proba(sp["x_cal"]), classes, sp["y_cal"])
    right = 0
    for text, p in zip(unseen, pipe.predict_proba(unseen)):
        if classes[p.argmax()] == "new:intent" and p.max() >= threshold:
            right += 1
        else:
            print(f"  missed {text!r}: {classes[p.argmax()]} ({p.max():.2f})")
    print(f"{intent}: {right} of {len(unseen)} unseen phrasings (label weight {w[-1]:.1f}, threshold {threshold})")
    return right, len(unseen)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("intents", nargs="+", help="intents to stand in for a new one")
    ap.add_argument("--data", default=os.path.join(HERE, "..", "data"), help="data folder (default: the repository's)")
    ap.add_argument("--weight", type=float, default=1.0, help="times extra_weights' weight (default 1)")
    ap.add_argument("--c", type=float, default=20.0, help="inverse regularisation (default as train_model.py)")
    args = ap.parse_args()
    totals = [run(args.data, i, args.weight, args.c) for i in args.intents]
    print(f"all: {sum(r for r, _ in totals)} of {sum(n for _, n in totals)}")


if __name__ == "__main__":
    main()
