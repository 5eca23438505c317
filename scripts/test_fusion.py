#!/usr/bin/env python3
"""The fused heads (train_model.fused_logits): the encoder head's share
mixes the two heads' log probabilities, so the fused probabilities are
their weighted geometric mean, renormalised; share 0 and 1 give one head
alone; a share outside [0, 1] is refused with a clear message before any
training. Run by scripts/test.sh: python3 scripts/test_fusion.py"""
import os
import subprocess
import sys
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train_model as tm  # noqa: E402


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class FusionTest(unittest.TestCase):
    def setUp(self):
        rng = np.random.default_rng(3)
        self.ngram = rng.normal(scale=4.0, size=(5, 7))
        self.embed = rng.normal(scale=4.0, size=(5, 7))

    def test_the_ends_are_one_head_alone(self):
        np.testing.assert_allclose(softmax(tm.fused_logits(self.ngram, self.embed, 0.0)), softmax(self.ngram),
                                   rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(softmax(tm.fused_logits(self.ngram, self.embed, 1.0)), softmax(self.embed),
                                   rtol=1e-9, atol=1e-12)

    def test_fused_probabilities_are_the_weighted_geometric_mean(self):
        share = 0.3
        p, q = softmax(self.ngram), softmax(self.embed)
        mean = p ** (1 - share) * q ** share
        mean /= mean.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(softmax(tm.fused_logits(self.ngram, self.embed, share)), mean, rtol=1e-9)

    def test_a_shift_of_one_heads_logits_changes_nothing(self):
        # Log probabilities, not raw logits, are mixed: a head's logits are
        # only defined up to a constant per row.
        shifted = self.embed + np.arange(5)[:, None] * 100.0
        np.testing.assert_allclose(tm.fused_logits(self.ngram, shifted, 0.5),
                                   tm.fused_logits(self.ngram, self.embed, 0.5), rtol=1e-9, atol=1e-9)

    def test_a_share_outside_zero_to_one_is_refused(self):
        for bad in ("1.5", "-0.1"):
            out = subprocess.run([sys.executable, os.path.join(HERE, "train_model.py"), "--out", os.devnull,
                                  "--data", os.path.join(HERE, "..", "data"), "--sample", "50",
                                  "--fusion", bad], capture_output=True, text=True)
            self.assertEqual(out.returncode, 2, out)
            self.assertIn("--fusion must be between 0 and 1", out.stderr)


if __name__ == "__main__":
    unittest.main()
