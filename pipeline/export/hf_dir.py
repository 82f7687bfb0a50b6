"""Write and check a Hugging Face model directory: ``config.json``, ``generation_config.json``,
the tokenizer files (``PreTrainedTokenizerFast``) and ``model.safetensors``.

Integrity travels inside the directory, so it survives an upload: the safetensors metadata
(``moe_pipeline.manifest``) holds the SHA-256 of every other file and a digest of every tensor's
name, dtype, shape and bytes. :func:`verify_export` recomputes them and names what is missing,
truncated or changed, instead of letting ``from_pretrained`` fail somewhere deep, or worse,
load a config that belongs to other weights.

Files are written into a temporary directory beside the target and moved in one by one, the
weights last: a killed export leaves either the old weights, whose manifest no longer matches
the new files (caught by :func:`verify_export`), or a complete new export. Other files in the
directory (the model card the ``card`` stage adds) are left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pipeline.export.architectures import ExportError, hf_config, hf_state_dict
from pipeline.io import canonical_safetensors, sha256_file
from pipeline.model import MoETransformer

WEIGHTS = "model.safetensors"
METADATA_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
)
FILES = (*METADATA_FILES, WEIGHTS)
MANIFEST_KEY = "moe_pipeline.manifest"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in name order: name, dtype, shape and raw bytes of each."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_export(model: MoETransformer, tokenizer_dir: Path, out_dir: Path, dtype: str) -> None:
    """Export ``model`` (and the tokenizer saved in ``tokenizer_dir``) into ``out_dir``."""
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    # local_files_only given, not inferred: transformers saves it into tokenizer_config.json, and
    # inferred it follows HF_HUB_OFFLINE, so the same export got other bytes on another machine.
    tokenizer = PreTrainedTokenizerFast.from_pretrained(
        str(tokenizer_dir), model_max_length=model.cfg.max_seq_len, local_files_only=True
    )
    if tokenizer.eos_token_id is None:
        raise ExportError(f"{tokenizer_dir}: the tokenizer defines no eos_token (re-run tokenize)")
    eot = tokenizer.eos_token_id
    config = hf_config(model.cfg, model.vocab_size, eot, dtype)
    tensors = hf_state_dict(model, DTYPES[dtype])
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        config.save_pretrained(tmp)
        GenerationConfig(
            bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, max_length=model.cfg.max_seq_len
        ).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest = {
            "files": {name: sha256_file(tmp / name) for name in METADATA_FILES},
            "tensors": tensor_digest(tensors),
        }
        save_file(tensors, tmp / WEIGHTS, {"format": "pt", MANIFEST_KEY: json.dumps(manifest)})
        canonical_safetensors(tmp / WEIGHTS)
        for name in FILES:  # the weights last: see the module docstring
            os.chmod(tmp / name, 0o644)
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def verify_export(out_dir: Path) -> dict:
    """Check ``out_dir`` against the manifest in its weights; return the parsed ``config.json``.

    Reads every tensor once (to hash it), so it costs about one load of the weights."""
    missing = [name for name in FILES if not (out_dir / name).is_file()]
    if missing:
        raise ExportError(f"{out_dir}: missing {missing}; re-run the export stage")
    weights = out_dir / WEIGHTS
    try:
        with safe_open(str(weights), framework="pt") as f:
            manifest = json.loads((f.metadata() or {})[MANIFEST_KEY])
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as exc:
        raise ExportError(
            f"{weights}: unreadable ({exc}); the file is truncated or corrupted: re-run export"
        ) from None
    except (KeyError, ValueError):
        raise ExportError(
            f"{weights}: no valid {MANIFEST_KEY} metadata; not written by this export"
        ) from None
    changed = [
        name for name, digest in manifest["files"].items() if sha256_file(out_dir / name) != digest
    ]
    if tensor_digest(tensors) != manifest["tensors"]:
        changed.append(WEIGHTS)
    if changed:
        raise ExportError(
            f"{out_dir}: {changed} differ from what the export wrote (corrupted, edited, or "
            "from different exports); re-run the export stage"
        )
    return json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
