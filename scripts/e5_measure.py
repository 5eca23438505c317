#!/usr/bin/env python3
"""Measure multilingual-e5-small as intent features (docs/MODEL.md), on the
trainer's own validation splits; nothing here ships.

Embeds every training and validation row with the encoder (as the
trainer does: e5_encoder.PREFIX, mean pooling) through ONNX Runtime, int8 as it would ship, then
fits logistic-regression heads on the encoder alone and on TF-IDF plus
ALPHA x encoder, and prints accuracy per language, coverage and
out-of-scope recall at the threshold `train_model.tune_threshold` picks.
With --latency it also times the graph on one thread.

Usage: e5_measure.py [--e5 build/models/e5] [--layers 12] [--latency]
"""
import argparse
import os
import re
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e5_encoder  # noqa: E402
import train_model  # noqa: E402

CJK = re.compile("[\u4e00-\u9fff]")


def embed(sess, seqs, remap, H):
    out = np.zeros((len(seqs), H), dtype=np.float32)
    order = np.argsort([len(s) for s in seqs])
    for k in range(0, len(order), 64):
        idx = order[k:k + 64]
        T = max(len(seqs[i]) for i in idx)
        ids = np.zeros((len(idx), T), dtype=np.int64)
        mask = np.zeros((len(idx), T), dtype=np.float32)
        for j, i in enumerate(idx):
            ids[j, :len(seqs[i])] = [remap[t] for t in seqs[i]]
            mask[j, :len(seqs[i])] = 1
        out[idx] = sess.run(["embedding"], {"input_ids": ids, "mask": mask})[0]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--e5", default="build/models/e5")
    ap.add_argument("--data", default="data")
    ap.add_argument("--layers", type=int, default=12, help="keep only the lower N layers")
    ap.add_argument("--latency", action="store_true")
    args = ap.parse_args()
    import onnxruntime as ort
    import scipy.sparse as sp
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from sklearn.linear_model import LogisticRegression

    s = train_model.load_splits(args.data, 42)
    x_tr, y_tr, x_cal, y_cal = s["x_tr"], s["y_tr"], s["x_cal"], s["y_cal"]
    cfg, pieces, scores, norm, tensors = e5_encoder.load(os.path.join(args.e5, "e5-small-q4.bin"))
    cfg = dict(cfg, NL=args.layers)
    tok = e5_encoder.Tokenizer(pieces, scores, norm, unk=cfg["unk"])
    seqs = [[cfg["bos"]] + tok.content(e5_encoder.PREFIX + t)[:e5_encoder.MAX_TOKENS - 2] + [cfg["eos"]] for t in x_tr + x_cal]
    used = sorted({i for q in seqs for i in q})
    remap = {o: i for i, o in enumerate(used)}
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = os.path.join(tmp, "enc.onnx"), os.path.join(tmp, "enc8.onnx")
        e5_encoder.export_onnx(cfg, tensors, used, fp32)
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gather"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        E = embed(ort.InferenceSession(int8, so), seqs, remap, cfg["H"])
        if args.latency:
            so1 = ort.SessionOptions()
            so1.intra_op_num_threads = 1
            one = ort.InferenceSession(int8, so1)
            ids = np.array([[remap[t] for t in seqs[0][:16]] + [0] * (16 - len(seqs[0][:16]))], dtype=np.int64)
            mask = np.ones((1, 16), dtype=np.float32)
            for _ in range(5):
                one.run(None, {"input_ids": ids, "mask": mask})
            t = []
            for _ in range(200):
                t0 = time.perf_counter()
                one.run(None, {"input_ids": ids, "mask": mask})
                t.append(time.perf_counter() - t0)
            print(f"int8, {args.layers} layers, 16 tokens, one thread: p50 {np.percentile(t, 50) * 1e3:.1f} ms, "
                  f"p99 {np.percentile(t, 99) * 1e3:.1f} ms")
    e_tr, e_cal = E[:len(x_tr)], E[len(x_tr):]
    y = np.array(y_cal)
    zh = np.array([bool(CJK.search(t)) for t in x_cal])
    inscope = y != train_model.OOS

    def report(name, proba, classes):
        pred = np.array([classes[i] for i in proba.argmax(1)])
        th = train_model.tune_threshold(proba, classes, y_cal)
        answered = (proba.max(1) >= th) & (pred != train_model.OOS)
        print(f"{name}: EN {np.mean(pred[inscope & ~zh] == y[inscope & ~zh]):.4f}  "
              f"ZH {np.mean(pred[inscope & zh] == y[inscope & zh]):.4f}  threshold {th:.2f}  "
              f"coverage {np.mean(answered[inscope]):.4f}  OOS recall {np.mean(~answered[~inscope]):.4f}",
              flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lr = LogisticRegression(C=50, max_iter=3000).fit(e_tr, y_tr)
        report("e5 only, C=50", lr.predict_proba(e_cal), list(lr.classes_))
        _, word, char, _ = train_model.build_pipeline(42, 20.0)
        union = train_model.make_union(word, char)
        s_tr, s_cal = union.fit_transform(x_tr), union.transform(x_cal)
        for alpha in (2.0, 3.0):
            lr = LogisticRegression(C=20, max_iter=3000)
            lr.fit(sp.hstack([s_tr, sp.csr_matrix(alpha * e_tr)]).tocsr(), y_tr)
            proba = lr.predict_proba(sp.hstack([s_cal, sp.csr_matrix(alpha * e_cal)]).tocsr())
            report(f"TF-IDF + {alpha:g} x e5, C=20", proba, list(lr.classes_))


if __name__ == "__main__":
    main()
