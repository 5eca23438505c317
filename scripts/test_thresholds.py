#!/usr/bin/env python3
"""How the trainer picks its confidence threshold on validation
(train_model.tune_threshold): out-of-scope recall at its floor first, then
as high a threshold as keeps in-scope coverage at its floor; and the bar of
the first stage (train_model.tune_first_stage). Run by scripts/test.sh:
python3 scripts/test_thresholds.py"""
import os
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_model as tm  # noqa: E402

CLASSES = ["a", "b", tm.OOS]


def rows(*probs):
    return np.array(probs, dtype=np.float64)


class ThresholdTest(unittest.TestCase):
    def test_the_recall_floor_comes_first(self):
        # 20 out-of-scope rows: one is taken for "a" at 0.6, the rest are
        # out_of_scope: recall 19/20 = 0.95 from the lowest threshold on,
        # which then rises to the five in-scope rows' confidence (0.4), where
        # all of them are still answered.
        proba = rows(*([[0.6, 0.2, 0.2]] + [[0.1, 0.1, 0.8]] * 19 + [[0.4, 0.3, 0.3]] * 5))
        y = [tm.OOS] * 20 + ["a"] * 5
        self.assertEqual(tm.tune_threshold(proba, CLASSES, y), 0.4)
        # Two of them at 0.655: 18/20 = 0.90 < 0.93 until the threshold
        # passes it, though no in-scope question is answered there.
        proba[0] = proba[1] = [0.655, 0.2, 0.145]
        self.assertEqual(tm.tune_threshold(proba, CLASSES, y), 0.66)
        self.assertLess(tm.oos_recall_at(proba, CLASSES, y, 0.65), tm.OOS_RECALL_FLOOR)
        self.assertGreaterEqual(tm.oos_recall_at(proba, CLASSES, y, 0.66), tm.OOS_RECALL_FLOOR)

    def test_the_threshold_rises_while_coverage_stays_at_its_floor(self):
        # Every out-of-scope row is held firmly, so recall is met at 0.05;
        # of 100 in-scope rows, 2 are unsure (0.3) and 3 fairly sure (0.5):
        # the threshold rises past the two (98 % still answered) but not
        # past the three (95 % < 97 %).
        inscope = [[0.3, 0.35, 0.35]] * 2 + [[0.5, 0.25, 0.25]] * 3 + [[0.9, 0.05, 0.05]] * 95
        proba = rows(*(inscope + [[0.02, 0.03, 0.95]] * 20))
        y = ["a"] * 100 + [tm.OOS] * 20
        self.assertEqual(tm.tune_threshold(proba, CLASSES, y), 0.5)


    def test_when_no_threshold_holds_the_recall_the_best_compromise_is_taken(self):
        # Every out-of-scope row is taken for "a" at 0.96, above the whole
        # grid: recall is 0 anywhere, so the threshold is the one that
        # answers the in-scope rows (0.5 each) rather than one that answers
        # nothing.
        proba = rows(*([[0.96, 0.02, 0.02]] * 20 + [[0.5, 0.25, 0.25]] * 5))
        y = [tm.OOS] * 20 + ["a"] * 5
        t = tm.tune_threshold(proba, CLASSES, y)
        self.assertLessEqual(t, 0.5)
        self.assertEqual(tm.oos_recall_at(proba, CLASSES, y, t), 0.0)


class FirstStageTest(unittest.TestCase):
    # Ten "a" rows and ten "b" rows; the full model gets all of them right.
    Y = ["a"] * 10 + ["b"] * 10
    FULL = rows(*([[0.9, 0.05, 0.05]] * 10 + [[0.05, 0.9, 0.05]] * 10))
    GROUPS = {"all": np.ones(20, bool)}

    def test_it_takes_only_sure_in_scope_rows(self):
        fast = rows([0.9, 0.05, 0.05], [0.7, 0.2, 0.1], [0.02, 0.03, 0.95])
        self.assertEqual(list(tm.first_stage_takes(fast, CLASSES, 0.85)), [True, False, False])
        got = tm.cascade(fast, rows(*([[0.1, 0.8, 0.1]] * 3)), CLASSES, 0.85)
        self.assertEqual(got.argmax(axis=1).tolist(), [0, 1, 1])

    def test_the_bar_falls_only_while_no_figure_drops_more_than_the_slack(self):
        # The fast model is right on every row but sure of them at different
        # levels; where it is wrong it is only 0.72 sure: the bar may fall to
        # 0.75 and no further (at 0.7 one row of twenty, 5 %, goes wrong).
        fast = self.FULL.copy()
        fast[:9] = [0.8, 0.1, 0.1]
        fast[9] = [0.14, 0.72, 0.14]
        self.assertEqual(tm.tune_first_stage(fast, self.FULL, CLASSES, self.Y, 0.3, self.GROUPS), 0.75)

    def test_no_first_stage_when_even_the_highest_bar_loses_ground(self):
        fast = rows(*([[0.02, 0.97, 0.01]] * 20))   # sure of "b" everywhere
        self.assertIsNone(tm.tune_first_stage(fast, self.FULL, CLASSES, self.Y, 0.3, self.GROUPS))

    def test_the_bar_never_falls_below_the_threshold(self):
        fast = self.FULL.copy()   # as right as the full model: any bar keeps the figures
        self.assertEqual(tm.tune_first_stage(fast, self.FULL, CLASSES, self.Y, 0.42, self.GROUPS), 0.45)


if __name__ == "__main__":
    unittest.main(verbosity=2)
