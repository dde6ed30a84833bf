"""The run manifest: package versions, hardware, seeds and the config hash, for reproducibility."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from typing import Any

from teeny_core import windows
from teeny_core.experiment import Experiment
from teeny_core.plugins import Plugins

PACKAGES = ("torch", "transformers", "safetensors", "numpy", "gguf", "llama_cpp_python", "scipy", "accelerate")


def package_versions(plugins: Plugins) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    for info in plugins.infos.values():
        if not info.builtin:
            versions[f"plugin:{info.name}"] = info.version
    versions["teeny-core"] = metadata.version("teeny-core")
    return versions


def hardware() -> dict[str, Any]:
    """CPU model, cores, RAM, and GPU names and driver where an NVIDIA GPU is present."""
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "ram_bytes": psutil.virtual_memory().total,
                            "platform": platform.platform(), "gpus": []}
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout
            info["gpus"] = [dict(zip(("name", "driver", "memory"), (p.strip() for p in line.split(","))))
                            for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def build_manifest(exp: Experiment, plugins: Plugins, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"experiment": exp.name, "config_hash": exp.config_hash(), "config": exp.to_dict(),
            "seed": exp.seed, "started_at": (previous or {}).get("started_at", now), "updated_at": now,
            "argv": sys.argv, "versions": package_versions(plugins), "hardware": hardware(),
            "windows": {"rule": windows.RULE, "description": windows.DESCRIPTION}}
