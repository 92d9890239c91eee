"""An extension folder as a reproducible archive, its digest, and the safe unpacking of one.

`pack` makes a tar.gz whose bytes depend on the folder's names, contents and execute bits only (not on times,
owners or the umask), so a publisher can make the same archive twice. `unpack` trusts nothing in an archive:
only regular files and folders, no name that leaves the destination, bounded in size and count, written into a
hidden sibling folder that becomes the destination only when everything was written.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

MiB = 1024 * 1024
_BLOCK = MiB  # what is read or written at once
# After the last member a tar holds zero blocks up to the end of its record (10 KiB by default): allow a large
# record, but not an endless run of zeros that would only cost time to decompress.
_MAX_TRAILER = MiB
_MAX_PART_BYTES = 255  # the longest file name most file systems take

_KINDS = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}
_FILE_KINDS = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}


class ArchiveRefused(Exception):
    """An archive, or a folder to pack, that is not taken; `reason` says what was wrong and where."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class UnpackLimits:
    """What one archive may cost: its own size, the sum of its files' sizes, and its number of members."""

    max_archive_bytes: int = 64 * MiB
    max_unpacked_bytes: int = 256 * MiB
    max_files: int = 10_000


# --- packing ---


def pack(folder: Path) -> bytes:
    """The folder's contents as a reproducible tar.gz (names relative to the folder, sorted, folders included).
    Refuses anything but regular files and folders: a symlink, device, FIFO or socket. Everything is opened from
    the folder down one part at a time, following no symbolic link: what is packed is what is below the folder,
    even should a part of it be swapped for a link meanwhile."""
    try:
        root = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        raise ArchiveRefused(f"{folder}: not a folder") from None
    buffer = io.BytesIO()
    try:
        with (
            gzip.GzipFile(fileobj=buffer, mode="wb", filename="", mtime=0) as compressed,
            tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for name, is_folder in sorted(_walk(os.dup(root), "")):
                if is_folder:
                    tar.addfile(_info(name, tarfile.DIRTYPE, 0o755, 0))
                else:
                    _add_file(tar, root, name)
    finally:
        os.close(root)
    return buffer.getvalue()


def _walk(fd: int, prefix: str) -> list[tuple[str, bool]]:
    """(relative name, is a folder) of everything in the open folder, which it closes; refuses what is neither."""
    found: list[tuple[str, bool]] = []
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                name = prefix + entry.name
                _check_utf8(name)
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    found.append((name, True))
                    found.extend(_walk(_open(fd, entry.name, name, folder=True), name + "/"))
                elif stat.S_ISREG(mode):
                    found.append((name, False))
                else:
                    raise ArchiveRefused(f"{name}: {_kind(mode)} (only regular files and folders are packed)")
    finally:
        os.close(fd)
    return found


def _add_file(tar: tarfile.TarFile, root: int, name: str) -> None:
    """Adds one file, opened from the folder down one part at a time (`_open`)."""
    parts = name.split("/")
    fd = root
    try:
        for end in range(1, len(parts)):
            parent, fd = fd, _open(fd, parts[end - 1], "/".join(parts[:end]), folder=True)
            if parent != root:
                os.close(parent)
        file = os.fdopen(_open(fd, parts[-1], name, folder=False), "rb")
    finally:
        if fd != root:
            os.close(fd)
    with file:
        status = os.fstat(file.fileno())
        tar.addfile(_info(name, tarfile.REGTYPE, 0o755 if status.st_mode & 0o111 else 0o644, status.st_size), file)


def _open(parent: int, part: str, name: str, folder: bool) -> int:
    """One part of a name, in its open parent folder: not followed if a symbolic link, not waited on if a FIFO, and
    checked on the open file, so what is read is what was checked."""
    try:
        fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # swapped for a symbolic link since the walk saw it: refused as the walk would
            raise ArchiveRefused(f"{name}: a symbolic link (only regular files and folders are packed)") from None
        raise ArchiveRefused(f"{name}: cannot be read ({exc.strerror})") from None
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode):
        return fd
    os.close(fd)
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        raise ArchiveRefused(f"{name}: no longer a {'folder' if folder else 'file'} (it changed while it was packed)")
    raise ArchiveRefused(f"{name}: {_kind(mode)} (only regular files and folders are packed)")


def _info(name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size = kind, mode, size
    info.mtime = info.uid = info.gid = 0  # no time, no owner: only the names, contents and execute bits count
    info.uname = info.gname = ""
    return info


def _kind(mode: int) -> str:
    return _FILE_KINDS.get(stat.S_IFMT(mode), f"a file of mode {mode:o}")


def _check_utf8(name: str) -> None:
    # A name that is not UTF-8 arrives here with surrogates; neither the tree digest nor another system could
    # spell it.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ArchiveRefused(f"{name.encode('utf-8', 'replace').decode()}: the name is not UTF-8") from None


# --- digests ---


def digest_bytes(data: bytes) -> str:
    """`sha256:<hex>` of the bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_file(path: Path) -> str:
    """`sha256:<hex>` of a file's bytes, read a block at a time."""
    with path.open("rb") as file:
        return "sha256:" + hashlib.file_digest(file, "sha256").hexdigest()


# --- unpacking ---


def unpack(archive: Path, dest: Path, limits: UnpackLimits) -> None:
    """Unpacks a tar.gz into `dest`, which must not exist (FileExistsError); its parent is created. The files
    are written into a hidden sibling folder renamed to `dest` at the end, so `dest` appears complete or not at
    all. Raises ArchiveRefused for an archive that is unsafe, over the limits, corrupt or truncated."""
    if os.path.lexists(dest):
        raise FileExistsError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with archive.open("rb") as raw:
        size = os.fstat(raw.fileno()).st_size
        if size > limits.max_archive_bytes:
            raise ArchiveRefused(f"the archive has {size} bytes, more than the limit of {limits.max_archive_bytes}")
        temporary = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                _extract(stream, temporary, limits)
            temporary.chmod(0o755)
            try:
                temporary.rename(dest)
            except OSError:
                if os.path.lexists(dest):  # made meanwhile (only an empty folder would have been replaced)
                    raise FileExistsError(f"{dest} already exists") from None
                raise
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise


class _Reader(io.RawIOBase):
    """The decompressed stream as tarfile reads it. It keeps what the last read returned: tarfile ends its walk
    quietly at a header it cannot read, and only that tells a proper end (a zero block) from a broken one."""

    def __init__(self, stream: gzip.GzipFile) -> None:
        super().__init__()
        self._stream = stream
        self.last = b""

    def read(self, size: int = -1, /) -> bytes:
        # tarfile reads an extended header (PAX, GNU long name) whole, before any member is seen: bound it here.
        # Its other reads are a block or a piece of a member's data, which `_write` asks for a block at a time.
        if not 0 <= size <= _BLOCK:
            raise ArchiveRefused(f"a header of {size} bytes (more than {_BLOCK})")
        self.last = self._stream.read(size)
        return self.last

    def seek(self, pos: int, whence: int = os.SEEK_SET, /) -> int:  # and so tell(), which is seek(0, SEEK_CUR)
        return self._stream.seek(pos, whence)


def _extract(stream: gzip.GzipFile, into: Path, limits: UnpackLimits) -> None:
    reader = _Reader(stream)
    kinds: dict[str, bool] = {}  # every name written, explicit or implied: is it a folder?
    members: set[str] = set()
    declared = 0  # the sum of the files' sizes in their headers; `_write` holds each file to its own
    try:
        with tarfile.TarFile(fileobj=reader, mode="r") as tar:
            for count, member in enumerate(tar, start=1):
                if count > limits.max_files:
                    raise ArchiveRefused(f"{member.name}: more than {limits.max_files} members")
                parts = _parts(member.name)
                is_folder = _is_folder(member)
                if not parts:
                    if is_folder:
                        continue  # "./", as tar writes the folder it was given: the destination itself
                    raise ArchiveRefused(f"{member.name!r}: a file without a name")
                name = "/".join(parts)
                if name in members:
                    raise ArchiveRefused(f"{name}: a duplicate name")
                members.add(name)
                for end in range(1, len(parts)):
                    if kinds.get(parent := "/".join(parts[:end])) is False:
                        raise ArchiveRefused(f"{name}: its folder {parent} is a file")
                if kinds.get(name) and not is_folder:
                    raise ArchiveRefused(f"{name}: a file where the archive already has a folder")
                declared += 0 if is_folder else member.size
                if declared > limits.max_unpacked_bytes:
                    raise ArchiveRefused(
                        f"{name}: the files add up to more than the limit of {limits.max_unpacked_bytes} bytes"
                    )
                try:
                    # A second opinion on the checks above; what it would change (modes) `_write` decides anyway.
                    tarfile.data_filter(member, str(into))
                except (tarfile.FilterError, ValueError) as exc:  # ValueError: a NUL byte, should `_parts` miss one
                    raise ArchiveRefused(f"{name}: {exc}") from None
                try:
                    for end in range(1, len(parts) + is_folder):
                        if (folder := "/".join(parts[:end])) not in kinds:
                            kinds[folder] = True
                            (path := into.joinpath(*parts[:end])).mkdir(mode=0o755)  # its parent came first
                            path.chmod(0o755)  # whatever the umask
                    if not is_folder:
                        kinds[name] = False
                        source = tar.extractfile(member)
                        assert source is not None  # a regular file always has its data
                        _write(source, into.joinpath(*parts), name, member)
                except (ValueError, FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
                    # What only a name can cause in a fresh folder (a NUL byte, a file where a folder goes): the
                    # checks above refuse it first; should one miss, the archive is refused all the same.
                    raise ArchiveRefused(f"{name}: cannot be written ({exc.__class__.__name__})") from None
                except OSError as exc:
                    if exc.errno != errno.ENAMETOOLONG:
                        raise  # the disk's trouble (full, read-only), not the archive's
                    raise ArchiveRefused(f"{name}: a name too long for this file system") from None
        _check_end(reader, stream)
    except (tarfile.TarError, zlib.error, EOFError, gzip.BadGzipFile) as exc:
        raise ArchiveRefused(f"corrupt or truncated archive: {exc}") from None


def _parts(name: str) -> list[str]:
    """The member name's parts, "." parts (as in "./x") dropped; a name that could leave the folder is refused.
    No parts at all: the folder itself."""
    _check_utf8(name)
    if name.startswith("/"):
        raise ArchiveRefused(f"{name}: an absolute name")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveRefused(f"{name}: a name with a '..' part")
    if "\0" in name or any(len(part.encode()) > _MAX_PART_BYTES for part in parts):
        raise ArchiveRefused(f"{name}: a name no file system takes")
    return parts


def _is_folder(member: tarfile.TarInfo) -> bool:
    if member.type == tarfile.DIRTYPE:
        return True
    if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and member.sparse is None:
        return False
    kind = _KINDS.get(member.type, f"a member of type {member.type!r}")
    raise ArchiveRefused(f"{member.name}: {kind} (only regular files and folders are unpacked)")


def _write(source: IO[bytes], path: Path, name: str, member: tarfile.TarInfo) -> None:
    """Copies one member's data, counting what is really written: its header's size is not trusted to the reader.
    So no more is written in all than the headers' sizes add up to, which `_extract` holds to the limit."""
    mode = 0o755 if member.mode & 0o111 else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    count = 0
    with os.fdopen(fd, "wb") as out:
        while block := source.read(_BLOCK):
            count += len(block)
            if count > member.size:
                raise ArchiveRefused(f"{name}: more data than its header says ({member.size} bytes)")
            out.write(block)
        if count != member.size:
            raise ArchiveRefused(f"{name}: {count} bytes where its header says {member.size}")
        os.fchmod(out.fileno(), mode)


def _check_end(reader: _Reader, stream: gzip.GzipFile) -> None:
    """The walk ended at a zero block, and only zeros follow to the end of the gzip stream (whose length and
    checksum gzip checks there)."""
    if reader.last != bytes(tarfile.BLOCKSIZE):
        raise ArchiveRefused("corrupt or truncated archive: it ends without a proper end-of-archive block")
    trailer = 0
    while block := stream.read(_BLOCK):
        trailer += len(block)
        if block.strip(b"\0") or trailer > _MAX_TRAILER:
            raise ArchiveRefused("corrupt archive: data after its end-of-archive block")
