"""Built-in ``fidelity`` evaluator: perplexity on held-out text, and KL divergence and top-1 agreement
against the baseline's next-token distributions (the measures llama.cpp's ``--kl-divergence`` reports).

KL is computed over the reference's top ``kl_top_k`` tokens plus one bucket for the rest of the
vocabulary: the KL of the coarsened distributions, a lower bound of the full KL that equals it when
``kl_top_k`` covers the vocabulary. The reference's top-k is cached once per experiment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Any

from teeny_core import hookimpl, windows
from teeny_core.errors import TeenyError
from teeny_core.options import Options, option
from teeny_core.store import writing
from teeny_core.types import EvalContext, Evaluator, LoadedModel, Metric


@dataclasses.dataclass
class FidelityOptions(Options):
    path: str = option("", "held-out text file (default: the Python docs topics shipped with Python)")
    chunks: int = option(16, "number of text windows scored", min=1)
    chunk_len: int = option(256, "tokens per window", min=2)
    kl_top_k: int = option(256, "reference tokens kept per position for KL (the rest is one bucket)", min=1)


def default_text() -> str:
    """Held-out English + code: pydoc's topic help (never used by the ``code`` calibrator)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def token_chunks(tokenizer: Any, options: FidelityOptions) -> list[list[int]]:
    """Contiguous non-overlapping windows from the start of the text, each starting like a document."""
    if options.path:
        p = Path(options.path).expanduser()
        if not p.is_file():
            raise TeenyError(f"fidelity: text file {options.path!r} does not exist")
        text = p.read_text(errors="replace")
    else:
        text = default_text()
    ids = windows.text_ids(tokenizer, text)
    chunks = windows.contiguous_windows(windows.document_prefix(tokenizer), ids, options.chunk_len, options.chunks)
    if not chunks:
        raise TeenyError(f"fidelity: the text has {len(ids)} tokens, fewer than chunk_len={options.chunk_len}")
    return chunks


def tail_mass(logprobs, idx):
    """Probability outside the indices ``idx`` per position, summed directly (no 1 - sum cancellation)."""
    return logprobs.double().exp().scatter(-1, idx, 0.0).sum(-1)


def reference_stats(logprobs, ids: list[int], top_k: int) -> dict[str, Any]:
    """What a variant is compared with: top-k indices and log-probs, the rest's mass, argmax, and the NLL."""
    import torch

    k = min(top_k, logprobs.shape[-1])
    top = torch.topk(logprobs, k, dim=-1)
    targets = torch.tensor(ids[1:])
    nll = -logprobs[:-1].gather(-1, targets[:, None]).squeeze(-1)
    return {"idx": top.indices, "lp": top.values, "tail": tail_mass(logprobs, top.indices),
            "argmax": logprobs.argmax(-1), "nll": nll}


def compare(ref: dict[str, Any], logprobs, ids: list[int]) -> dict[str, float]:
    """Per-window NLL, mean/max KL(ref || variant) and top-1 agreement, in float64."""
    import torch

    lp = logprobs.double()
    p_lp = ref["lp"].double()
    q_lp = lp.gather(-1, ref["idx"])
    kl = (p_lp.exp() * (p_lp - q_lp)).sum(-1)
    p_tail, q_tail = ref["tail"], tail_mass(lp, ref["idx"])
    tail = p_tail * (p_tail.clamp_min(1e-300).log() - q_tail.clamp_min(1e-300).log())
    kl = kl + torch.where(p_tail > 0, tail, torch.zeros_like(kl))
    targets = torch.tensor(ids[1:])
    nll = -lp[:-1].gather(-1, targets[:, None]).squeeze(-1)
    return {"nll": float(nll.mean()), "ref_nll": float(ref["nll"].double().mean()), "kl": float(kl.mean()),
            "kl_max": float(kl.max()), "top1": float((lp.argmax(-1) == ref["argmax"]).double().mean()),
            "tokens": len(ids) - 1}


class FidelityEvaluator(Evaluator[FidelityOptions]):
    """Perplexity, KL divergence and top-1 agreement against the baseline, per text window."""

    name = "fidelity"
    Options = FidelityOptions
    metrics = {"perplexity": Metric("perplexity", higher_is_better=False, item_field="nll"),
               "kl_mean": Metric("KL divergence", higher_is_better=False, item_field="kl"),
               "top1_mean": Metric("top-1 agreement", higher_is_better=True, item_field="top1"),
               "ppl_ratio": Metric("perplexity ratio", higher_is_better=False),
               "kl_max": Metric("max KL", higher_is_better=False)}
    headline = "perplexity"
    records_version = windows.RULE

    def evaluate(self, model: LoadedModel, options: FidelityOptions, ctx: EvalContext) -> None:
        import torch

        chunks = token_chunks(model.tokenizer, options)
        window_info = windows.record(windows.document_prefix(model.tokenizer))
        if ctx.limit:
            chunks = chunks[:ctx.limit]
        done = ctx.done()
        todo = [i for i in range(len(chunks)) if f"chunk-{i}" not in done]
        if not todo:
            return
        key = hashlib.sha256(f"{ctx.reference_id()}|{options.to_dict()}|{chunks[0][:32]}".encode()).hexdigest()[:16]
        cache = Path(ctx.cache_dir) / "fidelity-reference" / key
        cache.mkdir(parents=True, exist_ok=True)
        with ctx.progress(len(todo), "fidelity") as bar:
            for i in todo:
                ids = chunks[i]
                lp = model.logprobs([ids])[0]
                ref_file = cache / f"chunk-{i}.pt"
                if ref_file.exists():
                    ref = torch.load(ref_file)
                else:
                    reference = ctx.reference()
                    ref_lp = lp if reference is None else reference.logprobs([ids])[0]
                    ref = reference_stats(ref_lp, ids, options.kl_top_k)
                    tmp = ref_file.with_suffix(".tmp")
                    try:
                        with writing(ref_file):
                            torch.save(ref, tmp)
                    except BaseException:
                        tmp.unlink(missing_ok=True)
                        raise
                    tmp.replace(ref_file)
                ctx.write({"key": f"chunk-{i}", "chunk": i, "windows": window_info, **compare(ref, lp, ids)})
                bar.advance(1)

    def summarize(self, records: list[dict[str, Any]], options: FidelityOptions) -> dict[str, Any]:
        if not records:
            return {}
        n = len(records)
        tokens = sum(r["tokens"] for r in records)
        mean_nll = sum(r["nll"] * r["tokens"] for r in records) / tokens
        mean_ref = sum(r["ref_nll"] * r["tokens"] for r in records) / tokens
        out: dict[str, Any] = {"perplexity": math.exp(mean_nll), "reference_perplexity": math.exp(mean_ref),
                               "ppl_ratio": math.exp(mean_nll - mean_ref), "tokens": tokens, "chunks": n}
        for field in ("kl", "top1", "nll"):
            values = [r[field] for r in records]
            mean = sum(values) / n
            out[f"{field}_mean" if field != "nll" else "nll_mean"] = mean
            out[f"{field}_se"] = _se(values, mean)
        out["perplexity_se"] = out["perplexity"] * out["nll_se"]  # delta method
        out["kl_max"] = max(r["kl_max"] for r in records)
        return out


def _se(values: list[float], mean: float) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


@hookimpl
def teeny_register_evaluators(register):
    register(FidelityEvaluator)
