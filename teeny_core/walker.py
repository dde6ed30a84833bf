"""The one layer walker every weight quantizer runs on: stream a safetensors model one decoder layer at a time.

:func:`walk` builds the model's skeleton on the ``meta`` device (no weights), loads only the embedding, runs
the calibration ids up to the first layer, and then, per layer: reads the layer's tensors from the
memory-mapped shards (source dtype, cast to the compute dtype), hands it to a solver, runs the activations
through the solved layer for the next one, writes the layer's output tensors, and frees it. Activations stay
in RAM up to a budget and spill to disk beyond it. Peak memory is one layer, the solver's working set, the
activations and the embedding, whatever the number of layers. torch and transformers are imported lazily.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from teeny_core.arch import ArchSpec, spec_for
from teeny_core.errors import TeenyError
from teeny_core.experts import fuse_experts, split_experts

SHARD_BYTES = 2**30
"""Largest output shard (unless one tensor is larger)."""
LAYER_FLUSH_BYTES = 16 * 2**20
"""At the end of a layer, a pending shard this large is written out, so the writer holds about one layer's
output rather than an amount that grows with depth (tiny models still get a single file)."""


class _Stop(Exception):
    """Raised from the last layer's recorder: nothing past the layers is needed while capturing."""


# --- reading ---------------------------------------------------------------------------------------

class ShardReader:
    """Memory-mapped access to the tensors of a safetensors model (one file or an indexed set of shards)."""

    def __init__(self, path: str | Path):
        from safetensors import safe_open

        path = Path(path)
        index = path / "model.safetensors.index.json"
        if index.exists():
            files = json.loads(index.read_text())["weight_map"]
            self.files = {key: path / name for key, name in files.items()}
        elif (path / "model.safetensors").exists():
            single = path / "model.safetensors"
            with safe_open(str(single), "pt") as f:
                self.files = {key: single for key in f.keys()}
        else:
            raise TeenyError(f"{path} has no model.safetensors (or model.safetensors.index.json); the layer walker "
                             "reads safetensors models only")
        self._open: dict[Path, Any] = {}

    def keys(self, prefix: str = "") -> list[str]:
        return [k for k in self.files if k.startswith(prefix)]

    def get(self, key: str):
        from safetensors import safe_open

        file = self.files[key]
        if file not in self._open:
            self._open[file] = safe_open(str(file), "pt")
        return self._open[file].get_tensor(key)

    def release(self) -> None:
        """Unmap the shards: pages read through the memory map count toward this process's RSS until then."""
        self._open.clear()

    def shape(self, key: str) -> list[int]:
        from safetensors import safe_open

        file = self.files[key]
        if file not in self._open:
            self._open[file] = safe_open(str(file), "pt")
        return self._open[file].get_slice(key).get_shape()

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in set(self.files.values()))


def safetensors_dir(source) -> Path:
    """The local directory of a safetensors model source (hub ids are fetched into the hub's cache; a GGUF file
    is dequantized once to a float copy in Teeny's cache, as ``teeny run`` does for its baseline: in the
    source's ``dtype`` when that is a float dtype, else bfloat16)."""
    if source.gguf_file:
        from teeny_core.modeling import BASELINE_DTYPES, cache_dir, dequantize_gguf
        from teeny_core.store import build_once

        dtype = source.dtype if source.dtype in BASELINE_DTYPES else "bfloat16"
        return build_once(cache_dir() / "gguf-float" / f"{source.identity()}-{dtype}", "config.json",
                          lambda tmp: dequantize_gguf(source, tmp, dtype))
    path = Path(source.path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source.path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))


def stored_dtype(path: str | Path) -> str:
    """The float dtype the model at ``path`` stores (its config.json's ``dtype``, float32 where it names none):
    the dtype artifacts keep their unquantized tensors in."""
    config = json.loads((Path(path) / "config.json").read_text())
    found = config.get("dtype") or config.get("torch_dtype")
    return found if found in ("float32", "float16", "bfloat16") else "float32"


def layer_matrices(path: str | Path) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """From the shard headers of the model at ``path``: qualified name -> (out, in) of every linear its
    architecture spec lists inside the decoder layers (routed experts one per expert and projection, as on
    disk), and qualified name -> why it stays in full precision of every other 2-D weight there (a router, a
    shared expert's 1-output gate). An unsupported architecture raises the spec's one-line error."""
    config = json.loads((Path(path) / "config.json").read_text())
    spec = spec_for(config.get("model_type"))
    reader = ShardReader(path)
    names = list(spec.linears())  # in execution order
    if spec.experts:
        names += [f"{spec.experts.module}.{e}.{p}" for e in range(config["num_experts"])
                  for p in spec.experts.disk_linears]
    linears: dict[str, tuple[int, int]] = {}
    kept: dict[str, str] = {}
    for index in range(config["num_hidden_layers"]):
        prefix = f"{spec.layer_prefix(index)}."
        for name in names:
            if f"{prefix}{name}.weight" in reader.files:
                linears[f"{prefix}{name}"] = tuple(reader.shape(f"{prefix}{name}.weight"))
        for key in reader.keys(prefix):
            module, _, leaf = key.rpartition(".")
            shape = reader.shape(key)
            if leaf != "weight" or len(shape) != 2 or module in linears:
                continue
            inner = module[len(prefix):]
            if spec.experts and inner == spec.experts.router:
                kept[module] = "the router: its logits choose the experts, so it stays in full precision"
            elif shape[0] == 1:
                kept[module] = "1 output feature (a gate): too narrow to group or pack, so it stays in full precision"
            else:
                kept[module] = f"not a linear of the {spec.model_types[0]} spec, so it stays in full precision"
    reader.release()
    return linears, kept


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "spiece.model", "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja",
                   "chat_template.json")


def copy_side_files(source_dir: Path, out_dir: Path) -> None:
    """Carry the source's tokenizer files and generation_config.json into an artifact, as they are.

    Copied rather than loaded and saved again: the artifact then tokenizes exactly like its source, and a
    262k-entry vocabulary (Gemma 3) does not cost seconds to parse. Raises when the source has no tokenizer."""
    import shutil

    found = [name for name in TOKENIZER_FILES if (Path(source_dir) / name).is_file()]
    if not any(name in found for name in ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json",
                                          "vocab.txt")):
        raise TeenyError(f"{source_dir}: no tokenizer files (expected tokenizer.json or tokenizer.model beside "
                         "config.json)")
    for name in [*found, "generation_config.json"]:
        if (Path(source_dir) / name).is_file():
            shutil.copyfile(Path(source_dir) / name, Path(out_dir) / name)


# --- writing ---------------------------------------------------------------------------------------

class ShardWriter:
    """Write tensors as they come into ``model.safetensors`` or numbered shards with an index, holding at most
    one shard's worth in memory."""

    def __init__(self, out_dir: str | Path, shard_bytes: int = SHARD_BYTES):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_bytes = shard_bytes
        self._pending: dict[str, Any] = {}
        self._size = 0
        self._parts: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, key: str, tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self._pending and self._size + nbytes > self.shard_bytes:
            self._flush()
        self._pending[key] = tensor.detach().cpu().contiguous()
        self._size += nbytes
        self.total += nbytes

    def end_of_layer(self) -> None:
        if self._size >= LAYER_FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        from safetensors.torch import save_file

        part = self.out_dir / f".part-{len(self._parts):05d}.safetensors"
        save_file(self._pending, str(part), metadata={"format": "pt"})
        self._parts.append((part, list(self._pending)))
        self._pending, self._size = {}, 0

    def close(self) -> list[str]:
        """Finish the last shard, name the shards and write the index; returns the file names."""
        if self._pending or not self._parts:
            self._flush()
        if len(self._parts) == 1:
            self._parts[0][0].rename(self.out_dir / "model.safetensors")
            return ["model.safetensors"]
        names = [f"model-{i + 1:05d}-of-{len(self._parts):05d}.safetensors" for i in range(len(self._parts))]
        weight_map = {}
        for name, (part, keys) in zip(names, self._parts):
            part.rename(self.out_dir / name)
            weight_map.update({k: name for k in keys})
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
        return names


# --- activations -----------------------------------------------------------------------------------

class Activations:
    """One hidden-state tensor per calibration batch: in RAM while they fit ``budget`` bytes, on disk beyond."""

    def __init__(self, budget: int):
        self.budget = budget
        self._items: list[Any] = []
        self._in_ram = 0
        self._dir: tempfile.TemporaryDirectory | None = None

    def __len__(self) -> int:
        return len(self._items)

    def _store(self, i: int, tensor):
        import torch

        tensor = tensor.detach().cpu()
        nbytes = tensor.numel() * tensor.element_size()
        if self._in_ram + nbytes <= self.budget:
            self._in_ram += nbytes
            return tensor
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="teeny-acts-")
        path = Path(self._dir.name) / f"{i}.pt"
        torch.save(tensor, path)
        return path

    def _release(self, item) -> None:
        if isinstance(item, Path):
            return
        self._in_ram -= item.numel() * item.element_size()

    def append(self, tensor) -> None:
        self._items.append(self._store(len(self._items), tensor))

    def __getitem__(self, i: int):
        import torch

        item = self._items[i]
        return torch.load(item) if isinstance(item, Path) else item

    def __setitem__(self, i: int, tensor) -> None:
        old = self._items[i]
        self._items[i] = None
        self._release(old)
        self._items[i] = self._store(i, tensor)

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(len(self)))

    @property
    def spilled(self) -> int:
        return sum(isinstance(item, Path) for item in self._items)

    def close(self) -> None:
        self._items = []
        if self._dir is not None:
            self._dir.cleanup()


# --- the skeleton ----------------------------------------------------------------------------------

def _module(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _set_buffer(root, name: str, value) -> None:
    module, _, leaf = name.rpartition(".")
    owner = _module(root, module) if module else root
    persistent = leaf not in owner._non_persistent_buffers_set
    owner.register_buffer(leaf, value, persistent=persistent)


def build_skeleton(config, spec: ArchSpec, reader: ShardReader, dtype, with_embedding: bool = True):
    """The causal LM with every weight on ``meta`` except the embedding (loaded when ``with_embedding``) and the
    buffers outside the layers (rotary frequencies, embedding scales), taken from a one-layer twin on the CPU."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    embed = _module(model, spec.embed)
    embed.to_empty(device="cpu")
    if with_embedding:
        with torch.no_grad():
            embed.weight.copy_(reader.get(f"{spec.embed}.weight"))
        reader.release()
    twin_config = copy.deepcopy(config)
    twin_config.num_hidden_layers = 1
    if getattr(twin_config, "layer_types", None):  # one layer of each type, so every rotary variant is built
        twin_config.layer_types = list(dict.fromkeys(twin_config.layer_types))
        twin_config.num_hidden_layers = len(twin_config.layer_types)
    twin_config.vocab_size = 8
    twin_config.intermediate_size = 8
    twin_config.pad_token_id = None
    twin = AutoModelForCausalLM.from_config(twin_config, dtype=dtype)
    for name, buffer in twin.named_buffers():
        if not name.startswith(f"{spec.layers}."):
            _set_buffer(model, name, buffer)
    del twin
    for name, buffer in model.named_buffers():
        if buffer.is_meta:
            raise TeenyError(f"the walker cannot build buffer {name} of {type(model).__name__} outside the layers")
    model.eval()
    return model


def check_layer_class(layer, spec: ArchSpec) -> None:
    if type(layer).__name__ != spec.layer_class:
        raise TeenyError(f"expected {spec.layer_class} layers for {spec.model_types[0]}, found {type(layer).__name__}")


# --- per layer -------------------------------------------------------------------------------------

def load_layer(layer, spec: ArchSpec, index: int, reader: ShardReader, dtype, device: str) -> None:
    """Fill the (meta) layer ``index`` with its tensors from the shards, cast to ``dtype`` on ``device``."""
    import torch

    prefix = f"{spec.layer_prefix(index)}."
    state = {k[len(prefix):]: reader.get(k) for k in reader.keys(prefix)}
    if spec.experts:
        state = fuse_experts(state, spec)
    layer.to_empty(device=device)
    expected = set(layer.state_dict())
    if set(state) != expected:
        raise TeenyError(f"layer {index}: the shards hold {sorted(set(state) - expected)} and lack "
                         f"{sorted(expected - set(state))} compared with {spec.layer_class}")
    with torch.no_grad():
        for name, tensor in layer.state_dict(keep_vars=True).items():
            tensor.copy_(state[name].to(dtype))
    reader.release()


def run_layer(layer, hidden, args_kwargs):
    args, kwargs = args_kwargs
    out = layer(hidden, *args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@dataclasses.dataclass
class LayerWork:
    """What a solver gets for one layer: the loaded layer and its calibration inputs (per batch)."""

    index: int
    prefix: str
    layer: Any
    spec: ArchSpec
    inputs: Activations | None
    args: list | None  # per batch: (positional args after the hidden states, keyword args)
    device: str


@dataclasses.dataclass
class Solved:
    """A solver's outcome for one layer: output tensors (disk names relative to the layer, e.g.
    ``self_attn.q_proj.qweight``) written instead of the ``.weight`` of each module in ``replaced``, and the
    error shown on the progress bar."""

    tensors: dict[str, Any] = dataclasses.field(default_factory=dict)
    replaced: set[str] = dataclasses.field(default_factory=set)
    error: float | None = None


def capture_inputs(model, layers, batches, device: str, budget: int):
    """Run each calibration batch up to the first layer. Returns the first layer's inputs (float32) and, per
    layer, per batch, the extra args and kwargs the model passes that layer (rotary embeddings, masks)."""
    import torch

    acts = Activations(budget)
    per_layer: list[list[tuple[tuple, dict]]] = [[] for _ in layers]

    def recorder(i: int):
        def forward(*args, **kwargs):
            hidden, rest = (args[0], args[1:]) if args else (kwargs.pop("hidden_states"), ())
            per_layer[i].append((rest, kwargs))
            if i == 0:
                acts.append(hidden)
            if i == len(layers) - 1:
                raise _Stop
            return hidden
        return forward

    for i, layer in enumerate(layers):
        layer.forward = recorder(i)
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    model(input_ids=batch.to(device), use_cache=False)
                except _Stop:
                    pass
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)
    if any(len(p) != len(batches) for p in per_layer):
        raise TeenyError("the model did not call every decoder layer during calibration")
    return acts, per_layer


def walk(path: str | Path, solve: Callable[[LayerWork], Solved], writer: ShardWriter, *,
         calibration_ids=None, batch_size: int = 8, device: str = "cpu", compute_dtype: str = "float32",
         store_dtype: str = "float32", activation_budget: int = 2 * 2**30,
         outside: Callable[[str, Any], dict[str, Any] | None] | None = None, progress: bool = True,
         keep: str | Path | None = None) -> dict:
    """Stream the model at ``path`` through ``solve`` one layer at a time, writing every output tensor.

    ``outside(key, tensor)`` may replace a tensor outside the layers (e.g. round ``lm_head``); returning None
    keeps it. Floating tensors are written in ``store_dtype``. ``keep``: a directory (see :class:`KeptLayers`)
    where each finished layer is also kept, so a walk killed midway and started again with the same directory
    resumes at the next layer; the caller keys it by everything that determines the result and removes it once
    the artifact is complete. Returns facts for the artifact's metadata.
    """
    import torch
    from transformers import AutoConfig

    from teeny_core.modeling import return_freed_memory, temporaries_on_the_heap, torch_dtype

    return_freed_memory()  # each layer's buffers go back to the system, so the peak does not creep up with depth
    config = AutoConfig.from_pretrained(path)
    spec = spec_for(getattr(config, "model_type", None))
    reader = ShardReader(path)
    dtype, store = torch_dtype(compute_dtype), torch_dtype(store_dtype)
    model = build_skeleton(config, spec, reader, dtype, with_embedding=calibration_ids is not None)
    layers = list(_module(model, spec.layers))
    check_layer_class(layers[0], spec)
    acts, per_layer = None, None
    if calibration_ids is not None:
        _module(model, spec.embed).to(device)
        batches = list(torch.split(calibration_ids, batch_size))
        acts, per_layer = capture_inputs(model, layers, batches, device, activation_budget)
    _module(model, spec.embed).to_empty(device="meta")
    kept = KeptLayers(keep, len(layers)) if keep is not None else None
    resume_at = kept.finished if kept else 0
    if kept and acts is not None and 0 < resume_at < len(layers):
        for i, tensor in enumerate(kept.inputs(resume_at)):
            acts[i] = tensor

    def cast(t):
        return t.to(store) if t.is_floating_point() else t

    bar = _bar(len(layers), progress)
    errors, seconds = [], []
    params = 0
    for index, layer in enumerate(layers):
        if index < resume_at:  # finished by an earlier, interrupted walk
            assert kept is not None
            tensors, info = kept.layer(index)
            for key, value in tensors.items():
                writer.add(key, value)
            writer.end_of_layer()
            if per_layer:
                per_layer[index] = []
            params += info["params"]
            errors.append(info["error"])
            seconds.append(info["seconds"])
            bar.update(1)
            continue
        started = time.perf_counter()
        load_layer(layer, spec, index, reader, dtype, device)
        prefix = spec.layer_prefix(index)
        work = LayerWork(index, prefix, layer, spec, acts, per_layer[index] if per_layer else None, device)
        solved = solve(work)
        if acts is not None and index + 1 < len(layers):
            with torch.no_grad(), temporaries_on_the_heap():
                for i in range(len(acts)):
                    acts[i] = run_layer(layer, acts[i].to(device), per_layer[index][i])
        state = {k: v.detach() for k, v in layer.state_dict().items()}
        if spec.experts:
            state = split_experts(state, spec)
        layer_params = sum(v.numel() for v in state.values())
        params += layer_params
        written = {}
        for key, value in state.items():
            module, _, leaf = key.rpartition(".")
            if leaf != "weight" or module not in solved.replaced:
                written[f"{prefix}.{key}"] = cast(value)
        written.update({f"{prefix}.{key}": value for key, value in solved.tensors.items()})
        for key, value in written.items():
            writer.add(key, value)
        writer.end_of_layer()
        layer.to_empty(device="meta")
        if per_layer:
            per_layer[index] = []
        errors.append(solved.error)
        seconds.append(time.perf_counter() - started)
        if kept:
            kept.finish(index, written, acts if acts is not None and index + 1 < len(layers) else None,
                        {"params": layer_params, "error": solved.error, "seconds": seconds[-1]})
        del written
        bar.update(1)
        if solved.error is not None:
            bar.set_postfix_str(f"layer {index} err {solved.error:.4g}")
    bar.close()
    spilled = acts.spilled if acts is not None else 0
    if acts is not None:
        acts.close()
    for key in reader.keys():
        if key.startswith(f"{spec.layers}."):
            continue
        tensor = reader.get(key)
        reader.release()
        params += tensor.numel()
        replaced = outside(key, tensor) if outside else None
        for name, value in (replaced or {key: cast(tensor)}).items():
            writer.add(name, value)
        del tensor, replaced
    return {"config": config, "spec": spec, "layer_errors": errors, "layer_seconds": seconds, "params": params,
            "spilled_batches": spilled}


class KeptLayers:
    """A walk's finished layers on disk, so that a walk killed midway resumes at the next layer.

    Per finished layer ``i``: ``layer-i.safetensors`` (its output tensors as written), ``inputs-(i+1).safetensors``
    (the calibration activations entering the next layer) and, last, ``layer-i.json`` (its facts), whose presence
    marks the layer finished. Inputs of earlier layers are deleted as the walk advances."""

    def __init__(self, directory: str | Path, n_layers: int):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        finished = 0
        while finished < n_layers and (self.dir / f"layer-{finished}.json").exists():
            finished += 1
        self.finished = finished

    def inputs(self, index: int) -> list[Any]:
        """The calibration activations entering layer ``index``, one tensor per batch."""
        from safetensors.torch import load_file

        stored = load_file(str(self.dir / f"inputs-{index}.safetensors"))
        return [stored[f"batch-{i}"] for i in range(len(stored))]

    def layer(self, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Layer ``index``'s output tensors and its facts (params, error, seconds)."""
        from safetensors.torch import load_file

        info = json.loads((self.dir / f"layer-{index}.json").read_text())
        return load_file(str(self.dir / f"layer-{index}.safetensors")), info

    def finish(self, index: int, tensors: dict[str, Any], next_inputs: Activations | None,
               info: dict[str, Any]) -> None:
        """Keep layer ``index`` (its tensors, the next layer's inputs unless it is the last, its facts)."""
        from safetensors.torch import save_file

        def atomically(name: str, write: Callable[[Path], None]) -> None:
            tmp = self.dir / f".{name}.tmp"
            write(tmp)
            os.replace(tmp, self.dir / name)

        atomically(f"layer-{index}.safetensors", lambda p: save_file(
            {k: v.contiguous() for k, v in tensors.items()}, str(p)))
        if next_inputs is not None:
            atomically(f"inputs-{index + 1}.safetensors", lambda p: save_file(
                {f"batch-{i}": t.contiguous() for i, t in enumerate(next_inputs)}, str(p)))
        atomically(f"layer-{index}.json", lambda p: p.write_text(json.dumps(info)))
        (self.dir / f"inputs-{index}.safetensors").unlink(missing_ok=True)


def _bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    off = not enabled or bool(os.environ.get("TEENY_NO_BAR"))
    return tqdm(total=total, desc="layers", unit="layer", disable=True if off else None)  # None: off unless a TTY


def parameter_count(source) -> int:
    """Parameters of a safetensors source, counted from its shard headers."""
    reader = ShardReader(safetensors_dir(source))
    return sum(math.prod(reader.shape(k)) for k in reader.keys())
