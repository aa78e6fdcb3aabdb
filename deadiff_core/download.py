"""Fetching the weights DEADiff runs on from Hugging Face, only when a user asks for it.

Two files are known by name: the official DEADiff checkpoint (`qth/DEADiff`, `deadiff_v1.ckpt`, about
9 GB: a training checkpoint that also holds a copy of SD1.5) and SD1.5 itself
(`stable-diffusion-v1-5/stable-diffusion-v1-5`, `v1-5-pruned-emaonly.safetensors`, about 4 GB).

The transfer is `huggingface_hub.hf_hub_download` into the model folder (`local_dir`), so the hub's
own rules apply: HF_TOKEN (or a `huggingface-cli login`) for gated files, HF_ENDPOINT for a mirror,
HF_HUB_OFFLINE=1 for no network at all, a dropped connection picked up again with an HTTP Range
request, a progress bar. On top of that this module

- never touches the network for a file that is already in the folder (a second run downloads nothing);
- checks the free disk space against the size the hub announces before the first byte;
- checks the downloaded bytes against the hub's checksum: for a large (LFS) file the hub's ETag is the
  sha256 of its content, for a small (git) file the git blob sha1; a mismatch deletes the file.

Nothing here imports ComfyUI; the runner and the "Download DEADiff Model" node both call `download`.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

SHA256 = re.compile(r"^[0-9a-f]{64}$")
GIT_SHA1 = re.compile(r"^[0-9a-f]{40}$")
# room left after a download, so the disk is not filled to the last byte
DISK_MARGIN = 256 << 20
_OFFLINE_VALUES = {"1", "on", "yes", "true"}


class DownloadError(RuntimeError):
    """A download that could not happen or was refused; the message says why and what to do."""


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    filename: str
    folder: str  # the ComfyUI model folder it belongs in
    approx_bytes: int  # for messages before the hub answers
    what: str

    @property
    def page(self) -> str:
        return f"https://huggingface.co/{self.repo_id}"


DEADIFF = HubFile(
    "qth/DEADiff",
    "deadiff_v1.ckpt",
    "deadiff",
    9_300_000_000,
    "the official DEADiff weights (research licence: read it on the model page first)",
)
SD15 = HubFile(
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "v1-5-pruned-emaonly.safetensors",
    "checkpoints",
    4_270_000_000,
    "Stable Diffusion 1.5 (CreativeML OpenRAIL-M licence)",
)
KNOWN_FILES = {f.filename: f for f in (DEADIFF, SD15)}


def offline_mode() -> bool:
    """huggingface_hub's offline switch, read now (the library reads it once, at import)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _OFFLINE_VALUES:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> Optional[str]:
    """HF_ENDPOINT as set now (huggingface_hub reads it once, at import, and the runner may import it early)."""
    value = os.environ.get("HF_ENDPOINT")
    return value.rstrip("/") if value else None


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _hub():
    try:
        import huggingface_hub
    except ImportError as e:
        raise DownloadError(
            "downloading needs the huggingface_hub package (pip install huggingface_hub; it comes "
            "with transformers, a requirement of this pack)"
        ) from e
    return huggingface_hub


def remote_info(file: HubFile, token=None):
    """(size in bytes or None, checksum etag, commit) as the hub announces them, without downloading."""
    hub = _hub()
    url = hub.hf_hub_url(file.repo_id, file.filename, endpoint=endpoint())
    try:
        meta = hub.get_hf_file_metadata(url, token=token, endpoint=endpoint())
    except Exception as e:  # noqa: BLE001 - every hub/network error becomes one message
        raise DownloadError(_explain(file, e)) from e
    if not meta.commit_hash or not meta.etag:
        raise DownloadError(
            f"{url} did not answer like a Hugging Face hub (no X-Repo-Commit / ETag header); "
            "check HF_ENDPOINT and your proxy"
        )
    return meta.size, meta.etag, meta.commit_hash


def check_free_space(folder: Path, size: Optional[int]) -> None:
    if not size:
        return
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < size + DISK_MARGIN:
        raise DownloadError(
            f"not enough free disk space for {human(size)} in {folder}: {human(free)} free. Free "
            "some space, or choose a folder on another disk (--models-dir / DEADIFF_MODELS_DIR)"
        )


def file_checksum(path: Path, etag: str, progress: Optional[Callable[[int, int], None]] = None) -> Optional[str]:
    """The digest of `path` in the etag's kind (sha256 for LFS files, git blob sha1 for small files), or
    None when the etag is neither (then there is nothing to compare)."""
    size = path.stat().st_size
    if SHA256.match(etag):
        digest = hashlib.sha256()
    elif GIT_SHA1.match(etag):
        digest = hashlib.sha1()
        digest.update(f"blob {size}\0".encode())
    else:
        return None
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, size)
    return digest.hexdigest()


def download(
    file: HubFile,
    folder: Path,
    *,
    tqdm_class=None,
    token=None,
    verify_progress: Optional[Callable[[int, int], None]] = None,
    log: Callable[[str], None] = lambda _m: None,
) -> Path:
    """`folder/file.filename`, downloaded from the hub if it is not there yet.

    Raises DownloadError (offline mode, no network, gated repo, no disk space, wrong checksum)."""
    folder = Path(folder)
    target = folder / file.filename
    if target.is_file() and target.stat().st_size > 0:
        return target
    if offline_mode():
        raise DownloadError(
            f"{file.filename} is not in {folder} and Hugging Face offline mode is on "
            "(HF_HUB_OFFLINE=1), so it was not downloaded: unset HF_HUB_OFFLINE, or put the file "
            f"there yourself (from {file.page})"
        )
    size, etag, commit = remote_info(file, token=token)
    check_free_space(folder, size)
    folder.mkdir(parents=True, exist_ok=True)
    log(
        f"downloading {file.filename} ({human(size) if size else 'size unknown'}) from "
        f"{endpoint() or 'https://huggingface.co'}/{file.repo_id} into {folder}"
    )
    hub = _hub()
    extra = {}
    if tqdm_class is not None and "tqdm_class" in inspect.signature(hub.hf_hub_download).parameters:
        extra["tqdm_class"] = tqdm_class  # older huggingface_hub versions show their own bar only
    try:
        path = Path(
            hub.hf_hub_download(
                file.repo_id,
                file.filename,
                revision=commit,
                local_dir=folder,
                endpoint=endpoint(),
                token=token,
                **extra,
            )
        )
    except Exception as e:  # noqa: BLE001
        raise DownloadError(_explain(file, e)) from e
    log(f"checking {file.filename} against the hub's checksum")
    actual = file_checksum(path, etag, verify_progress)
    if actual is not None and actual != etag:
        path.unlink(missing_ok=True)
        _forget_local_metadata(folder, file.filename)
        raise DownloadError(
            f"{file.filename} from {file.repo_id} does not match the hub's checksum (expected "
            f"{etag}, got {actual}); the damaged file was deleted. Download it again; if this "
            "repeats, check HF_ENDPOINT and your proxy"
        )
    _make_readable(path)
    return path


def _forget_local_metadata(folder: Path, filename: str) -> None:
    """huggingface_hub keeps what it downloaded under local_dir/.cache/huggingface; drop that record."""
    for path in (folder / ".cache" / "huggingface" / "download").glob(f"{filename}*.metadata"):
        path.unlink(missing_ok=True)


def _make_readable(path: Path) -> None:
    """Mode as any model file (0644 under the usual umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _explain(file: HubFile, error: Exception) -> str:
    name = type(error).__name__
    text = str(error).strip().splitlines()[0] if str(error).strip() else name
    if "OfflineModeIsEnabled" in name or "LocalEntryNotFound" in name:
        return (
            f"{file.filename} could not be downloaded: no network access to the hub ({text}). Check your "
            f"connection and HF_ENDPOINT, or put the file in place yourself (from {file.page})"
        )
    if "GatedRepo" in name or "401" in text or "403" in text:
        return (
            f"{file.repo_id} refused the download ({text}): accept its terms on {file.page} and set HF_TOKEN "
            "to a token of that account (or run `hf auth login`)"
        )
    if "RepositoryNotFound" in name or "EntryNotFound" in name or "404" in text:
        return f"{file.repo_id} has no {file.filename} ({text}); check HF_ENDPOINT, or get the file from {file.page}"
    if "Connect" in name or "Timeout" in name:
        return (
            f"could not reach the hub at {endpoint() or 'https://huggingface.co'} for {file.filename} ({name}: "
            f"{text}); check your connection, proxy and HF_ENDPOINT"
        )
    return f"downloading {file.filename} from {file.repo_id} failed ({name}: {text})"
