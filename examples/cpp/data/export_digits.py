"""Writes digits.csv next to this script: the handwritten digits data set of the UCI Machine
Learning Repository ("Optical Recognition of Handwritten Digits", E. Alpaydin and C. Kaynak,
1998, CC BY 4.0), as scikit-learn bundles it (sklearn.datasets.load_digits: its test part,
1797 images of 8x8 pixels with values 0..16, no download).

One sample per line: the 64 pixel values row by row, then the label 0..9, after one header
line. Run once with scikit-learn installed; the example itself never needs it.
"""

from pathlib import Path

from sklearn.datasets import load_digits

digits = load_digits()
with open(Path(__file__).with_name("digits.csv"), "w") as f:
    f.write(",".join([f"p{i}" for i in range(64)] + ["label"]) + "\n")
    for pixels, label in zip(digits.data.astype(int), digits.target):
        f.write(",".join(str(v) for v in [*pixels, label]) + "\n")
