"""benchmarks/size_interaction.py on a study directory laid out the way `teeny run` writes one: it pairs the
smallest and the largest model by parameter count (not by name), and its sign test and Wilcoxon p-values are
the exact ones computed here by hand."""

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "size_interaction.py"


def write_model(run: Path, name: str, passed: dict[str, list[int]], kl: list[float]) -> dict:
    for variant, outcomes in passed.items():
        d = run / "models" / name / variant
        d.mkdir(parents=True)
        rows = [{"evaluator": "humaneval", "key": f"HumanEval/{i}", "passed": bool(p)} for i, p in enumerate(outcomes)]
        if variant != "original":
            rows += [{"evaluator": "fidelity", "key": f"chunk-{i}", "kl": k} for i, k in enumerate(kl)]
        (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"name": name, "run": f"models/{name}"}


def test_pairs_the_smallest_with_the_largest_and_gives_exact_p_values(tmp_path):
    n = 10
    # "m-big" sorts before "m-small" by name: the script must order by parameters
    small = write_model(tmp_path, "m-small", {"original": [1] * n, "w4": [0] * 6 + [1] * 4}, [0.2] * 5)
    big = write_model(tmp_path, "m-big", {"original": [1] * n, "w4": [1] * 9 + [0]}, [0.1] * 5)
    (tmp_path / "study.json").write_text(json.dumps({"models": [{**big, "parameters": 3_000},
                                                                {**small, "parameters": 1_000}]}))
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "w4"], capture_output=True, text=True,
                         check=True).stdout
    assert "m-small -60.0 pp, m-big -10.0 pp" in out
    # problems 0-5 differ (the small model lost them, the big one kept them) and problem 9 the other way
    sign_p = 2 * sum(math.comb(7, k) for k in range(0, 2)) / 2 ** 7  # two-sided binomial, 1 of 7 vs 6 of 7
    assert f"differ: 7; m-small lost more on 6, m-big on 1; sign test p {sign_p:.3g}" in out
    # 5 windows, all higher on the small model: the exact signed-rank p is 2 / 2^5
    assert f"m-small higher on 5 of 5; Wilcoxon signed-rank (exact) p {2 / 2 ** 5:.3g}" in out
