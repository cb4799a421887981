"""The paper's published numbers, to print next to ours in `python -m ardrop.report`.

Source: Song & Jiang, "Approximate Random Dropout", arXiv 1805.08939 (the text is in
`shared/paper/approximate-random-dropout.txt`; SPEC.md section 2 restates the speedups).
Caffe on a GPU; MNIST MLPs trained 60K iterations, LSTMs 110K iterations on an unnamed
8.8K-word corpus. Kept as data, not code, so the report never computes or edits them.
"""
from __future__ import annotations

# Table 1 ("Result of Row approximate dropout and Tile approximate dropout compared with
# traditional dropout, iteration = 60K"). Key: (hidden sizes, rate, kind); value:
# (traditional-dropout test accuracy %, approximate-dropout test accuracy %, speedup).
# Each row of the paper has its own traditional-dropout run, so the baseline differs per kind.
TABLE1: dict[tuple[str, float, str], tuple[float, float, float]] = {
    ("1024x64", 0.5, "row"): (98.39, 97.87, 1.18),
    ("1024x64", 0.5, "tile"): (98.32, 97.78, 1.12),
    ("1024x1024", 0.5, "row"): (98.50, 98.01, 1.19),
    ("1024x1024", 0.5, "tile"): (98.26, 98.02, 1.19),
    ("2048x2048", 0.5, "row"): (98.44, 97.58, 1.45),
    ("2048x2048", 0.5, "tile"): (98.29, 98.08, 1.54),
    ("4096x4096", 0.5, "row"): (98.37, 98.00, 1.48),
    ("4096x4096", 0.5, "tile"): (98.26, 98.07, 1.62),
    ("1024x64", 0.7, "row"): (98.19, 97.80, 1.27),
    ("1024x64", 0.7, "tile"): (98.30, 97.51, 1.19),
    ("1024x1024", 0.7, "row"): (98.33, 98.03, 1.45),
    ("1024x1024", 0.7, "tile"): (98.26, 97.76, 1.22),
    ("2048x2048", 0.7, "row"): (98.42, 97.82, 1.77),
    ("2048x2048", 0.7, "tile"): (98.23, 97.81, 1.60),
    ("4096x4096", 0.7, "row"): (98.48, 98.02, 1.95),
    ("4096x4096", 0.7, "tile"): (98.29, 97.58, 2.16),
}

# Fig. 5 (2048x2048, rates 0.3..0.7) is a plot; the text gives only its range: "the speedup
# rate is increasing from 1.2 to 1.77" and both approximate accuracies "around 98%".
FIG5_SPEEDUP_RANGE = {0.3: 1.2, 0.7: 1.77}

# Table 2 ("Result of Row approximate dropout and Tile approximate dropout applying to
# LSTM", 1000 units per layer, iter 110K). Key: (LSTM layers, rate). "metric" is the
# paper's language-model score (its formula, after Zhu et al. 2018, was lost from the text;
# lower is better, an untrained model scores 104.9 / 104.8); it is not our perplexity.
# "acc" is word accuracy %; "speedup" is training-time speedup over traditional dropout.
TABLE2: dict[tuple[int, float], dict[str, dict[str, float]]] = {
    (2, 0.3): {"metric": {"bernoulli": 30.7, "row": 35.7, "tile": 35.6},
               "acc": {"bernoulli": 47.6, "row": 46.8, "tile": 46.9}, "speedup": {"row": 1.16, "tile": 1.15}},
    (2, 0.5): {"metric": {"bernoulli": 30.7, "row": 35.6, "tile": 35.7},
               "acc": {"bernoulli": 47.7, "row": 46.6, "tile": 46.3}, "speedup": {"row": 1.23, "tile": 1.22}},
    (2, 0.7): {"metric": {"bernoulli": 30.6, "row": 35.6, "tile": 35.6},
               "acc": {"bernoulli": 46.2, "row": 44.7, "tile": 44.9}, "speedup": {"row": 1.31, "tile": 1.30}},
    (3, 0.3): {"metric": {"bernoulli": 30.8, "row": 32.8, "tile": 32.9},
               "acc": {"bernoulli": 47.9, "row": 46.9, "tile": 47.2}, "speedup": {"row": 1.18, "tile": 1.18}},
    (3, 0.5): {"metric": {"bernoulli": 30.8, "row": 32.6, "tile": 32.6},
               "acc": {"bernoulli": 47.3, "row": 46.0, "tile": 46.5}, "speedup": {"row": 1.43, "tile": 1.47}},
    (3, 0.7): {"metric": {"bernoulli": 31.1, "row": 32.3, "tile": 32.2},
               "acc": {"bernoulli": 45.9, "row": 44.5, "tile": 44.4}, "speedup": {"row": 1.49, "tile": 1.53}},
}
TABLE2_UNTRAINED_METRIC = {2: 104.9, 3: 104.8}
TABLE2_HIDDEN = 1000

# Fig. 6 (3-layer LSTM, training log of approximate vs traditional dropout): the text gives
# the convergence speedup, "approximately 1.42X in row ... and 1.47X in tile".
FIG6_SPEEDUP = {"row": 1.42, "tile": 1.47}
