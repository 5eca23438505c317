"""The rows EdgeDesk's intent models learn from, and the validation split
carved from them (train_model.py, e5_finetune.py and the experiment scripts
all read it here, so they split alike)."""
import csv
import os
import re

from sklearn.model_selection import train_test_split

OOS = "out_of_scope"
CJK = re.compile("[\u4e00-\u9fff]")


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


def load_splits(data, seed, sample=0):
    """Every row the model learns from, split: a stratified 10 % of the
    English and control rows, a stratified fifth of the Chinese rows, and
    CLINC150's oos_val (calibration only, never trained on)."""
    banking = read_csv(os.path.join(data, "banking77/train.csv"))
    if sample:
        banking = banking[:sample]
    own = read_csv(os.path.join(data, "intents/edgedesk_intents.csv"))
    # Files added later get splits of their own, so the English split (and
    # its figures) stays comparable across versions.
    separate = [read_csv(os.path.join(data, f))
                for f in ("intents/zh_banking77.csv", "intents/branch_intents.csv", "intents/out_of_scope.csv",
                          "intents/zh_banking77_colloquial.csv", "intents/everyday_banking.csv")]
    oos_train = read_csv(os.path.join(data, "clinc150-oos/oos_train.csv"))
    oos_val = read_csv(os.path.join(data, "clinc150-oos/oos_val.csv"))
    golden = read_csv(os.path.join(data, "intents/golden.csv"))

    rows = banking + own + oos_train
    texts = [t for t, _ in rows]
    labels = [c for _, c in rows]
    stratify = labels if not sample else None
    x_tr, x_va, y_tr, y_va = train_test_split(texts, labels, test_size=0.1, random_state=seed, stratify=stratify)
    # Each gets a larger split (a fifth: about five rows per intent and
    # language), so its figure rests on enough rows.
    for extra in separate:
        ex, ey = [t for t, _ in extra], [c for _, c in extra]
        # By intent; for a file of one intent (out_of_scope.csv), by language.
        by = ey if len(set(ey)) > 1 else ["zh" if CJK.search(t) else "en" for t in ex]
        zx_tr, zx_va, zy_tr, zy_va = train_test_split(ex, ey, test_size=0.2, random_state=seed,
                                                      stratify=by if not sample else None)
        x_tr, x_va, y_tr, y_va = x_tr + zx_tr, x_va + zx_va, y_tr + zy_tr, y_va + zy_va
    return {
        "banking": banking, "golden": golden,
        "x_tr": x_tr, "x_va": x_va, "y_tr": y_tr, "y_va": y_va,
        # the CLINC oos_val queries only ever calibrate; they are never trained on
        "x_cal": x_va + [t for t, _ in oos_val], "y_cal": y_va + [c for _, c in oos_val],
    }
