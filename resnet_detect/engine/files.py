"""Atomic file writes: a crash or a full disk leaves the old file or the new one, never a
truncated one (temp file in the target folder, fsync, then rename over the target)."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import errno
import os
import pickle
import pickletools
import re
import secrets
import shutil
import time
import unicodedata
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

logger = logging.getLogger(__name__)


# the temporary files atomic_write makes beside their targets: ".NAME.<16 hex digits>.tmp"
PARTIAL_WRITE = re.compile(r"\..+\.[0-9a-f]{16}\.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *,
                 binary: bool = False, before_replace: Callable[[], None] | None = None,
                 sync: bool = True) -> None:
    """Call `write(file)` on a temp file beside `path`, then rename it to `path`
    (`before_replace()` between the two, once the temp file is complete). `sync=False`: not
    flushed to the disk first (whole through a kill, not through a power loss; pictures).

    Creates the parent folder. If `write` raises, `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    # Mode 0o666 under the umask, as a plain open() gives (0644 usually; mkstemp would make it
    # 0600 and hide metrics and checkpoints from the rest of a team). O_EXCL: never reuse a file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as f:
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj: Any, path: str | os.PathLike, *, checksum: bool = False) -> None:
    """torch.save `obj` to `path` atomically; with `checksum`, its SHA-256 beside it
    (`checksum_file`), which `read_checked_bytes` checks when the file is read.

    The bytes are made in memory first: torch's zip writer reports a full disk as a
    RuntimeError ("unexpected pos") that names neither the disk nor the file, a plain write
    as the OSError it is.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    # a stale checksum (the earlier file's) would call the new file damaged: removed once the
    # new bytes are on disk, so that a failed write (a full disk) leaves the earlier file checked
    atomic_write(path, lambda f: f.write(data), binary=True, before_replace=lambda: checksum_file(
        path).unlink(missing_ok=True) if checksum else None)
    if checksum:
        atomic_write_text(hashlib.sha256(data).hexdigest() + "\n", checksum_file(path))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    atomic_write(path, lambda f: f.write(text))


def atomic_write_figure(figure: Any, path: str | os.PathLike, dpi: int = 100) -> None:
    """A matplotlib figure saved atomically, in the format its suffix names (.png, .pdf,
    .svg, .jpg)."""
    suffix = Path(path).suffix[1:].lower()
    atomic_write(path, lambda f: figure.savefig(f, format=suffix, dpi=dpi), binary=True)


def replace_folder(new: Path, folder: Path) -> None:
    """Puts the complete folder `new` in the place of `folder` (which may not exist, or be a
    file): the earlier one is only deleted once the new one is in place. (Its scratch name is
    hidden: a visible `<name>.old` was another output's, demo's maps of cam.old.mp4.)"""
    old = folder.with_name(f".{folder.name}.old")
    remove_path(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(new, folder)
    remove_path(old, ignore_errors=True)


def remove_path(path: Path, *, ignore_errors: bool = False) -> None:
    """Delete a file or a folder (a link itself, not what it links to), if there;
    `ignore_errors`: as much as can be (else an OSError stops it)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=ignore_errors)
        return
    try:
        path.unlink(missing_ok=True)
    except OSError:
        if not ignore_errors:
            raise


def file_versions(path: Path, limit: int | None = None) -> dict[Path, tuple[int, int]] | None:
    """The files under `path` (or `path` itself) by (inode, modification time), which a
    write changes (a file replaced whole, or written over); None where there are more than
    `limit`. Links to folders are not followed."""
    found = {}
    for file in ([path] if path.is_file() else path.rglob("*") if path.is_dir() else []):
        try:
            stat = file.stat()
        except OSError:  # (gone meanwhile)
            continue
        if file.is_file():
            found[file] = (stat.st_ino, stat.st_mtime_ns)
            if limit is not None and len(found) > limit:
                return None
    return found


def nan_to_none(value: Any) -> Any:
    """`value` with every NaN float (in dicts, at any depth) replaced by None (JSON null)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    return value


def atomic_write_json(obj: Any, path: str | os.PathLike) -> None:
    """Indented JSON with a final newline."""
    atomic_write_text(json.dumps(obj, indent=2) + "\n", path)


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_file(path: str | os.PathLike) -> Path:
    """Where the SHA-256 of `path` is kept: `path` + ".sha256"."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def damaged_zip_record(data: bytes) -> str | None:
    """The first record of a zip archive's `data` (torch.save's format) whose bytes differ
    from the CRC-32 the archive keeps of them, which torch.load does not check; None where
    all match, where `data` is no zip archive (torch.load then says what it is), or where
    it keeps no CRCs (torch.serialization.set_crc32_options(False) writes 0)."""
    return _zip_check(data)[1]


def _zip_check(data: bytes) -> tuple[bool, str | None]:
    """(whether `data` is a zip archive whose every record was checked against a CRC-32 and
    matched it, the first record that did not match or None)."""
    if not data.startswith(b"PK\x03\x04"):
        return False, None
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        records = archive.infolist()
    except Exception:  # its directory cut or damaged (zipfile's errors are of many kinds)
        return False, None
    checked_all = bool(records)
    for record in records:
        if record.CRC == 0 and record.file_size:
            checked_all = False
            continue
        try:
            with archive.open(record) as f:
                while f.read(1 << 24):
                    pass
        except Exception:  # (BadZipFile for a CRC, or another for damaged headers)
            return False, record.filename
    return checked_all, None


def read_checked_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of `path`, checked against its `checksum_file` where it has one, else
    against the CRC-32s of its zip records (`damaged_zip_record`). A file that differs from its
    checksum file, yet whose records all match their CRC-32s and which torch loads, was written
    again since (saved again, another copied over it): taken, with a warning.

    Raises:
        ValueError: they differ (the file was damaged after it was written), or the checksum
            file is there but cannot be read.
    """
    for attempt in range(2):
        data = Path(path).read_bytes()
        try:  # "<hex>" as written here, or "<hex>  NAME" as sha256sum writes it
            written = checksum_file(path).read_text(encoding="utf-8", errors="replace")
            recorded = (written.split() or [""])[0].lower()
        except FileNotFoundError:  # none written (files of other tools, or older versions)
            damaged = damaged_zip_record(data)
            if damaged is not None:
                raise ValueError(f"its bytes are damaged: its record {damaged} does not match "
                                 f"the CRC-32 checksum the file keeps of it (a bad copy or "
                                 f"download: copy it again)") from None
            return data
        except OSError as e:  # (not read as "none written": the file would go unchecked)
            raise ValueError(f"its checksum file {checksum_file(path).name} cannot be read "
                             f"({type(e).__name__}: {e.strerror or e})") from e
        if hashlib.sha256(data).hexdigest() == recorded:
            return data
        if attempt == 0:  # a run that rewrote the file (model_best.pth) between the reads
            time.sleep(0.5)
    if _zip_check(data)[0] and _loads(data):  # whole by its own checksums: written again
        logger.warning("%s does not match %s, written with it, yet every part of it matches "
                       "the CRC-32 checksums the file keeps, and it loads: written again since "
                       "(saved again with torch.save, or another file copied over it), read as "
                       "it is; delete %s to silence this", path, checksum_file(path).name,
                       checksum_file(path))
        return data
    raise ValueError(f"its bytes do not match {checksum_file(path).name}: the file was "
                     "damaged after it was written")


def _loads(data: bytes) -> bool:
    """Whether torch.load reads `data` (fields of a zip's directory that Python's zipfile
    passes over, torch's reader checks)."""
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # (any reason: the caller says the file is damaged)
        return False
    return True


def missing_path(path: str | os.PathLike) -> str:
    """`path` for a "not found" message: a relative one with the working directory it was
    looked for in (the configs' paths are relative to the repository, a tool may run
    elsewhere); one that is there but a folder where a file was looked for, or the reverse,
    said so."""
    named = str(path) if Path(path).is_absolute() else f"{path} (in {Path.cwd()})"
    if Path(path).is_dir():
        return f"{named}: that is a folder"
    return f"{named}: that is a file" if Path(path).exists() else named


def unicode_twin_hint(path: str | os.PathLike) -> str:
    """For a file not found: where the same name in another Unicode normalisation exists
    (macOS writes names decomposed, é as e + an accent; a JSON written elsewhere composed),
    a hint naming it; else ""."""
    for form, written in (("NFC", "composed"), ("NFD", "decomposed")):
        twin = Path(unicodedata.normalize(form, str(path)))
        if str(twin) != str(path) and twin.exists():
            return (f" (on disk as {twin}, its accents {written}: the same letters encoded "
                    f"otherwise; write the names in one Unicode form, e.g. NFC)")
    return ""


# the number torch.save's legacy format pickles first (after a protocol 4 frame's header)
_LEGACY_MAGIC = b"\x8a\n" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def why_unloadable(data: bytes, error: Exception) -> str:
    """Why torch.load(weights_only=True) failed on a file's `data`, by its first bytes, with
    the error's first line; never torch's advice to load with weights_only=False (for a file
    of unknown origin, that runs its code)."""
    said = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0].split('. ')[0]}"
    if _pickles_numpy(data):
        return ("a pickle of NumPy arrays, not a PyTorch file: detectron2's model-zoo .pkl "
                "files and the Caffe2 (MSRA) ImageNet weights it starts from are not read here; "
                "torchvision's and timm's weights are (README, 'Backbones')")
    protocol = _pickle_protocol(data)
    if protocol is not None and protocol >= 4:
        return (f"it was saved with pickle protocol {protocol} (torch.save(..., "
                f"pickle_protocol={protocol})), which torch's safe reader (weights_only) cannot "
                f"read: save it again without pickle_protocol, from the program that wrote it")
    if data[:1] == b"\x80" and _LEGACY_MAGIC not in data[:32]:
        return ("a plain pickle (Python's pickle.dump), not a PyTorch file: save the state "
                "dict with torch.save")
    if _is_onnx_graph(data):
        return ("an ONNX graph (tools/export.py's model.onnx), not weights: the tools and "
                "Predictor take it as --weights / weights=; to train from it, give the .pth it "
                "was exported from")
    # (a pickle or torch.save's zip: a text file's first byte may read as an opcode too)
    if isinstance(error, pickle.UnpicklingError) and data.startswith((b"\x80", b"PK\x03\x04")):
        reason = str(error).split("WeightsUnpickler error:")[-1].split("\n\nCheck the")[0].strip()
        return (f"it holds more than tensors, or is no PyTorch file ({reason}): a damaged or "
                f"partial download, another format, or a whole pickled model (save its "
                f"state_dict() instead)")
    if not data:
        return "the file is empty (0 bytes): a failed download or copy"
    if "TorchScript" in str(error):
        return ("a TorchScript archive (torch.jit.save), not weights: save the model's "
                "state_dict() with torch.save")
    if data[8:10] in (b'{"', b"{ ") and len(data) > 8 + int.from_bytes(data[:8], "little") > 8:
        return ("a safetensors file under another name: weights of that format are read by "
                "their .safetensors suffix; rename it")
    if data.startswith(b"PK\x03\x04"):  # the zip archive torch.save writes, or another's
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except (zipfile.BadZipFile, ValueError):  # its end (the central directory) missing
            names = None
        if names is not None and not any(n.endswith("data.pkl") for n in names):
            return (f"a zip archive that is no PyTorch file ({', '.join(names[:3])}"
                    f"{' ...' if len(names) > 3 else ''}: NumPy's .npz, Keras' .keras, ...)")
        return (f"a PyTorch file cut short or damaged (a partial download, or copied while a "
                f"run wrote it): {said}")
    if data[:1] == b"\x80" and _LEGACY_MAGIC in data[:32]:  # torch.save's legacy format
        return f"a damaged PyTorch file of the legacy format: {said}"
    return (f"no PyTorch file (it starts with {data[:16]!r}: text, or another format; "
            f"weights are a .pth/.pt of torch.save or a .safetensors file)")


# the tags of an ONNX ModelProto's fields after ir_version: producer_name, producer_version,
# domain, model_version, doc_string, graph, opset_import, metadata_props
_ONNX_NEXT_FIELDS = (b"\x12", b"\x1a", b"\x22", b"\x28", b"\x32", b"\x3a", b"\x42", b"\x72")


def _is_onnx_graph(data: bytes) -> bool:
    """An ONNX ModelProto's first fields: ir_version (field 1, 3 or more since 2017: a
    TensorFlow saved_model.pb starts alike with its version 1), then another of its fields."""
    return (data[:1] == b"\x08" and len(data) > 2 and 3 <= data[1] < 0x80
            and data[2:3] in _ONNX_NEXT_FIELDS)


def _pickle_protocol(data: bytes) -> int | None:
    """The pickle protocol of a PyTorch file (its data.pkl in the zip format), else None."""
    if data.startswith(b"PK\x03\x04"):
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            data = archive.open(name).read(2) if name is not None else b""
        except (zipfile.BadZipFile, ValueError, OSError, EOFError):
            return None
    elif _LEGACY_MAGIC not in data[:32]:  # a plain pickle: no PyTorch file at all
        return None
    return data[1] if len(data) > 1 and data[0] == 0x80 else None


def _pickles_numpy(data: bytes, opcodes: int = 200) -> bool:
    """Whether a plain pickle loads a NumPy class among its first `opcodes` (read, never
    run): a GLOBAL naming a numpy module, or the module string a STACK_GLOBAL takes."""
    if data[:1] != b"\x80":
        return False
    strings: list[str] = []
    try:
        for i, (op, arg, _) in enumerate(pickletools.genops(io.BytesIO(data))):
            if i >= opcodes:
                break
            if op.name == "GLOBAL":
                strings = [str(arg).split(" ")[0], ""]
            elif isinstance(arg, str):
                strings = [*strings[-1:], arg]
                continue
            elif op.name != "STACK_GLOBAL":
                continue
            if len(strings) == 2 and strings[0].split(".")[0] == "numpy":
                return True
    except Exception:  # cut short, or no pickle after all
        return False
    return False


def check_weights_file(path: str | os.PathLike) -> Path:
    """`path` as a Path once it is known to be a file, else a FileNotFoundError saying what
    it is (a folder, or nothing)."""
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder, not a weights file: name a file in it "
                                f"(a training run's model_final.pth, or a model_NNNNNNN.pth)")
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {missing_path(path)}")
    return path


def is_disk_full(error: OSError) -> bool:
    """A write that failed for want of space (a full disk or a quota), not of permission."""
    return error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class UnwritableFolderError(ValueError):
    """An output folder that cannot be made or written to; the message names it."""


def writable_file(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path once it is known that a file can be written there (its folder can be
    made), checked before the work whose result it holds. `what` names it in messages."""
    if not str(path).strip():
        raise UnwritableFolderError(f"{what} is empty: name the file to write")
    if Path(path).is_dir():
        raise UnwritableFolderError(f"{what} {path} is a folder: name the file to write "
                                    f"(e.g. {Path(path) / 'coco.json'})")
    above = _nearest_existing(Path(path).parent)
    if above.exists() and not above.is_dir():
        raise UnwritableFolderError(f"{what} {path}: {above} is a file, not a folder")
    writable_folder(Path(path).parent, f"the folder of {what} {path}")
    return Path(path)


def _nearest_existing(path: Path) -> Path:
    """`path`, or the nearest folder above it that exists (the root at the end)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def writable_folder(folder: str | os.PathLike, what: str = "the output folder") -> Path:
    """`folder` as a Path once it is known that it can be made and written to, checked before
    any work whose results would go there (nothing is made here). `what` names it in
    messages ("--output")."""
    if not str(folder).strip():  # Path("") is the current folder: results written among its files
        raise UnwritableFolderError(f"{what} is empty: name a folder (a new one is made)")
    folder = Path(folder)
    if folder.is_symlink() and not folder.exists():
        raise UnwritableFolderError(f"{what} {folder} is a link to {os.readlink(folder)}, "
                                    f"which does not exist: name a folder")
    existing = _nearest_existing(folder)
    if existing == folder and not folder.is_dir():
        raise UnwritableFolderError(f"{what} {folder} is a file: name a folder (a new one is "
                                    f"made)")
    problem = ("Not a directory" if not existing.is_dir()
               else None if os.access(existing, os.W_OK | os.X_OK) else "Permission denied "
               "or a read-only file system")
    if problem:
        raise UnwritableFolderError(f"cannot write to {what} {folder}: {problem} ({existing}); "
                                    f"name a folder you can write to")
    return folder
