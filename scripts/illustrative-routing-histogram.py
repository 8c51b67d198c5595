#!/usr/bin/env python3
"""Writes an ILLUSTRATIVE routing histogram for `routing.model: measured` — not a measurement.

We have no measured DeepSeek-V3 routing histogram. This script makes up a plausible one so the
measured-routing path can be exercised on the default scenario: per MoE layer, each routed
expert's share of the layer's routed rows is drawn as exp(sigma * z), z ~ N(0, 1), normalised
(a log-normal popularity). DeepSeek-V3's auxiliary-loss-free balancing keeps its experts
moderately even, so the default sigma (0.12) gives a busiest expert of about 1.3-1.5x the mean
over 256 experts — an assumption, not a figure read from any trace. Use a real histogram
(tokens per expert and MoE layer, counted from a router's top-k indices) wherever you have one.

The output is the CSV `tandem simulate` reads (models/routing_histogram.h): a header
`layer,expert,tokens` and one row per (MoE layer, routed expert); the counts are the rows a
batch of `--tokens` tokens, each routed to `--top-k` experts, would put on each expert. Lines
starting with '#' say what the file is. Seeded (Python's own Mersenne Twister, `random.Random`):
the same arguments always write the same file.

Defaults are DeepSeek-V3's (models/deepseek-v3.yaml): MoE layers 3..60 and the MTP module's
layer 61, 256 routed experts, top-8, one step of the default scenario (15360 x 4096 tokens).

    python3 scripts/illustrative-routing-histogram.py --out scenarios/routing/deepseek-v3-illustrative.csv
"""

import argparse
import math
import random
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="CSV file to write")
    ap.add_argument("--first-layer", type=int, default=3, help="first MoE layer (default 3: V3's first_k_dense_replace)")
    ap.add_argument("--last-layer", type=int, default=61, help="last MoE layer, MTP modules included (default 61)")
    ap.add_argument("--experts", type=int, default=256, help="routed experts per layer (default 256)")
    ap.add_argument("--top-k", type=int, default=8, help="experts per token (default 8)")
    ap.add_argument("--tokens", type=int, default=15360 * 4096, help="tokens in the batch (default one V3 step)")
    ap.add_argument("--sigma", type=float, default=0.12, help="spread of log popularity (default 0.12)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.first_layer < 0 or a.last_layer < a.first_layer or a.experts < 1 or a.top_k < 1 or a.tokens < 1 or a.sigma < 0:
        print("illustrative-routing-histogram: bad arguments", file=sys.stderr)
        return 2

    rng = random.Random(a.seed)
    rows = a.tokens * a.top_k
    lines = [
        "# ILLUSTRATIVE routing histogram, NOT a measurement: log-normal expert popularity, sigma %g, seed %d"
        % (a.sigma, a.seed),
        "# written by scripts/illustrative-routing-histogram.py %s" % " ".join(sys.argv[1:]),
        "layer,expert,tokens",
    ]
    ratios = []
    for layer in range(a.first_layer, a.last_layer + 1):
        weight = [math.exp(a.sigma * rng.gauss(0.0, 1.0)) for _ in range(a.experts)]
        total = sum(weight)
        counts = [round(rows * w / total) for w in weight]
        ratios.append(max(counts) * a.experts / sum(counts))
        lines += ["%d,%d,%d" % (layer, e, c) for e, c in enumerate(counts)]
    with open(a.out, "w", encoding="ascii") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote %s: layers %d..%d, %d experts; busiest expert %.2f-%.2fx the mean (median %.2fx)"
          % (a.out, a.first_layer, a.last_layer, a.experts, min(ratios), max(ratios), sorted(ratios)[len(ratios) // 2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
