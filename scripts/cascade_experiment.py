#!/usr/bin/env python3
"""How much of the encoder's work a cheap first stage could spare.

The multilingual model spends ~4.5 ms of a core per question on the encoder;
the n-gram model alone ~0.15 ms. A cascade answers with the n-gram model
when it is sure (top probability >= tau and not out of scope) and runs the
full model on the rest. This prints, for a grid of tau, the share of
questions the encoder is spared and the figures of the cascade beside those
of the full model, on the validation split train_model.py carves (both
models learn from its training side only), and the bar train_model.py's
tune_first_stage would choose.

    python scripts/cascade_experiment.py --encoder build/models/e5
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_model as tm  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data")
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    import e5_encoder
    import tempfile

    sp = tm.load_splits(args.data, args.seed)
    x_tr, y_tr, x_cal, y_cal = sp["x_tr"], sp["y_tr"], sp["x_cal"], sp["y_cal"]
    w = np.ones(len(y_tr), np.float32)

    fast, *_ = tm.build_pipeline(args.seed, 20.0)
    tm.fit_model(fast, None, None, x_tr, y_tr, w)
    classes = list(fast.classes_)
    p_fast = fast.predict_proba(x_cal)

    pipe, _, _, clf = tm.build_pipeline(args.seed, 20.0)
    union = pipe.steps[0][1]
    # The model the grid was measured on (docs/MODEL.md): the wheel's encoder.
    enc = e5_encoder.Encoder(args.encoder, x_tr + [t for t, _ in sp["golden"]], tuned=False)
    tmp = tempfile.TemporaryDirectory()
    enc.write(tmp.name)
    texts = list(dict.fromkeys(x_tr + x_cal))
    table = dict(zip(texts, enc.embed(texts)))
    features = tm.embedding_features(union, table, 3.0)
    tm.fit_model(pipe, clf, features, x_tr, y_tr, w)
    assert list(clf.classes_) == classes
    p_full = tm.softmax(clf.decision_function(features(x_cal)))
    threshold = tm.tune_threshold(p_full, classes, y_cal)

    is_zh = np.array([bool(tm.CJK.search(t)) for t in x_cal])
    b77 = set(c for _, c in sp["banking"])
    is_b77 = np.array([c in b77 and c != tm.OOS and not tm.CJK.search(t) for t, c in zip(x_cal, y_cal)])
    groups = {"en": ~is_zh, "zh": is_zh, "banking77": is_b77}
    inscope = np.array(y_cal) != tm.OOS
    show = lambda f: "  ".join(f"{k} {v:.4f}" for k, v in f.items())
    print(f"threshold {threshold}  full: " + show(tm.validation_figures(p_full, classes, y_cal, threshold, groups)))
    for bar in [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95]:
        take = tm.first_stage_takes(p_fast, classes, bar)
        got = tm.validation_figures(tm.cascade(p_fast, p_full, classes, bar), classes, y_cal, threshold, groups)
        print(f"bar {bar:.2f} spared {np.mean(take):.3f} (in-scope {np.mean(take[inscope]):.3f}, "
              f"Chinese in-scope {np.mean(take[inscope & is_zh]):.3f})  " + show(got))
    print(f"chosen by tune_first_stage: {tm.tune_first_stage(p_fast, p_full, classes, y_cal, threshold, groups)}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
