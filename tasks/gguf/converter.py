"""llama.cpp's own `convert_hf_to_gguf.py`, at the version the installed llama-cpp-python was built from.

The converter is not shipped in the llama-cpp-python wheel, but its sdist carries it under
`vendor/llama.cpp/` (`convert_hf_to_gguf.py`, the `conversion/` package and `gguf-py/`).
`fetch_converter` downloads that sdist with pip (no git clone), extracts those three
pieces into a per-user cache shared by every run, and records the version. The converter
then runs as a subprocess with `PYTHONPATH` on its own `gguf-py`, so it writes with the
gguf package it was released with, not whichever `gguf` is installed.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from pydantic import BaseModel

CONVERTER_SCRIPT = "convert_hf_to_gguf.py"
_VENDOR = "vendor/llama.cpp/"
_KEEP = (CONVERTER_SCRIPT, "conversion/", "gguf-py/")


class ConverterError(RuntimeError):
    """The converter could not be fetched or failed on a model; the message says why."""


# What a write that hit a full disk leaves in an error: the OS's ENOSPC text, or numpy's
# `tofile` short write ("884736 requested and 2016 written"), which the GGUF writer uses.
_DISK_FULL = re.compile(r"No space left on device|\[Errno 28\]|\d+ requested and \d+ written")
LOW_SPACE_BYTES = 1 << 20


def disk_full_message(path: Path, output: str = "") -> str | None:
    """If writing `path` failed because its disk is full, say so, where, and what to do; else None.

    Call it before removing the partial file (the space it took is the evidence): the disk is
    full when the error text says so or less than `LOW_SPACE_BYTES` is left there.
    """
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    usage = shutil.disk_usage(folder)
    if not _DISK_FULL.search(output) and usage.free >= LOW_SPACE_BYTES:
        return None
    return (
        f"the disk holding {folder} is full ({usage.free / 1e6:.1f} MB free of "
        f"{usage.total / 1e6:.0f} MB) while writing {Path(path).name}; the partial file was removed. "
        "Free space there, or point LMFT_HOME (or the output folder) at a bigger disk, and run again"
    )


class Converter(BaseModel):
    """A cached copy of llama.cpp's HF → GGUF converter."""

    version: str
    directory: str
    architectures: list[str]

    @property
    def script(self) -> Path:
        return Path(self.directory) / CONVERTER_SCRIPT

    @property
    def gguf_py(self) -> Path:
        return Path(self.directory) / "gguf-py"


def installed_llama_cpp_version() -> str:
    """The llama-cpp-python release installed here."""
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError as exc:
        raise ConverterError(
            "llama-cpp-python is not installed; install it with CMAKE_ARGS='-DGGML_NATIVE=OFF' pip install llama-cpp-python"
        ) from exc


def converter_cache_root() -> Path:
    """`$LMFT_CONVERTER_CACHE`, else `~/.cache/lm-fine-tuning/llama.cpp-converter` (shared across runs)."""
    if custom := os.environ.get("LMFT_CONVERTER_CACHE"):
        return Path(custom).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return base / "lm-fine-tuning" / "llama.cpp-converter"


def registered_architectures(directory: Path) -> list[str]:
    """Hugging Face architecture names the converter registers, read from its source (no import).

    Covers both layouts: `@ModelBase.register("LlamaForCausalLM", ...)` decorators, and the
    lazy `TEXT_MODEL_MAP = {"LlamaForCausalLM": "llama", ...}` table of the `conversion/` package.
    """
    names: set[str] = set()
    files = [directory / CONVERTER_SCRIPT, *sorted((directory / "conversion").glob("*.py"))]
    for file in files:
        if not file.exists():
            continue
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "register":
                names.update(
                    a.value
                    for a in node.args
                    if isinstance(a, ast.Constant) and isinstance(a.value, str)
                )
            elif isinstance(node, ast.AnnAssign | ast.Assign):
                targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
                if any(getattr(t, "id", None) == "TEXT_MODEL_MAP" for t in targets) and isinstance(
                    node.value, ast.Dict
                ):
                    names.update(k.value for k in node.value.keys if isinstance(k, ast.Constant))
    return sorted(names)


def _extract(sdist: Path, target: Path) -> None:
    with tarfile.open(sdist) as archive:
        members = []
        for member in archive.getmembers():
            _, _, inner = member.name.partition("/")
            if not inner.startswith(_VENDOR):
                continue
            relative = inner[len(_VENDOR) :]
            if relative == CONVERTER_SCRIPT or relative.startswith(_KEEP[1:]):
                member.name = relative
                members.append(member)
        if not any(m.name == CONVERTER_SCRIPT for m in members):
            raise ConverterError(
                f"{sdist.name} has no {_VENDOR}{CONVERTER_SCRIPT}; this release cannot convert models"
            )
        archive.extractall(target, members=members, filter="data")


def fetch_converter(version: str | None = None) -> Converter:
    """The converter of llama-cpp-python `version` (default: the installed one), fetched once per machine."""
    version = version or installed_llama_cpp_version()
    target = converter_cache_root() / version
    record = target / "converter.json"
    if record.exists():
        return Converter.model_validate_json(record.read_text())
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{version}-") as scratch:
        download = Path(scratch) / "sdist"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-binary",
                ":all:",
                "--no-deps",
                f"llama-cpp-python=={version}",
                "-d",
                str(download),
            ],
            capture_output=True,
            text=True,
        )
        sdists = sorted(download.glob("*.tar.gz")) if download.exists() else []
        if result.returncode != 0 or not sdists:
            raise ConverterError(
                f"could not download the llama-cpp-python {version} sdist with pip (it carries llama.cpp's converter); "
                f"check that PyPI is reachable:\n{result.stderr[-2000:]}"
            )
        staging = Path(scratch) / "converter"
        _extract(sdists[0], staging)
        converter = Converter(
            version=version, directory=str(target), architectures=registered_architectures(staging)
        )
        (staging / "converter.json").write_text(converter.model_dump_json(indent=2))
        try:
            staging.rename(target)
        except OSError:
            if not record.exists():  # another process won the race only if it finished
                raise
    return Converter.model_validate_json(record.read_text())


def run_converter(
    converter: Converter,
    model_dir: Path,
    outfile: Path,
    *,
    outtype: str = "f16",
    metadata: Path | None = None,
    log_file: Path | None = None,
) -> None:
    """Run `convert_hf_to_gguf.py` on `model_dir`; raise ConverterError with its last output on failure."""
    env = {**os.environ, "PYTHONPATH": str(converter.gguf_py)}
    env.pop("NO_LOCAL_GGUF", None)
    command = [
        sys.executable,
        str(converter.script),
        str(model_dir),
        "--outfile",
        str(outfile),
        "--outtype",
        outtype,
    ]
    if metadata is not None:
        command += ["--metadata", str(metadata)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if log_file is not None:
        log_file.write_text(result.stdout + result.stderr)
    if result.returncode != 0 or not outfile.exists():
        full = disk_full_message(outfile, result.stdout + result.stderr)
        outfile.unlink(missing_ok=True)
        if full:
            raise ConverterError(f"llama.cpp's converter could not write the GGUF: {full}")
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise ConverterError(
            f"llama.cpp's converter ({converter.version}) failed on {model_dir}:\n{tail}"
        )
