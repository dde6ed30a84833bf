"""Importance matrices for llama.cpp quantization: computed from a teeny CalibrationSet, read and written
in llama.cpp's two file formats.

An importance matrix holds, for every quantized weight (by GGUF tensor name), the mean of the squared
activations entering each input column: ``E[x_j^2]`` over the calibration tokens. llama.cpp's quantizers
weight each column's rounding error by it.

Formats (llama.cpp ``tools/imatrix``):

- GGUF (current): ``general.type = "imatrix"``, ``imatrix.datasets`` (strings), ``imatrix.chunk_count``,
  ``imatrix.chunk_size`` (u32), and per weight two F32 tensors ``<name>.in_sum2`` (ne ``[n_cols, n_mat]``:
  raw sums of squares) and ``<name>.counts`` (ne ``[1, n_mat]``: tokens seen). Mean = in_sum2 / counts.
- legacy ``.dat``: int32 entry count; per entry int32 name length, name bytes, int32 ``ncall``, int32 value
  count, float32 values = mean * ncall; then int32 chunk count, int32 length + bytes of the dataset name.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from pathlib import Path
from typing import Any

from teeny_core import TeenyError

GGUF_MAGIC = b"GGUF"


@dataclasses.dataclass
class ImportanceMatrix:
    """Per-tensor sums of squared input activations and the token counts behind them."""

    sums: dict[str, Any]  # GGUF tensor name -> float64 array [n_mat * n_cols]
    counts: dict[str, Any]  # GGUF tensor name -> float64 array [n_mat]
    chunk_count: int = 0
    chunk_size: int = 0
    datasets: list[str] = dataclasses.field(default_factory=list)

    def means(self) -> dict[str, Any]:
        """Name -> float32 mean of squared activations per column (what llama.cpp's quantizers take)."""
        import numpy as np

        out = {}
        for name, sums in self.sums.items():
            counts = self.counts[name]
            per_mat = sums.reshape(len(counts), -1)
            safe = np.where(counts > 0, counts, 1.0)[:, None]
            mean = np.where(counts[:, None] > 0, per_mat / safe, 1.0)  # no data: neutral weight, as llama.cpp
            out[name] = np.ascontiguousarray(mean.reshape(-1), dtype=np.float32)
        return out

    def __len__(self) -> int:
        return len(self.sums)


# --- computing from calibration data --------------------------------------------------------------

def compute_imatrix(path: str | Path, calibration, *, batch_size: int = 8, device: str = "cpu",
                    dataset: str | None = None, progress: bool = True) -> ImportanceMatrix:
    """Stream the safetensors model at ``path`` through the core's layer walker (one decoder layer in memory,
    float32) and accumulate, in float64, the squared inputs of every linear that has a GGUF name in the
    architecture spec. Routed experts of a mixture-of-experts layer get one row per expert (``n_mat`` =
    experts), each over the tokens its router sends it, as llama-imatrix records them.

    The windows are used as they are: the calibrators already start each one like a document (BOS where the
    tokenizer adds one, see :mod:`teeny_core.windows`), the same windows GPTQ and AWQ see."""
    import numpy as np

    from teeny_core.walker import walk

    ids = calibration.tensor()
    sums: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    walk(path, imatrix_solver(sums, counts), _Discard(), calibration_ids=ids, batch_size=batch_size, device=device,
         compute_dtype="float32", progress=progress)
    return ImportanceMatrix(
        sums={k: v.reshape(-1).numpy() for k, v in sums.items()},
        counts={k: np.asarray(v, dtype=np.float64) for k, v in counts.items()},
        chunk_count=int(ids.shape[0]), chunk_size=int(ids.shape[1]),
        datasets=[dataset or calibration.name])


def imatrix_solver(sums: dict[str, Any], counts: dict[str, Any]):
    """A statistics solver for the layer walker: adds each linear's (and routed expert's) sum of squared inputs
    per column, float64 ``[n_mat, n_cols]``, into ``sums`` and its token counts ``[n_mat]`` into ``counts``, by
    GGUF tensor name. The layer is left unchanged."""

    def solve(work):
        import torch

        from teeny_core.walker import Solved, run_layer

        layer, spec = work.layer, work.spec
        if work.inputs is None:
            raise TeenyError("the importance matrix needs calibration inputs")

        def add(name: str, x, mat: int = 0, n_mat: int = 1) -> None:
            x = x.detach().reshape(-1, x.shape[-1]).double()
            if name not in sums:
                sums[name] = torch.zeros(n_mat, x.shape[-1], dtype=torch.float64)
                counts[name] = [0.0] * n_mat
            sums[name][mat] += (x * x).sum(dim=0).cpu()
            counts[name][mat] += x.shape[0]

        handles = []
        for module_name, module in layer.named_modules():
            gguf_name = spec.gguf_name(f"{work.prefix}.{module_name}.weight")
            if isinstance(module, torch.nn.Linear) and gguf_name:
                handles.append(module.register_forward_pre_hook(
                    lambda mod, args, name=gguf_name: add(name, args[0])))
        if spec.experts:
            experts = layer.get_submodule(spec.experts.module)
            first = f"{work.prefix}.{spec.experts.module}.0"
            gate_name, up_name, down_name = (spec.gguf_name(f"{first}.{p}.weight") for p in spec.experts.disk_linears)

            def routed(mod, args):
                states, top_k_index = args[0], args[1]
                n = mod.gate_up_proj.shape[0]
                for e in range(n):
                    x = states[(top_k_index == e).any(-1)]
                    gate, up = torch.nn.functional.linear(x, mod.gate_up_proj[e]).chunk(2, dim=-1)
                    add(gate_name, x, e, n)
                    add(up_name, x, e, n)
                    add(down_name, mod.act_fn(gate) * up, e, n)

            handles.append(experts.register_forward_pre_hook(routed))
        try:
            with torch.no_grad():
                for h, a in zip(work.inputs, work.args):
                    run_layer(layer, h.to(work.device), a)
        finally:
            for handle in handles:
                handle.remove()
        return Solved()

    return solve


class _Discard:
    """A walker writer that keeps nothing: statistics solvers produce no model."""

    total = 0

    def add(self, key: str, tensor) -> None:
        pass

    def end_of_layer(self) -> None:
        pass


# --- file formats -------------------------------------------------------------------------------

def write_imatrix(imatrix: ImportanceMatrix, path: str | Path, fmt: str | None = None) -> Path:
    """Write ``imatrix`` as llama.cpp's GGUF format (``fmt="gguf"``, the default for ``*.gguf``) or legacy ``dat``."""
    path = Path(path)
    fmt = fmt or ("gguf" if path.suffix == ".gguf" else "dat")
    if fmt == "gguf":
        _write_gguf(imatrix, path)
    elif fmt == "dat":
        _write_dat(imatrix, path)
    else:
        raise TeenyError(f"imatrix format {fmt!r} is not valid; expected gguf or dat")
    return path


def read_imatrix(path: str | Path) -> ImportanceMatrix:
    """Read a llama.cpp importance matrix in either format (detected by the GGUF magic)."""
    path = Path(path)
    if not path.is_file():
        raise TeenyError(f"imatrix file {str(path)!r} not found")
    with open(path, "rb") as f:
        magic = f.read(4)
    try:
        return _read_gguf(path) if magic == GGUF_MAGIC else _read_dat(path)
    except (struct.error, ValueError, KeyError) as exc:
        raise TeenyError(f"{path}: not a valid llama.cpp imatrix file ({exc})") from None


def _write_gguf(imatrix: ImportanceMatrix, path: Path) -> None:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, arch="imatrix")
    writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)  # imatrix files carry no architecture
    writer.add_type("imatrix")
    writer.add_array("imatrix.datasets", list(imatrix.datasets))
    writer.add_uint32("imatrix.chunk_count", int(imatrix.chunk_count))
    writer.add_uint32("imatrix.chunk_size", int(imatrix.chunk_size))
    for name in sorted(imatrix.sums):
        counts = np.asarray(imatrix.counts[name], dtype=np.float32)
        sums = np.asarray(imatrix.sums[name], dtype=np.float32).reshape(len(counts), -1)
        writer.add_tensor(f"{name}.in_sum2", sums)
        writer.add_tensor(f"{name}.counts", counts.reshape(len(counts), 1))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _read_gguf(path: Path) -> ImportanceMatrix:
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: np.asarray(t.data, dtype=np.float64).reshape(-1) for t in reader.tensors}
    sums, counts = {}, {}
    for tname, data in tensors.items():
        if tname.endswith(".in_sum2"):
            name = tname[: -len(".in_sum2")]
            if f"{name}.counts" not in tensors:
                raise ValueError(f"{name}.in_sum2 has no matching .counts tensor")
            sums[name], counts[name] = data, tensors[f"{name}.counts"]
    if not sums:
        raise ValueError("no <name>.in_sum2 tensors")

    def field(key: str, default: Any) -> Any:
        f = reader.fields.get(key)
        return f.contents() if f is not None else default

    return ImportanceMatrix(sums=sums, counts=counts, chunk_count=int(field("imatrix.chunk_count", 0)),
                            chunk_size=int(field("imatrix.chunk_size", 0)),
                            datasets=list(field("imatrix.datasets", [])))


def _write_dat(imatrix: ImportanceMatrix, path: Path) -> None:
    import numpy as np

    chunk = max(int(imatrix.chunk_size), 1)
    means = imatrix.means()
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(means)))
        for name in sorted(means):
            ncall = max(1, math.ceil(float(np.max(imatrix.counts[name])) / chunk))
            raw = name.encode()
            f.write(struct.pack("<i", len(raw)) + raw)
            f.write(struct.pack("<ii", ncall, means[name].size))
            f.write((means[name].astype(np.float64) * ncall).astype("<f4").tobytes())
        f.write(struct.pack("<i", int(imatrix.chunk_count)))
        dataset = (imatrix.datasets[-1] if imatrix.datasets else "").encode()
        f.write(struct.pack("<i", len(dataset)) + dataset)


def _read_dat(path: Path) -> ImportanceMatrix:
    import numpy as np

    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return values

    (n_entries,) = take("<i")
    if n_entries < 1:
        raise ValueError("no entries")
    sums, counts = {}, {}
    for _ in range(n_entries):
        (length,) = take("<i")
        name = data[pos:pos + length].decode()
        pos += length
        ncall, nval = take("<ii")
        if nval < 1:
            raise ValueError(f"entry {name!r} has {nval} values")
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float64)
        pos += 4 * nval
        # legacy values are mean * ncall; keep ncall as the count so means() divides it back out
        sums[name], counts[name] = values, np.array([float(ncall)])
    chunk_count, datasets = 0, []
    if pos < len(data):
        (chunk_count,) = take("<i")
        if pos < len(data):
            (length,) = take("<i")
            if length > 0:
                datasets.append(data[pos:pos + length].decode())
    return ImportanceMatrix(sums=sums, counts=counts, chunk_count=chunk_count, chunk_size=0, datasets=datasets)


# --- handing it to llama.cpp --------------------------------------------------------------------

class ImatrixParam:
    """The NULL-terminated ``llama_model_imatrix_data`` array for ``llama_model_quantize_params.imatrix``.

    Holds the float32 buffers alive for as long as this object lives (llama.cpp copies them at the start
    of ``llama_model_quantize``).
    """

    def __init__(self, means: dict[str, Any]) -> None:
        import ctypes

        import llama_cpp
        import numpy as np

        self._names = {name: name.encode() for name in means}
        self._arrays = {name: np.ascontiguousarray(v, dtype=np.float32) for name, v in means.items()}
        entries = (llama_cpp.llama_model_imatrix_data * (len(means) + 1))()
        for i, name in enumerate(sorted(means)):
            arr = self._arrays[name]
            entries[i].name = self._names[name]
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        entries[len(means)].name = None  # terminator
        self.entries = entries
