"""Checkpoint directories in the Hugging Face layout: ``config.json`` + ``*.safetensors``.

* ``resolve_dir(id_or_path)``: a local directory as is, else a hub snapshot (the real
  download path; without network: a ``ModelLoadError`` naming the id).
* ``load_state_dict(dir, expected)``: every ``*.safetensors`` file, checked against the
  expected ``{key: shape}``: a missing, extra or wrongly shaped key, or a truncated / corrupt
  file, is an error naming the key or the file. Never ``torch.load`` of a pickle.
* ``save_checkpoint(dir, config, tensors)``: atomic - written into a temporary sibling
  directory, then renamed over the destination, so a kill never leaves a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Optional

import torch

from .errors import IncompatibleError, ModelLoadError

WEIGHTS_NAME = "model.safetensors"


def resolve_dir(id_or_path: str, revision: Optional[str] = None) -> Path:
    p = Path(id_or_path).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise ModelLoadError(f"checkpoint '{id_or_path}' is a file; give the directory holding config.json")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(id_or_path, revision=revision, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ModelLoadError(
            f"could not load checkpoint '{id_or_path}': not a local directory and not downloadable from the "
            f"Hugging Face Hub (no network? fetch it once with `hf download {id_or_path}` and point the recipe "
            f"at the folder). ({type(e).__name__}: {first})"
        ) from None


def read_config(directory: Path) -> dict:
    f = Path(directory) / "config.json"
    if not f.is_file():
        raise ModelLoadError(f"{directory}: no config.json")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{f}: not valid JSON ({e})") from None


def load_state_dict(directory: Path, expected: Optional[Mapping[str, tuple]] = None,
                    aliases: Mapping[str, str] = {}, claims=None) -> dict[str, torch.Tensor]:
    """Load all safetensors shards of ``directory``. ``aliases`` maps old key prefixes to new
    ones (e.g. ``{"model.": ""}``). ``claims``: a component's ``claims(key)`` (stored key
    names): only the keys it claims are read (a directory may hold another component's part).
    With ``expected``, check key names and shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{directory}: no *.safetensors weights")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            if claims is None:
                part = load_file(str(f))
            else:
                from safetensors import safe_open

                with safe_open(str(f), framework="pt") as sf:
                    part = {k: sf.get_tensor(k) for k in sf.keys() if claims(k)}
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{f}: corrupt or truncated safetensors file ({e})") from None
        for k, v in part.items():
            for old, new in aliases.items():
                if k.startswith(old):
                    k = new + k[len(old):]
                    break
            tensors[k] = v
    if expected is not None:
        check_keys(tensors, expected, str(directory))
    return tensors


def stored_keys(directory: Path) -> list[str]:
    """The tensor names of every ``*.safetensors`` shard of ``directory`` (headers only)."""
    from safetensors import SafetensorError, safe_open

    keys: list[str] = []
    for f in sorted(Path(directory).glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as sf:
                keys.extend(sf.keys())
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{f}: corrupt or truncated safetensors file ({e})") from None
    return keys


def split_keys(keys, parts: Mapping[str, type], others: Mapping[str, type] = {}, where: str = "") -> dict[str, list[str]]:
    """Split a checkpoint directory's tensor names among the recipe's components by their
    ``claims(key)`` (interfaces.Component.claims): ``parts`` = ``{"drafter dflash": cls, ...}`` of this
    recipe; ``others`` = the other installed components, whose keys may sit in the directory
    unloaded (a DFlash + Domino checkpoint run without its corrector). Returns ``{part: [keys]}``
    (``others`` under their own names). A key claimed by no component, or by two of the recipe's,
    is a one-line ``ModelLoadError`` naming it. A recipe part that does not implement ``claims``
    (a component written before it existed) takes the keys no other component claims."""
    from .interfaces import Component

    undeclared = [name for name, cls in parts.items()
                  if getattr(cls.claims, "__func__", None) is Component.claims.__func__]
    out: dict[str, list[str]] = {name: [] for name in list(parts) + list(others)}
    unclaimed, doubly = [], []
    for k in keys:
        mine = [name for name, cls in parts.items() if cls.claims(k)]
        if len(mine) > 1:
            doubly.append(f"{k} ({' and '.join(mine)})")
            continue
        if not mine:
            mine = [name for name, cls in others.items() if cls.claims(k)][:1] or undeclared[:1]
        if not mine:
            unclaimed.append(k)
            continue
        out[mine[0]].append(k)
    if doubly:
        raise ModelLoadError(f"{where}: key(s) claimed twice: {', '.join(doubly[:8])}" + (" ..." if len(doubly) > 8 else ""))
    if unclaimed:
        raise ModelLoadError(f"{where}: {len(unclaimed)} key(s) no installed component claims: "
                             f"{', '.join(sorted(unclaimed)[:8])}" + (" ..." if len(unclaimed) > 8 else "")
                             + f" (this recipe's parts: {', '.join(parts)})")
    return out


def check_keys(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, tuple], where: str) -> None:
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise ModelLoadError(f"{where}: missing key(s) {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    if extra:
        raise ModelLoadError(f"{where}: unexpected key(s) {', '.join(extra[:8])}" + (" ..." if len(extra) > 8 else ""))
    for k, shape in expected.items():
        if tuple(tensors[k].shape) != tuple(shape):
            raise IncompatibleError(f"{where}: key {k} has shape {list(tensors[k].shape)}, expected {list(shape)}")


def save_file_atomic(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Optional[dict] = None) -> None:
    """``safetensors.torch.save_file`` to a temporary name next to ``path``, then renamed onto it:
    a reader (or a resumed run) never sees half a file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    save_file(dict(tensors), str(tmp), metadata=metadata)
    os.replace(tmp, path)


def atomic_write_dir(directory: Path, write) -> None:
    """Call ``write(tmp_dir)`` then atomically replace ``directory`` with it."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        write(tmp)
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(directory: Path, config: dict, tensors: Mapping[str, torch.Tensor],
                    extra_files: Optional[Mapping[str, bytes]] = None) -> None:
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS_NAME),
                  metadata={"format": "pt"})
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)

    atomic_write_dir(directory, write)
