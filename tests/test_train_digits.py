"""The digits preset reads scikit-learn's bundled file itself: the same arrays, without importing scikit-learn."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from sklearn.datasets import load_digits as sklearn_load_digits

from train.data import digits_file, load_digits


def test_the_bundled_file_is_found_where_scikit_learn_keeps_it() -> None:
    assert digits_file() is not None, ("scikit-learn moved digits.csv.gz: train.data.load_digits falls back to "
                                       "importing scikit-learn (0.6 s of every rank's start); point digits_file at it")


def test_the_arrays_are_the_ones_scikit_learn_loads() -> None:
    images, labels = load_digits()
    expected = sklearn_load_digits()
    assert images.dtype == expected.images.dtype and labels.dtype == expected.target.dtype
    assert np.array_equal(images, expected.images) and np.array_equal(labels, expected.target)


def test_loading_them_imports_no_scikit_learn() -> None:
    code = "import sys; from train.data import load_digits; load_digits(); print('sklearn' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
