"""Safe, atomic file I/O: nothing is half-written, nothing loaded executes code."""
from __future__ import annotations

import json
import os
import pickle
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError, OutputWriteError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_error(path: Path, e: BaseException) -> OutputWriteError:
    reason = getattr(e, "strerror", None) or (str(e).splitlines()[0][:160] if str(e) else type(e).__name__)
    return OutputWriteError(
        f"cannot write {path}: {reason}; free disk space or choose a writable folder "
        f"(the previous {path.name}, if any, is kept intact)"
    )


@contextmanager
def interrupts_deferred():
    """Hold Ctrl-C (SIGINT) until the block ends, then deliver it.

    An interrupt landing inside torch.save surfaces as a generic "file write failed"; holding it
    lets the write finish, so "the last completed epoch is saved" stays true after Ctrl-C.
    """
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(signal.SIGINT)


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    The rename is atomic on POSIX, so a reader (or a resume after SIGKILL) sees the old file
    or the new one, never a torn write. A failed write (disk full, read-only folder) leaves the
    old file in place, removes the temporary one and raises OutputWriteError (one line for the CLI).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise _write_error(path, e) from None
    with interrupts_deferred():  # a Ctrl-C during the write arrives after the rename
        try:
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; final files get the usual permissions
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            raise _write_error(path, e) from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_text(path, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def atomic_write_json(path, obj) -> None:
    """Write indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def save_weights(state_dict: dict, path) -> None:
    """Write tensors as safetensors (contiguous, no shared storage), atomically."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp))
        except SafetensorError as e:  # the Rust writer reports disk-full as its own error type
            raise OSError(str(e)) from None


def atomic_torch_save(obj, path) -> None:
    """torch.save to a file atomically; a full disk raises OutputWriteError."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(obj, f)  # through a Python file, so a failed write (disk full) raises OSError
        except RuntimeError as e:  # some torch versions wrap the writer's error
            if isinstance(e.__cause__ or e.__context__, OSError):
                raise (e.__cause__ or e.__context__) from None
            if "write" in str(e).lower() or "iostream" in str(e).lower() or "unexpected pos" in str(e).lower():
                raise OSError(f"file write failed ({_free_space_hint(Path(tmp))})") from None
            raise


def _free_space_hint(path: Path) -> str:
    import shutil

    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return "unknown free space"
    return f"No space left on device, {free / 1e6:.1f} MB free" if free < 64e6 else f"{free / 1e6:.0f} MB free"


def load_state_dict_file(path) -> dict:
    """Load a weights file without executing code: safetensors, or torch with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a valid safetensors file ({e}); re-save or re-download it") from None
    obj = safe_torch_load(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # common training-checkpoint layout
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors; save weights with torch.save(model.state_dict(), path)")
    return obj


def safe_torch_load(path):
    """torch.load restricted to tensors and plain containers; a pickle that would run code is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "Unsupported global" in ln or "Unsupported operand" in ln),
                      lines[0] if lines else type(e).__name__)
        raise CheckpointError(
            f"{path}: refused to load, the file contains pickled code or objects "
            f"({detail[:160]}); only tensor state dicts or safetensors are accepted"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated file ({str(e).splitlines()[0][:160]})") from None
