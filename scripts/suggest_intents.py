"""Group the questions the fleet did not understand into suggested intents.

Run by the controller through the trainer command
(`train_model.py --suggest SAMPLES.jsonl --bundle DIR --out CLUSTERS.json`;
docs/LEARNING.md). Each sample line is `{"id", "text"}`. The texts are
embedded with the sentence encoder the fleet's own model carries (the
bundle's `model.onnx` holds it under the output name `embedding`, with the
bundle's `tokenizer.json`), or, for a bundle without one, with the encoder
folder given by `--encoder`. Then average-linkage clustering on cosine
distance, cut at `--distance`: a group is a suggestion when it has at least
`--min-size` members. Members are listed closest to the group's centre
first, so the first few are its best examples.

The distance was chosen on the training data
(`suggest_intents.py --tune --bundle build/models/multilingual`): see
docs/LEARNING.md.
"""
import csv
import json
import os
import random
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DEFAULT_DISTANCE = 0.55
DEFAULT_MIN_SIZE = 3
# Average linkage keeps an n x n distance matrix: the newest this many.
MAX_SAMPLES = 4000


def unit(emb):
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-9)


class BundleEncoder:
    """The encoder inside a `text+tokens` bundle, run as the node runs it:
    one text per call, the bundle's own vocabulary and prefix."""

    def __init__(self, bundle):
        import onnx
        import onnxruntime as ort
        from onnx.utils import Extractor
        import e5_encoder
        with open(os.path.join(bundle, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        tokens = manifest.get("tokens")
        if manifest.get("input_kind") != "text+tokens" or not tokens:
            raise ValueError("the bundle has no sentence encoder")
        with open(os.path.join(bundle, "tokenizer.json"), encoding="utf-8") as f:
            doc = json.load(f)
        pieces = [p for p, _ in doc["pieces"]]
        scores = np.array([s for _, s in doc["pieces"]], dtype=np.float64)
        norm = {int(cp): out for cp, out in doc["normalize"].items()}
        self.tok = e5_encoder.Tokenizer(pieces, scores, norm, unk=doc["unk"])
        self.tok.unk_score = doc["unk_score"]
        self.bos, self.eos = doc["bos"], doc["eos"]
        self.prefix, self.max_tokens = tokens["prefix"], tokens["max_tokens"]
        model = onnx.load(os.path.join(bundle, "model.onnx"))
        # The embedding is an inner tensor of the bundle's graph: name its
        # type so the encoder's part can be cut out on its own.
        model.graph.value_info.append(
            onnx.helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, None))
        sub = Extractor(model).extract_model(["input_ids", "mask"], ["embedding"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(sub.SerializeToString(), so)

    def embed(self, texts):
        out = []
        for t in texts:
            ids = [self.bos] + self.tok.content(self.prefix + t)[: self.max_tokens - 2] + [self.eos]
            ids = np.array([ids], dtype=np.int64)
            out.append(self.sess.run(["embedding"], {"input_ids": ids, "mask": np.ones(ids.shape, np.float32)})[0][0])
        return np.vstack(out) if out else np.zeros((0, 1), np.float32)


def encoder_for(bundle, encoder_dir, texts):
    try:
        return BundleEncoder(bundle)
    except ValueError:
        if not encoder_dir:
            raise SystemExit("the fleet's model has no sentence encoder and no --encoder folder was given")
        import tempfile
        import e5_encoder
        enc = e5_encoder.Encoder(encoder_dir, texts)
        enc._tmp = tempfile.TemporaryDirectory()
        enc.write(enc._tmp.name)
        return enc


CJK = re.compile("[\u3400-\u9fff]")


def lang_of(text):
    return "zh" if CJK.search(text) else "en"


def language_means(enc, data, per_language=200, seed=11):
    """The mean embedding of each language's questions in the training
    data (a fixed draw): what every question of that language shares."""
    rng = random.Random(seed)
    out = {}
    for lang, path in [("en", "banking77/train.csv"), ("zh", "intents/zh_banking77.csv")]:
        with open(os.path.join(data, path), encoding="utf-8", newline="") as f:
            texts = [r["text"] for r in csv.DictReader(f)]
        out[lang] = unit(enc.embed(rng.sample(texts, min(per_language, len(texts))))).mean(axis=0)
    return out


def cluster(emb, langs, means, distance, min_size):
    """Groups of row indices, largest first, each ordered closest to its
    centre first; groups smaller than `min_size` are left out.

    The encoder puts every Chinese question nearer every other Chinese
    question than its English twin: each language's mean (`means`, from
    the training data) is taken out first, so questions group by what they
    ask rather than by their language."""
    from sklearn.cluster import AgglomerativeClustering
    n = len(emb)
    if n < max(min_size, 2):
        return []
    emb = unit(unit(emb) - np.vstack([means[l] for l in langs]))
    labels = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                     distance_threshold=distance).fit_predict(emb)
    groups = []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        if len(idx) < min_size:
            continue
        centre = emb[idx].mean(axis=0)
        closeness = emb[idx] @ centre / max(np.linalg.norm(centre), 1e-9)
        order = idx[np.argsort(-closeness, kind="stable")]
        groups.append((order.tolist(), float(closeness.mean())))
    groups.sort(key=lambda g: (-len(g[0]), g[0][0]))
    return groups


def run(samples_path, bundle, out, data="data", encoder_dir=None, distance=DEFAULT_DISTANCE,
        min_size=DEFAULT_MIN_SIZE):
    rows = []
    with open(samples_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
                rows.append((str(r["id"]), str(r["text"])))
            except (ValueError, KeyError) as e:
                raise SystemExit(f"{samples_path}:{n}: not a sample ({e})")
    rows = rows[:MAX_SAMPLES]
    texts = [t for _, t in rows]
    enc = encoder_for(bundle, encoder_dir, texts)
    emb = enc.embed(texts)
    groups = cluster(emb, [lang_of(t) for t in texts], language_means(enc, data), distance, min_size)
    doc = {
        "distance": distance,
        "min_size": min_size,
        "samples": len(rows),
        "clusters": [{"members": [rows[i][0] for i in g], "cohesion": round(c, 4)} for g, c in groups],
    }
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False)
    os.replace(tmp, out)
    print(json.dumps({"samples": len(rows), "clusters": len(groups),
                      "clustered": sum(len(g) for g, _ in groups)}))


DISTANCES = [0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8]


def tune(bundle, data="data", seed=7):
    """Pick the cut distance on the training data: several draws of ten
    intents' rows (both languages) mixed with out-of-scope rows, which
    should stay unclustered; the adjusted Rand index against the intents
    and the share of out-of-scope rows left alone, per distance."""
    from sklearn.metrics import adjusted_rand_score
    by = {}  # intent -> language file -> texts
    for path in ["banking77/train.csv", "intents/zh_banking77.csv", "clinc150-oos/oos_train.csv"]:
        with open(os.path.join(data, path), encoding="utf-8", newline="") as f:
            for r in csv.DictReader(f):
                by.setdefault(r["category"], {}).setdefault(path, []).append(r["text"])
    enc = BundleEncoder(bundle)
    means = language_means(enc, data)
    rng = random.Random(seed)
    intents = sorted(k for k in by if k != "out_of_scope" and len(by[k]) == 2)
    draws = []
    for _ in range(5):
        picked = rng.sample(intents, 10)
        texts, truth = [], []
        for i, k in enumerate(picked):
            # As many Chinese questions as English ones.
            for rows in by[k].values():
                for t in rng.sample(rows, min(6, len(rows))):
                    texts.append(t)
                    truth.append(i)
        for t in rng.sample(by["out_of_scope"]["clinc150-oos/oos_train.csv"], 40):
            texts.append(t)
            truth.append(-1)
        draws.append((enc.embed(texts), [lang_of(t) for t in texts], np.array(truth)))
    for d in DISTANCES:
        aris, purity, covered, found, both, alone = [], [], [], [], [], []
        for emb, langs, truth in draws:
            groups = cluster(emb, langs, means, d, DEFAULT_MIN_SIZE)
            pred = np.full(len(truth), -1)
            for g, (members, _) in enumerate(groups):
                pred[members] = g
            inscope = truth >= 0
            # Unclustered rows count as singletons, out-of-scope rows each
            # as a topic of its own.
            p = np.where(pred >= 0, pred, np.arange(len(pred)) + 10_000)
            t = np.where(inscope, truth, np.arange(len(truth)) + 10_000)
            aris.append(adjusted_rand_score(truth[inscope], p[inscope]))
            alone.append(float(np.mean(pred[~inscope] < 0)))
            hit = 0
            for members, _ in groups:
                top = np.bincount(t[members] - t[members].min()).max()
                purity.append(top / len(members))
                if top / len(members) >= 0.8:
                    hit += int(np.sum(inscope[members]))
                    both.append(len({langs[i] for i in members}) == 2)
            covered.append(hit / int(inscope.sum()))
            found.append(len(groups))
        print(json.dumps({"distance": d, "ari_inscope": round(float(np.mean(aris)), 3),
                          "group_purity": round(float(np.mean(purity)) if purity else 0.0, 3),
                          "inscope_in_pure_groups": round(float(np.mean(covered)), 3),
                          "oos_left_alone": round(float(np.mean(alone)), 3),
                          "pure_groups_in_both_languages": round(float(np.mean(both)) if both else 0.0, 3),
                          "groups_per_10_intents": round(float(np.mean(found)), 1)}))


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="Measure the clustering on the training data, per cut distance "
                                             "(grouping itself runs as train_model.py --suggest).")
    ap.add_argument("--tune", action="store_true", required=True)
    ap.add_argument("--bundle", required=True, help="a bundle with the sentence encoder (build/models/multilingual)")
    ap.add_argument("--data", default="data")
    a = ap.parse_args()
    tune(a.bundle, a.data)
