#!/usr/bin/env python3
"""How many unseen phrasings of a new intent does the model learn from 29
labels? A stand-in for the learning loop's scenario (docs/LEARNING.md).

For each intent named: the intent is taken out of a copy of `data/`; of its
first 24 English and 24 Chinese rows, those at positions 2, 5 and 7 of each
eight (18) are never trained on, and the first 29 of the rest are added as
`--extra`-style labels of a new intent, weighed by `extra_weights` times
`--weight` (several weights: one model each). Prints the unseen phrasings
answered with the new intent above the tuned threshold. With `--encoder`, the
model is train_model.py's encoder model as the node runs it: the n-gram and
the sentence-embedding heads fused (`--fusion`), the label memory within the
encoder's head (`--memory-beta 0` leaves it out; several betas and gammas are
tried on the same fit), the threshold tuned, and the first stage in front.
The embeddings are computed once per intent, with the wheel's encoder (not
the tuned layers, which learnt the stand-in's rows). Also prints what the new
intent costs the others: validation in-scope accuracy, out-of-scope recall,
and validation rows taken for the new intent. Uses
train_model.py's own functions; writes nothing to the repository.

  python3 scripts/label_weight_experiment.py --weight 1,3 branch_hours branch_atm
  python3 scripts/label_weight_experiment.py --encoder build/models/e5 --memory-beta 0,8 --memory-gamma 10,20 branch_atm
"""
import argparse
import csv
import os
import shutil
import sys
import tempfile

import numpy as np

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


def run(data, intent, weights, c_value, encoder, share, memory_betas, memory_gammas):
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
        pipe, _, _, clf = tm.build_pipeline(42, c_value)
        head = None
        if encoder:
            import e5_encoder
            from sklearn.linear_model import LogisticRegression
            # As train_model.py --holdout builds it (no refit here either):
            # the vocabulary of what the model learns from, so the unseen
            # phrasings split into known pieces.
            # The wheel's encoder: the layers e5_finetune.py tunes learnt
            # from the stand-in's rows, which a new intent's never are.
            enc = e5_encoder.Encoder(encoder, x + [t for t, _ in sp["golden"]], tuned=False)
            enc.write(tmp)
            texts = list(dict.fromkeys(x + sp["x_cal"] + unseen))
            table = dict(zip(texts, enc.embed(texts)))
            head = LogisticRegression(C=c_value, max_iter=3000, random_state=42)
    results = {}
    x_cal, y_cal = sp["x_cal"], np.array(sp["y_cal"])
    inscope = y_cal != tm.OOS
    groups = tm.validation_groups(x_cal, sp["y_cal"], set(c for _, c in sp["banking"]))
    for weight in weights:
        w = tm.extra_weights(y, base)
        w[base:] *= weight
        tm.fit_model(pipe, clf, None, x, y, w)
        classes = list(clf.classes_)
        if head is None:
            p_cal, p_unseen = pipe.predict_proba(x_cal), pipe.predict_proba(unseen)
            settings = [(0.0, 0.0, tm.tune_threshold(p_cal, classes, sp["y_cal"]), p_cal, p_unseen)]
        else:
            # As train_model.py does: two heads fused, the label memory in
            # the encoder's, the threshold tuned on the full model, then the
            # first stage (the n-gram head alone where it is sure) tuned and
            # put in front, as the node runs it.
            tm.fit_embedding_head(head, [table[t] for t in x], y, w)
            settings = []
            remembered = tm.memory_rows(x[base:], y[base:], w[base:])
            parts = []
            for texts in (x_cal, unseen):
                emb = np.vstack([table[t] for t in texts])
                parts.append((pipe.decision_function(texts), head.decision_function(emb), emb))
            fast_cal, fast_unseen = (tm.softmax(ng) for ng, _, _ in parts)
            for beta in memory_betas:
                for gamma in memory_gammas if beta > 0 else memory_gammas[:1]:
                    memory = None if beta <= 0 else tm.LabelMemory(
                        np.vstack([table[t] for t, _ in remembered]), [c for _, c in remembered], classes, beta, gamma)
                    p_cal, p_unseen = (tm.fused_proba(ng, e, emb, memory, share) for ng, e, emb in parts)
                    threshold = tm.tune_threshold(p_cal, classes, sp["y_cal"])
                    first_min = tm.tune_first_stage(fast_cal, p_cal, classes, sp["y_cal"], threshold, groups)
                    if first_min is not None:
                        p_cal = tm.cascade(fast_cal, p_cal, classes, first_min)
                        p_unseen = tm.cascade(fast_unseen, p_unseen, classes, first_min)
                    settings.append((beta, gamma, threshold, p_cal, p_unseen))
        for beta, gamma, threshold, p_cal, p_unseen in settings:
            right = 0
            for text, p in zip(unseen, p_unseen):
                if classes[p.argmax()] == "new:intent" and p.max() >= threshold:
                    right += 1
                else:
                    print(f"  missed {text!r}: {classes[p.argmax()]} ({p.max():.2f})")
            # What the new intent costs the others, on the validation rows
            # (none of which is the new intent's).
            pred = np.array([classes[i] for i in p_cal.argmax(axis=1)])
            accuracy = float(np.mean(pred[inscope] == y_cal[inscope]))
            taken = int(np.sum(pred == "new:intent"))
            answered = (p_cal.max(axis=1) >= threshold) & (pred != tm.OOS)
            oos_recall = float(np.mean(~answered[~inscope]))
            print(f"{intent}: {right} of {len(unseen)} unseen phrasings (label weight {w[-1]:.1f}, memory "
                  f"{beta:g}/{gamma:g}, threshold {threshold}); validation in-scope accuracy {accuracy:.4f}, "
                  f"out-of-scope recall {oos_recall:.4f}, {taken} of {len(pred)} validation rows taken for "
                  f"the new intent", flush=True)
            results[(weight, beta, gamma)] = (right, len(unseen), accuracy, taken, oos_recall)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("intents", nargs="+", help="intents to stand in for a new one")
    ap.add_argument("--data", default=os.path.join(HERE, "..", "data"), help="data folder (default: the repository's)")
    floats = lambda v: [float(x) for x in v.split(",")]  # noqa: E731
    ap.add_argument("--weight", type=floats, default=[1.0],
                    help="times extra_weights' weight; several, comma-separated, give one model each (default 1)")
    ap.add_argument("--encoder", metavar="DIR", help="add the sentence encoder's features (as train_model.py --encoder)")
    ap.add_argument("--fusion", type=float, default=tm.FUSION,
                    help=f"with --encoder: the encoder head's share, as train_model.py's (default {tm.FUSION:g})")
    ap.add_argument("--memory-beta", type=floats, default=[tm.MEMORY_BETA],
                    help="with --encoder: the label memory's weight, as train_model.py's; 0 leaves it out; "
                         "several, comma-separated, are each tried with every --memory-gamma on the same fit")
    ap.add_argument("--memory-gamma", type=floats, default=[tm.MEMORY_GAMMA], help="as train_model.py's; several too")
    ap.add_argument("--c", type=float, default=20.0, help="inverse regularisation (default as train_model.py)")
    args = ap.parse_args()
    totals = [run(args.data, i, args.weight, args.c, args.encoder, args.fusion,
                  args.memory_beta, args.memory_gamma) for i in args.intents]
    for key in totals[0]:
        rows = [t[key] for t in totals]
        print(f"all, label weight x{key[0]:g}, memory {key[1]:g}/{key[2]:g}: {sum(r[0] for r in rows)} of "
              f"{sum(r[1] for r in rows)} unseen phrasings; mean validation in-scope accuracy "
              f"{np.mean([r[2] for r in rows]):.4f}, out-of-scope recall {np.mean([r[4] for r in rows]):.4f}; "
              f"{sum(r[3] for r in rows)} validation rows taken")


if __name__ == "__main__":
    main()
