"""Is a variant's damage different between the smallest and the largest model of a size study? Prints, for one
variant, the paired pass@1 change on each, a sign test on the per-problem difference of those changes, and an
exact Wilcoxon signed-rank test on the two models' per-window KL (`teeny run` gives every model of a study the
same problems and windows).

    python benchmarks/size_interaction.py runs/findings-sizes-pass gguf-q4_0
"""

import argparse
import json
from pathlib import Path

from scipy import stats


def samples(run: Path, model: dict, variant: str) -> dict[tuple[str, str], dict]:
    lines = (run / model["run"] / variant / "samples.jsonl").read_text().splitlines()
    return {(r["evaluator"], r["key"]): r for r in map(json.loads, lines)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the study's run directory (holds models/)")
    ap.add_argument("variant")
    args = ap.parse_args()
    models = sorted(json.loads((args.run / "study.json").read_text())["models"], key=lambda m: m["parameters"] or 0)
    smallest, largest = models[0], models[-1]
    small, large = smallest["name"], largest["name"]
    got = {m["name"]: (samples(args.run, m, "original"), samples(args.run, m, args.variant)) for m in (smallest, largest)}
    problems = sorted(k for k in got[small][0] if k[0] == "humaneval")
    change = {m: [int(v[k]["passed"]) - int(o[k]["passed"]) for k in problems] for m, (o, v) in got.items()}
    differ = [a - b for a, b in zip(change[small], change[large]) if a != b]
    print(f"{args.variant}: pass@1 change over {len(problems)} problems: {small} "
          f"{100 * sum(change[small]) / len(problems):+.1f} pp, {large} {100 * sum(change[large]) / len(problems):+.1f} pp")
    if differ:
        worse = sum(d < 0 for d in differ)
        p = stats.binomtest(worse, len(differ)).pvalue
        print(f"  problems where the changes differ: {len(differ)}; {small} lost more on {worse}, {large} on "
              f"{len(differ) - worse}; sign test p {p:.3g}")
    windows = sorted(k for k in got[small][1] if k[0] == "fidelity")
    kl = {m: [got[m][1][k]["kl"] for k in windows] for m in (small, large)}
    higher = sum(a > b for a, b in zip(kl[small], kl[large]))
    p = stats.wilcoxon(kl[small], kl[large], method="exact").pvalue
    print(f"  KL per window: {small} higher on {higher} of {len(windows)}; Wilcoxon signed-rank (exact) p {p:.3g}")


if __name__ == "__main__":
    main()
