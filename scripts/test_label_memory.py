#!/usr/bin/env python3
"""The label memory (train_model.LabelMemory): its ONNX graph gives what its
numpy form gives, which the trainer's threshold and gate are computed with;
a question near a label is pulled to the label's intent, one far from every
label is not; only labels of intents with few rows are remembered. Run by scripts/test.sh: python3 scripts/test_label_memory.py"""
import os
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_model as tm  # noqa: E402


def unit(rows):
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


class LabelMemoryTest(unittest.TestCase):
    def setUp(self):
        rng = np.random.default_rng(7)
        self.labels = unit(rng.normal(size=(6, 16)))
        self.memory = tm.LabelMemory(self.labels, ["new:a", "new:a", "b", "new:a", "b", "oos"],
                                     ["b", "c", "new:a", "oos"], beta=8.0, gamma=20.0)
        self.rng = rng

    def test_graph_gives_the_numpy_terms(self):
        import onnxruntime as ort
        from onnx import TensorProto, helper
        inits, nodes = self.memory.graph("embedding", "m_logits")
        g = helper.make_graph(nodes, "memory", [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [None, 16])],
                              [helper.make_tensor_value_info("m_logits", TensorProto.FLOAT, [None, 4])], inits)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        sess = ort.InferenceSession(model.SerializeToString())
        x = np.vstack([self.labels, unit(self.rng.normal(size=(5, 16)))])
        got = sess.run(["m_logits"], {"embedding": x})[0]
        np.testing.assert_allclose(got, self.memory.logits(x), rtol=1e-4, atol=1e-5)

    def test_a_label_pulls_its_own_intent_only(self):
        t = self.memory.logits(self.labels[:1])[0]
        self.assertAlmostEqual(float(t[2]), 8.0, places=4)   # new:a, its own label: cos 1
        self.assertEqual(float(t[1]), 0.0)                   # c has no label
        self.assertLess(float(t[0]), 1.0)                    # b's labels are far

    def test_far_questions_get_next_to_nothing(self):
        far = unit(-self.labels.sum(axis=0, keepdims=True))
        self.assertLess(float(self.memory.logits(far).max()), 0.1)

    def test_fused_proba_pulls_within_the_encoder_head(self):
        zeros = np.zeros((1, 4), np.float32)
        p = tm.fused_proba(zeros, zeros, self.labels[:1], self.memory, 0.5)
        self.assertEqual(int(p.argmax()), 2)
        self.assertAlmostEqual(float(p.sum()), 1.0, places=5)
        # The memory's term joins the encoder head's logits, so the fusion
        # weighs it by the head's share: half the pull at 0.5.
        t = self.memory.logits(self.labels[:1])[0]
        self.assertAlmostEqual(float(np.log(p[0, 2] / p[0, 0])), 0.5 * float(t[2] - t[0]), places=4)
        # With no share the memory has no say; with no memory, no pull.
        np.testing.assert_allclose(tm.fused_proba(zeros, zeros, self.labels[:1], self.memory, 0.0),
                                   np.full((1, 4), 0.25), rtol=1e-6)
        np.testing.assert_allclose(tm.fused_proba(zeros, zeros, self.labels[:1], None, 0.5),
                                   np.full((1, 4), 0.25), rtol=1e-6)

    def test_embeddings_must_be_unit_vectors(self):
        with self.assertRaisesRegex(ValueError, "unit vectors"):
            tm.LabelMemory(self.labels * 2, ["b"] * 6, ["b"], 8.0, 20.0)


class MemoryRowsTest(unittest.TestCase):
    def test_only_thin_intents_each_label_once(self):
        # weights as extra_weights gives them: above 1 for an intent with
        # fewer rows than a typical one, 1 for one with plenty
        texts = ["take a number", "take a number", "queue ticket?", "lost card", "取号"]
        labels = ["queue_number", "queue_number", "queue_number", "lost_or_stolen_card", "queue_number"]
        weights = [4.4, 4.4, 4.4, 1.0, 4.4]
        self.assertEqual(tm.memory_rows(texts, labels, weights),
                         [("take a number", "queue_number"), ("queue ticket?", "queue_number"),
                          ("取号", "queue_number")])

    def test_an_intent_with_plenty_of_rows_has_none(self):
        self.assertEqual(tm.memory_rows(["lost card"], ["lost_or_stolen_card"], [1.0]), [])


if __name__ == "__main__":
    unittest.main()
