"""Archives: the same folder gives the same bytes, and unpacking refuses whatever could harm the loader."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import shutil
import socket
import stat
import tarfile
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from service.core.folders import tree_digest
from service.registry.archive import ArchiveRefused, UnpackLimits, digest_bytes, digest_file, pack, unpack

MiB = 1024 * 1024


def make_folder(root: Path) -> Path:
    """A small extension: nested folders, an empty one, an executable, a non-ASCII and a long name."""
    (root / "nulib" / "lib").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "metadata.toml").write_text('name = "demo"\n')
    (root / "nulib" / "mod.nu").write_text("export def main [] { 1 }\n")
    (root / "nulib" / "lib" / "ünïcode.txt").write_bytes(b"\x00\x01binary")
    (root / ("long-" * 30 + ".txt")).write_text("a name longer than a tar header holds\n")
    (root / "install.sh").write_text("#!/bin/sh\n")
    (root / "install.sh").chmod(0o700)
    (root / "nulib" / "lib" / "ünïcode.txt").chmod(0o600)
    return root


def contents(folder: Path) -> dict[str, tuple[str, bytes, int]]:
    """Every entry under the folder: (kind, bytes, permission bits)."""
    out: dict[str, tuple[str, bytes, int]] = {}
    for path in sorted(folder.rglob("*")):
        mode = path.lstat().st_mode
        data = path.read_bytes() if stat.S_ISREG(mode) else b""
        out[path.relative_to(folder).as_posix()] = ("dir" if stat.S_ISDIR(mode) else "file", data, stat.S_IMODE(mode))
    return out


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# --- pack ---


def test_the_same_folder_gives_the_same_bytes(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "src")
    first = pack(folder)
    for path in folder.rglob("*"):
        os.utime(path, (1_000_000, 2_000_000), follow_symlinks=False)
    (folder / "metadata.toml").chmod(0o600)  # no execute bit either way
    (folder / "install.sh").chmod(0o711)  # still executable
    assert pack(folder) == first
    with umask(0o077):
        copy = shutil.copytree(folder, tmp_path / "elsewhere" / "copy")
    (copy / "nulib").chmod(0o700)
    assert pack(copy) == first
    assert pack(copy) == pack(copy)


def test_entries_are_sorted_relative_and_normalised(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "src")
    data = pack(folder)
    assert data[:4] == b"\x1f\x8b\x08\x00"  # gzip, deflate, no flags: no file name
    assert data[4:8] == bytes(4)  # gzip mtime 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(contents(folder))
    assert "empty" in names and "nulib/lib" in names
    for member in members:
        assert not member.name.startswith(("/", "./"))
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (0, 0, 0, "", "")
        assert member.isdir() or member.isreg()
        executable = member.isdir() or member.name == "install.sh"
        assert member.mode == (0o755 if executable else 0o644), member.name


def test_an_empty_folder_packs_and_unpacks(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(pack(tmp_path / "src"))
    unpack(archive, tmp_path / "out", UnpackLimits())
    assert contents(tmp_path / "out") == {}


def _symlink(folder: Path) -> None:
    (folder / "nulib" / "link").symlink_to("/etc/passwd")


def _folder_symlink(folder: Path) -> None:
    (folder / "outside").symlink_to(folder.parent, target_is_directory=True)


def _fifo(folder: Path) -> None:
    os.mkfifo(folder / "nulib" / "lib" / "pipe")


def _socket(folder: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(folder / "sock"))


def _dangling_symlink(folder: Path) -> None:
    (folder / "dangling").symlink_to(folder / "nowhere")


def _symlink_to_a_fifo(folder: Path) -> None:
    os.mkfifo(folder.parent / "pipe")
    (folder / "nulib" / "to-pipe").symlink_to(folder.parent / "pipe")


@pytest.mark.parametrize(
    ("plant", "name", "kind"),
    [
        (_symlink, "nulib/link", "symbolic link"),
        (_folder_symlink, "outside", "symbolic link"),
        (_fifo, "nulib/lib/pipe", "FIFO"),
        (_socket, "sock", "socket"),
        (_dangling_symlink, "dangling", "symbolic link"),  # a link is never followed, even to see what it is
        (_symlink_to_a_fifo, "nulib/to-pipe", "symbolic link"),
    ],
)
def test_pack_refuses_what_is_not_a_file_or_folder(
    tmp_path: Path, plant: Callable[[Path], None], name: str, kind: str
) -> None:
    folder = make_folder(tmp_path / "src")
    plant(folder)
    with pytest.raises(ArchiveRefused) as info:
        pack(folder)
    assert info.value.reason.startswith(f"{name}: a {kind}")


def test_pack_refuses_what_is_not_a_folder(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "src")
    (tmp_path / "link").symlink_to(folder)
    for path in (folder / "metadata.toml", tmp_path / "link"):
        with pytest.raises(ArchiveRefused, match="not a folder"):
            pack(path)
    with pytest.raises(FileNotFoundError):
        pack(tmp_path / "missing")


# --- digests ---


def test_digests_are_sha256_of_the_bytes(tmp_path: Path) -> None:
    data = os.urandom(2 * MiB + 123)  # more than one block
    (tmp_path / "f").write_bytes(data)
    expected = "sha256:" + hashlib.sha256(data).hexdigest()
    assert digest_bytes(data) == digest_file(tmp_path / "f") == expected
    assert digest_bytes(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# --- unpack ---


def test_round_trip(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "src")
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(pack(folder))
    dest = tmp_path / "cache" / "taskserv" / "demo" / "1.0.0"
    with umask(0o077):  # the modes come from the archive, not from the umask
        unpack(archive, dest, UnpackLimits())
    assert {k: v[:2] for k, v in contents(dest).items()} == {k: v[:2] for k, v in contents(folder).items()}
    modes = {name: mode for name, (_, _, mode) in contents(dest).items()}
    assert modes["install.sh"] == modes["nulib"] == modes["empty"] == 0o755
    assert modes["metadata.toml"] == modes["nulib/lib/ünïcode.txt"] == 0o644
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert tree_digest(dest) == tree_digest(folder)
    assert os.listdir(dest.parent) == ["1.0.0"]  # no temporary folder left


def test_unpack_never_replaces_what_is_there(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(pack(make_folder(tmp_path / "src")))
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "keep").write_text("mine")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for dest in (tmp_path / "dest", tmp_path / "dangling"):
        with pytest.raises(FileExistsError):
            unpack(archive, dest, UnpackLimits())
    assert os.listdir(tmp_path / "dest") == ["keep"]
    assert not (tmp_path / "nowhere").exists()


def tar_gz(*members: tuple[tarfile.TarInfo, bytes], pax: bool = True) -> bytes:
    """A hand-made archive: each member as given, whatever it claims."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return gzip.compress(raw.getvalue())


def member(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", **attrs: object
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if info.isreg() else 0
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


OK = member("ok.txt")  # written before the bad member, so there is something to clean up


def _huge_pax_header() -> tuple[tarfile.TarInfo, bytes]:
    info, data = member("big-header")
    info.pax_headers = {"comment": "x" * (2 * MiB)}
    return info, data


def _not_gzip() -> bytes:
    return b"this is not a gzip file at all\n" * 10


def _gzip_not_tar() -> bytes:
    return gzip.compress(os.urandom(4096))


def _truncated() -> bytes:
    good = tar_gz(OK, member("second.txt", data=os.urandom(50_000)))
    return good[: len(good) // 2]


def _without_end_blocks() -> bytes:
    raw = gzip.decompress(tar_gz(OK, member("second.txt")))
    return gzip.compress(raw[: 4 * tarfile.BLOCKSIZE])  # the members, and not the zero blocks that end a tar


def _corrupt_header() -> bytes:
    raw = bytearray(gzip.decompress(tar_gz(OK, member("second.txt"), member("third.txt"))))
    raw[2 * tarfile.BLOCKSIZE + 10] ^= 0xFF  # in the second member's name: its checksum no longer matches
    return gzip.compress(bytes(raw))


def _data_after_the_end() -> bytes:
    raw = gzip.decompress(tar_gz(OK))
    return gzip.compress(raw + b"hidden" + bytes(tarfile.BLOCKSIZE))


def _bad_crc() -> bytes:
    data = bytearray(tar_gz(OK))
    data[-8] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        (lambda: tar_gz(OK, member("../x")), "../x: a name with a '..' part"),
        (lambda: tar_gz(OK, member("a/../../x")), "a/../../x: a name with a '..' part"),
        (lambda: tar_gz(OK, member("/etc/abs")), "/etc/abs: an absolute name"),
        (lambda: tar_gz(OK, member("link", tarfile.SYMTYPE, linkname="/etc/passwd")), "link: a symbolic link"),
        (lambda: tar_gz(OK, member("inside", tarfile.SYMTYPE, linkname="ok.txt")), "inside: a symbolic link"),
        (lambda: tar_gz(OK, member("hard", tarfile.LNKTYPE, linkname="ok.txt")), "hard: a hard link"),
        (lambda: tar_gz(OK, member("tty", tarfile.CHRTYPE, devmajor=5, devminor=0)), "tty: a character device"),
        (lambda: tar_gz(OK, member("sda", tarfile.BLKTYPE, devmajor=8, devminor=0)), "sda: a block device"),
        (lambda: tar_gz(OK, member("pipe", tarfile.FIFOTYPE)), "pipe: a FIFO"),
        (lambda: tar_gz(OK, member("contiguous", tarfile.CONTTYPE)), "contiguous: a contiguous file"),
        (lambda: tar_gz(OK, member("ok.txt")), "ok.txt: a duplicate name"),
        (lambda: tar_gz(OK, member("./ok.txt")), "ok.txt: a duplicate name"),
        (lambda: tar_gz(OK, member("d", tarfile.DIRTYPE), member("d", tarfile.DIRTYPE)), "d: a duplicate name"),
        (lambda: tar_gz(OK, member("ok.txt/inner")), "ok.txt/inner: its folder ok.txt is a file"),
        (lambda: tar_gz(OK, member("d/f"), member("d")), "d: a file where the archive already has a folder"),
        (lambda: tar_gz(OK, member(".")), "'.': a file without a name"),
        (lambda: tar_gz(OK, member("x" * 256)), "x" * 256 + ": a name no file system takes"),
        (lambda: tar_gz(OK, member("bad-\udcff-name")), "bad-?-name: the name is not UTF-8"),
        (lambda: tar_gz(OK, _huge_pax_header()), f"a header of {2 * MiB + 512} bytes"),
        (_not_gzip, "corrupt or truncated archive: Not a gzipped file"),
        (_gzip_not_tar, "corrupt or truncated archive"),
        (lambda: b"", "corrupt or truncated archive: empty file"),
        (_truncated, "corrupt or truncated archive: Compressed file ended before the end-of-stream marker"),
        (_without_end_blocks, "it ends without a proper end-of-archive block"),
        (_corrupt_header, "it ends without a proper end-of-archive block"),
        (_data_after_the_end, "corrupt archive: data after its end-of-archive block"),
        (_bad_crc, "corrupt or truncated archive: CRC check failed"),
    ],
)
def test_unpack_refuses_a_hostile_or_broken_archive(tmp_path: Path, archive: Callable[[], bytes], reason: str) -> None:
    path = tmp_path / "in" / "a.tar.gz"
    path.parent.mkdir()
    path.write_bytes(archive())
    with pytest.raises(ArchiveRefused) as info:
        unpack(path, tmp_path / "out" / "dest", UnpackLimits())
    assert reason in info.value.reason
    assert os.listdir(tmp_path / "out") == []  # neither the destination nor a temporary folder
    assert sorted(os.listdir(tmp_path)) == ["in", "out"]  # nothing written beside it either


def _zeros(size: int) -> io.RawIOBase:
    """`size` zero bytes, read without holding them."""

    class Zeros(io.RawIOBase):
        left = size

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
            count = min(len(buffer), self.left)
            buffer[:count] = bytes(count)
            self.left -= count
            return count

    return Zeros()


def test_a_gzip_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    """300 MiB of zeros compress to a few hundred KiB: the size in the header is what is refused, before any of
    it is written."""
    raw = tmp_path / "bomb.tar.gz"
    with (
        gzip.GzipFile(raw, mode="wb", compresslevel=1) as compressed,
        tarfile.open(fileobj=compressed, mode="w") as tar,
    ):
        tar.addfile(OK[0], io.BytesIO(OK[1]))
        info = tarfile.TarInfo("zeros")
        info.size = 300 * MiB
        tar.addfile(info, _zeros(info.size))
    assert raw.stat().st_size < 2 * MiB
    with pytest.raises(ArchiveRefused) as info_:
        unpack(raw, tmp_path / "out" / "dest", UnpackLimits())
    assert info_.value.reason == f"zeros: the files add up to more than the limit of {256 * MiB} bytes"
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        (UnpackLimits(max_files=3), "d/3: more than 3 members"),
        (UnpackLimits(max_unpacked_bytes=25_000), "d/2: the files add up to more than the limit of 25000 bytes"),
        (UnpackLimits(max_archive_bytes=1000), "more than the limit of 1000"),
    ],
)
def test_unpack_keeps_to_its_limits(tmp_path: Path, limits: UnpackLimits, reason: str) -> None:
    files = [member(f"d/{i}", data=os.urandom(10_000)) for i in range(4)]
    path = tmp_path / "a.tar.gz"
    path.write_bytes(tar_gz(*files))
    with pytest.raises(ArchiveRefused) as info:
        unpack(path, tmp_path / "out" / "dest", limits)
    assert reason in info.value.reason
    assert os.listdir(tmp_path / "out") == []
    unpack(path, tmp_path / "out" / "dest", UnpackLimits(max_files=4, max_unpacked_bytes=40_000))
    assert sorted(os.listdir(tmp_path / "out" / "dest" / "d")) == ["0", "1", "2", "3"]


def test_unpack_counts_what_it_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Should a member's data ever be longer than its header says, the copy stops at the header's size."""
    path = tmp_path / "a.tar.gz"
    path.write_bytes(tar_gz(OK))
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, member: io.BytesIO(b"x" * 5000))
    with pytest.raises(ArchiveRefused) as info:
        unpack(path, tmp_path / "out" / "dest", UnpackLimits())
    assert info.value.reason == "ok.txt: more data than its header says (1 bytes)"
    assert os.listdir(tmp_path / "out") == []


def test_unpack_takes_what_other_tars_write(tmp_path: Path) -> None:
    """GNU tar's "./" entries, folders only implied by their files, a GNU long name, modes of any kind."""
    path = tmp_path / "a.tar.gz"
    path.write_bytes(
        tar_gz(
            member("./", tarfile.DIRTYPE, mode=0o700),
            member("./run", data=b"#!/bin/sh\n", mode=0o4751),
            member("./deep/er/file", data=b"data", mode=0o666),
            member("./" + "n" * 150, data=b"long"),
            pax=False,
        )
    )
    dest = tmp_path / "out"
    unpack(path, dest, UnpackLimits())
    assert contents(dest) == {
        "deep": ("dir", b"", 0o755),
        "deep/er": ("dir", b"", 0o755),
        "deep/er/file": ("file", b"data", 0o644),
        "n" * 150: ("file", b"long", 0o644),
        "run": ("file", b"#!/bin/sh\n", 0o755),
    }


# --- names that only a file system would refuse, and what follows the end-of-archive block ---


def pax_named(name: str, kind: bytes = tarfile.REGTYPE) -> tuple[tarfile.TarInfo, bytes]:
    """A member whose name is in a PAX header, where a NUL byte survives (a tar header's name field ends at one)."""
    info, data = member("placeholder", kind)
    info.pax_headers = {"path": name}
    return info, data


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ((OK, pax_named("a\0b")), "a\0b: a name no file system takes"),
        ((OK, pax_named("d\0/x")), "d\0/x: a name no file system takes"),
        ((OK, pax_named("d/x\0", tarfile.DIRTYPE)), "d/x\0: a name no file system takes"),
        ((OK, member("d/x"), member("d//x")), "d/x: a duplicate name"),
        ((OK, member("d//x"), member("d/x/y")), "d/x/y: its folder d/x is a file"),
        ((OK, member("d/e"), member("d/e/f/g")), "d/e/f/g: its folder d/e is a file"),
        ((OK, member("d/e"), member("d/e/f", tarfile.DIRTYPE)), "d/e/f: its folder d/e is a file"),
        ((OK, member("d/e/f/g"), member("d/e")), "d/e: a file where the archive already has a folder"),
        ((OK, member("d/e/f/g"), member("d")), "d: a file where the archive already has a folder"),
    ],
    ids=[
        "nul",
        "nul-in-folder",
        "nul-folder",
        "d//x-duplicate",
        "d//x-then-below",
        "file-then-folder-2",
        "file-then-dir-member",
        "folder-then-file-2",
        "folder-then-file-3",
    ],
)
def test_a_name_no_folder_can_hold_is_refused_not_an_os_error(
    tmp_path: Path, members: tuple[tuple[tarfile.TarInfo, bytes], ...], reason: str
) -> None:
    path = tmp_path / "in" / "a.tar.gz"
    path.parent.mkdir()
    path.write_bytes(tar_gz(*members))
    with pytest.raises(ArchiveRefused) as info:
        unpack(path, tmp_path / "out" / "dest", UnpackLimits())
    assert info.value.reason == reason
    assert os.listdir(tmp_path / "out") == []  # the half-made folder is pruned


def test_an_empty_part_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "a.tar.gz"
    path.write_bytes(tar_gz(member("d//x", data=b"one"), member("e/./y/", tarfile.DIRTYPE)))
    unpack(path, tmp_path / "out", UnpackLimits())
    assert contents(tmp_path / "out") == {
        "d": ("dir", b"", 0o755),
        "d/x": ("file", b"one", 0o644),
        "e": ("dir", b"", 0o755),
        "e/y": ("dir", b"", 0o755),
    }


def test_an_os_error_from_a_name_is_refused_should_a_check_miss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name checks come first; behind them, what the file system refuses for a name is still a refusal."""
    from service.registry import archive

    monkeypatch.setattr(archive, "_parts", lambda name: [p for p in name.split("/") if p not in ("", ".")])
    cases = [
        ((OK, pax_named("a\0b")), "a\0b: embedded null byte"),
        ((OK, pax_named("d\0/x")), "d\0/x: embedded null byte"),
    ]
    refused_each(tmp_path, cases)
    monkeypatch.setattr(tarfile, "data_filter", lambda member, path: member)  # and the second opinion too
    cases = [
        ((OK, pax_named("a\0b")), "a\0b: cannot be written (ValueError)"),
        ((OK, pax_named("d\0/x")), "d\0/x: cannot be written (ValueError)"),
        ((OK, pax_named("d\0/x", tarfile.DIRTYPE)), "d\0/x: cannot be written (ValueError)"),
    ]
    refused_each(tmp_path, cases)


def refused_each(tmp_path: Path, cases: Sequence[tuple[tuple[tuple[tarfile.TarInfo, bytes], ...], str]]) -> None:
    for members, reason in cases:
        path = tmp_path / "a.tar.gz"
        path.write_bytes(tar_gz(*members))
        with pytest.raises(ArchiveRefused) as info:
            unpack(path, tmp_path / "out" / "dest", UnpackLimits())
        assert info.value.reason == reason
        assert os.listdir(tmp_path / "out") == []


def _after_the_end(extra: int) -> bytes:
    """OK's tar up to and with its first zero block, then `extra` zero bytes."""
    raw = gzip.decompress(tar_gz(OK))
    end = 3 * tarfile.BLOCKSIZE  # OK's header and data, then the zero block the walk ends at
    assert raw[2 * tarfile.BLOCKSIZE : end] == bytes(tarfile.BLOCKSIZE)
    return gzip.compress(raw[:end] + bytes(extra))


@pytest.mark.parametrize(("extra", "taken"), [(0, True), (MiB, True), (MiB + 1, False), (2 * MiB, False)])
def test_zeros_after_the_end_are_bounded(tmp_path: Path, extra: int, taken: bool) -> None:
    path = tmp_path / "a.tar.gz"
    path.write_bytes(_after_the_end(extra))
    if taken:
        unpack(path, tmp_path / "out" / "dest", UnpackLimits())
        assert os.listdir(tmp_path / "out" / "dest") == ["ok.txt"]
        return
    with pytest.raises(ArchiveRefused) as info:
        unpack(path, tmp_path / "out" / "dest", UnpackLimits())
    assert info.value.reason == "corrupt archive: data after its end-of-archive block"
    assert os.listdir(tmp_path / "out") == []


def test_the_data_after_the_end_is_read_a_block_at_a_time(tmp_path: Path) -> None:
    """64 MiB of zeros after the end (a few dozen KiB compressed): refused without holding them in memory."""
    path = tmp_path / "a.tar.gz"
    path.write_bytes(_after_the_end(64 * MiB))
    tracemalloc.start()
    try:
        with pytest.raises(ArchiveRefused, match="data after its end-of-archive block"):
            unpack(path, tmp_path / "out" / "dest", UnpackLimits())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB


# --- pack: what is read is what was checked; modes; the bytes pinned ---


def _swap_after_the_walk(monkeypatch: pytest.MonkeyPatch, swap: Callable[[], None]) -> None:
    from service.registry import archive

    walk = archive._walk

    def walk_then_swap(fd: int, prefix: str) -> list[tuple[str, bool]]:
        found = walk(fd, prefix)
        if prefix == "":
            swap()
        return found

    monkeypatch.setattr(archive, "_walk", walk_then_swap)


def test_a_file_swapped_for_a_symlink_after_the_walk_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_folder(tmp_path / "src")
    secret = tmp_path / "secret"
    secret.write_bytes(b"the target's contents")

    def swap() -> None:
        (folder / "metadata.toml").unlink()
        (folder / "metadata.toml").symlink_to(secret)

    _swap_after_the_walk(monkeypatch, swap)
    with pytest.raises(ArchiveRefused) as info:
        pack(folder)
    assert info.value.reason == "metadata.toml: a symbolic link (only regular files and folders are packed)"


def test_a_file_swapped_for_a_fifo_after_the_walk_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opened without blocking: a FIFO with no writer would otherwise hang the open."""
    folder = make_folder(tmp_path / "src")

    def swap() -> None:
        (folder / "metadata.toml").unlink()
        os.mkfifo(folder / "metadata.toml")

    _swap_after_the_walk(monkeypatch, swap)
    with pytest.raises(ArchiveRefused) as info:
        pack(folder)
    assert info.value.reason == "metadata.toml: a FIFO (only regular files and folders are packed)"


def _to_link(path: Path, target: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.symlink_to(target)


def _to_fifo(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    os.mkfifo(path)


def _to_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _to_file(path: Path) -> None:
    shutil.rmtree(path)
    path.write_text("a file now")


@pytest.mark.parametrize(
    ("swap", "reason"),
    [
        (lambda f: _to_link(f / "nulib", f.parent / "outside"), "nulib: a symbolic link"),
        (lambda f: _to_link(f / "nulib" / "lib", f.parent / "outside"), "nulib/lib: a symbolic link"),
        (lambda f: _to_fifo(f / "nulib"), "nulib: a FIFO"),
        (lambda f: _to_folder(f / "metadata.toml"), "metadata.toml: no longer a file"),
        (lambda f: _to_file(f / "nulib" / "lib"), "nulib/lib: no longer a folder"),
        (lambda f: (f / "metadata.toml").unlink(), "metadata.toml: cannot be read (No such file or directory)"),
        (lambda f: shutil.rmtree(f / "nulib"), "nulib: cannot be read (No such file or directory)"),
    ],
    ids=[
        "folder-to-link",
        "inner-folder-to-link",
        "folder-to-fifo",
        "file-to-folder",
        "folder-to-file",
        "file-gone",
        "folder-gone",
    ],
)
def test_a_folder_changed_after_the_walk_is_refused_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: Callable[[Path], None], reason: str
) -> None:
    """A file is opened from the packed folder down one part at a time: a folder on its way swapped for a link
    is refused like a file swapped for one, and what is outside (same names, other contents) is never packed."""
    folder = make_folder(tmp_path / "src")
    outside = make_folder(tmp_path / "outside")
    for path in outside.rglob("*"):
        if path.is_file():
            path.write_text("outside")
    _swap_after_the_walk(monkeypatch, lambda: swap(folder))
    before = open_descriptors()
    with pytest.raises(ArchiveRefused) as info:
        pack(folder)
    assert info.value.reason.startswith(reason)
    assert open_descriptors() == before


def open_descriptors() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


def test_a_folder_swapped_for_a_link_during_the_walk_is_not_walked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the walk's look at a folder and its opening: the folder is opened without following a link."""
    from service.registry import archive

    src = make_folder(tmp_path / "src")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("outside")
    real = archive._open
    opened: list[str] = []

    def swap_then_open(parent: int, part: str, name: str, folder: bool) -> int:
        opened.append(part)
        if opened == ["nulib"]:  # the walk's opening of it, before any file is added
            _to_link(src / "nulib", tmp_path / "outside")
        return real(parent, part, name, folder=folder)

    monkeypatch.setattr(archive, "_open", swap_then_open)
    with pytest.raises(ArchiveRefused) as info:
        pack(src)
    assert info.value.reason == "nulib: a symbolic link (only regular files and folders are packed)"


def test_pack_leaves_no_file_open(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "src")
    before = open_descriptors()
    pack(folder)
    _fifo(folder)
    with pytest.raises(ArchiveRefused):
        pack(folder)
    assert open_descriptors() == before


@pytest.mark.parametrize(
    ("mode", "packed"),
    [(0o646, 0o644), (0o645, 0o755), (0o654, 0o755), (0o744, 0o755), (0o600, 0o644), (0o777, 0o755)],
    ids=lambda value: f"{value:o}",
)
def test_any_execute_bit_packs_as_0o755_and_none_as_0o644(tmp_path: Path, mode: int, packed: int) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"data")
    (tmp_path / "src" / "f").chmod(mode)
    with tarfile.open(fileobj=io.BytesIO(pack(tmp_path / "src")), mode="r:gz") as tar:
        (info,) = tar.getmembers()
    assert (info.name, info.mode, info.size) == ("f", packed, 4)


def test_the_bytes_of_a_fixed_folder_are_pinned(tmp_path: Path) -> None:
    """Reproducibility across Pythons and tar or gzip defaults: should these change, published digests would."""
    folder = tmp_path / "src"
    (folder / "nulib" / "lib").mkdir(parents=True)
    (folder / "empty").mkdir()
    (folder / "metadata.toml").write_text('name = "demo"\nversion = "1.0.0"\n')
    (folder / "nulib" / "mod.nu").write_text("export def main [] { 1 }\n")
    (folder / "nulib" / "lib" / "ünïcode.txt").write_bytes(bytes(range(256)))
    (folder / ("long-" * 30 + ".txt")).write_text("a name longer than a tar header holds\n")
    (folder / "install.sh").write_text("#!/bin/sh\necho installed\n")
    for path, mode in [("install.sh", 0o750), ("metadata.toml", 0o646), ("nulib/mod.nu", 0o645)]:
        (folder / path).chmod(mode)
    data = pack(folder)
    assert hashlib.sha256(gzip.decompress(data)).hexdigest() == TAR_SHA256
    assert hashlib.sha256(data).hexdigest() == PACK_SHA256


TAR_SHA256 = "a43657be3cac76f0c8897e6ccadbccd114b5798ed81e544e024933af71709c08"
PACK_SHA256 = "e161d566057c6d84cbeae0185a1ba833148bc71d99ab0dd84f7f75e20b6052e6"


# --- edges the mutation run showed untested ---


def test_kinds_of_file_are_named() -> None:
    from service.registry.archive import _kind

    assert _kind(stat.S_IFCHR | 0o600) == "a character device"
    assert _kind(stat.S_IFBLK | 0o600) == "a block device"
    assert _kind(0o170000) == "a file of mode 170000"  # no kind stat knows


def test_unpack_writes_into_a_hidden_sibling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.registry import archive

    seen: list[Path] = []
    real = archive._extract

    def extract(stream: gzip.GzipFile, into: Path, limits: UnpackLimits) -> None:
        seen.append(into)
        real(stream, into, limits)

    monkeypatch.setattr(archive, "_extract", extract)
    path = tmp_path / "a.tar.gz"
    path.write_bytes(tar_gz(OK))
    unpack(path, tmp_path / "out" / "dest", UnpackLimits())
    (into,) = seen
    assert into.parent == tmp_path / "out" and into.name.startswith(".dest.")
    assert os.listdir(tmp_path / "out") == ["dest"]


def test_unpack_says_what_exists(tmp_path: Path) -> None:
    path = tmp_path / "a.tar.gz"
    path.write_bytes(tar_gz(OK))
    (tmp_path / "dest").mkdir()
    with pytest.raises(FileExistsError) as info:
        unpack(path, tmp_path / "dest", UnpackLimits())
    assert str(info.value) == f"{tmp_path / 'dest'} already exists"


def test_limits_are_inclusive(tmp_path: Path) -> None:
    """An archive of exactly the limit's size, files adding up to exactly the limit (folders count nothing), and a
    name part of exactly 255 bytes are taken."""
    path = tmp_path / "a.tar.gz"
    path.write_bytes(
        tar_gz(
            member("d", tarfile.DIRTYPE),
            member("d/e", tarfile.DIRTYPE),
            member("d/e/f", data=b"abc"),
            member("x" * 255, data=b""),
        )
    )
    limits = UnpackLimits(max_archive_bytes=path.stat().st_size, max_unpacked_bytes=3, max_files=4)
    unpack(path, tmp_path / "out", limits)
    assert contents(tmp_path / "out")["d/e/f"] == ("file", b"abc", 0o644)
    assert contents(tmp_path / "out")["x" * 255] == ("file", b"", 0o644)


def test_a_file_of_many_blocks_round_trips(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 17)
    path = tmp_path / "a.tar.gz"
    path.write_bytes(tar_gz(member("big", data=data), OK))
    unpack(path, tmp_path / "out", UnpackLimits())
    assert (tmp_path / "out" / "big").read_bytes() == data


def test_unpack_counts_short_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.tar.gz"
    path.write_bytes(tar_gz(OK))
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, member: io.BytesIO(b""))
    with pytest.raises(ArchiveRefused) as info:
        unpack(path, tmp_path / "out" / "dest", UnpackLimits())
    assert info.value.reason == "ok.txt: 0 bytes where its header says 1"
    assert os.listdir(tmp_path / "out") == []


def _x_after_the_end() -> bytes:
    """Not zeros after the end: an "X" is no more a zero than any other byte."""
    return gzip.compress(gzip.decompress(_after_the_end(0)) + b"XXXX")


def _unknown_type() -> bytes:
    return tar_gz(OK, member("odd", b"Z"))


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        (_without_end_blocks, "corrupt or truncated archive: it ends without a proper end-of-archive block"),
        (_x_after_the_end, "corrupt archive: data after its end-of-archive block"),
        (_unknown_type, "odd: a member of type b'Z' (only regular files and folders are unpacked)"),
    ],
    ids=["no-end-block", "x-after-the-end", "unknown-type"],
)
def test_reasons_are_exact(tmp_path: Path, archive: Callable[[], bytes], reason: str) -> None:
    path = tmp_path / "a.tar.gz"
    path.write_bytes(archive())
    with pytest.raises(ArchiveRefused) as info:
        unpack(path, tmp_path / "out" / "dest", UnpackLimits())
    assert info.value.reason == reason
    assert os.listdir(tmp_path / "out") == []


def test_a_folder_counts_nothing_whatever_its_header_says(tmp_path: Path) -> None:
    path = tmp_path / "a.tar.gz"
    path.write_bytes(tar_gz(member("d", tarfile.DIRTYPE, size=100), member("d/f", data=b"abc")))
    unpack(path, tmp_path / "out", UnpackLimits(max_unpacked_bytes=3))
    assert contents(tmp_path / "out") == {"d": ("dir", b"", 0o755), "d/f": ("file", b"abc", 0o644)}


def test_a_path_too_long_for_the_file_system_is_refused(tmp_path: Path) -> None:
    """Each part within 255 bytes, the whole over the 4096 of a path: what mkdir then says is a refusal, and the
    half-made folder is pruned as for any other."""
    long = "/".join(["p" * 255] * 17)
    path = tmp_path / "in" / "a.tar.gz"
    path.parent.mkdir()
    path.write_bytes(tar_gz(OK, member(long)))
    with pytest.raises(ArchiveRefused) as info:
        unpack(path, tmp_path / "out" / "dest", UnpackLimits())
    assert info.value.reason == f"{long}: a name too long for this file system"
    assert os.listdir(tmp_path / "out") == []


def test_a_full_disk_is_not_the_archive_s_fault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An OS error that no name causes is the caller's to see, as it is (the archive may be fine)."""
    from service.registry import archive

    def full(source: object, path: Path, name: str, member: tarfile.TarInfo) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(archive, "_write", full)
    path = tmp_path / "a.tar.gz"
    path.write_bytes(tar_gz(OK))
    with pytest.raises(OSError) as info:
        unpack(path, tmp_path / "out" / "dest", UnpackLimits())
    assert info.type is OSError and info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path / "out") == []


def state(path: Path) -> tuple[str, object]:
    if path.is_symlink():
        return ("link", os.readlink(path))
    if path.is_dir():
        return ("folder", contents(path))
    return ("file", path.read_bytes())


@pytest.mark.parametrize(
    "make",
    [
        lambda dest: (dest.mkdir(), (dest / "theirs").write_text("theirs")),
        lambda dest: dest.write_text("theirs"),
        lambda dest: dest.symlink_to(dest.parent / "nowhere"),
    ],
    ids=["folder", "file", "dangling-link"],
)
def test_a_destination_made_while_unpacking_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: Callable[[Path], object]
) -> None:
    """Another process may unpack the same release into the same folder: whoever comes second gets
    FileExistsError (which the caller takes as "already there"), and what is there is left as it is."""
    from service.registry import archive

    dest = tmp_path / "out" / "dest"
    real = archive._extract
    made: list[tuple[str, object]] = []

    def extract_then_make(stream: gzip.GzipFile, into: Path, limits: UnpackLimits) -> None:
        real(stream, into, limits)
        make(dest)
        made.append(state(dest))

    monkeypatch.setattr(archive, "_extract", extract_then_make)
    path = tmp_path / "a.tar.gz"
    path.write_bytes(tar_gz(OK))
    with pytest.raises(FileExistsError) as info:
        unpack(path, dest, UnpackLimits())
    assert str(info.value) == f"{dest} already exists"
    assert os.listdir(tmp_path / "out") == ["dest"]  # no temporary folder left beside it
    assert [state(dest)] == made


def test_a_file_is_digested_a_block_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "big"
    with path.open("wb") as file:
        for _ in range(32):
            file.write(bytes(MiB))
    tracemalloc.start()
    try:
        digest = digest_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest == "sha256:" + hashlib.sha256(bytes(32 * MiB)).hexdigest()
    assert peak < 8 * MiB


# --- the rest of what the mutation run showed untested ---


def test_an_empty_extended_header_is_taken(tmp_path: Path) -> None:
    """A PAX header of no bytes: tarfile reads 0 bytes for it, which is not a header too big to read."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        header = tarfile.TarInfo("pax")
        header.type = tarfile.XHDTYPE
        tar.addfile(header)
        tar.addfile(OK[0], io.BytesIO(OK[1]))
    path = tmp_path / "a.tar.gz"
    path.write_bytes(gzip.compress(raw.getvalue()))
    unpack(path, tmp_path / "out", UnpackLimits())
    assert contents(tmp_path / "out") == {"ok.txt": ("file", b"x", 0o644)}


def test_a_clean_up_that_fails_does_not_hide_why_the_archive_was_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the hidden folder be gone already when it is cleaned up, the caller still hears the refusal."""
    from service.registry import archive

    def remove_then_refuse(stream: gzip.GzipFile, into: Path, limits: UnpackLimits) -> None:
        shutil.rmtree(into)
        raise ArchiveRefused("refused for a test")

    monkeypatch.setattr(archive, "_extract", remove_then_refuse)
    path = tmp_path / "a.tar.gz"
    path.write_bytes(tar_gz(OK))
    with pytest.raises(ArchiveRefused) as info:
        unpack(path, tmp_path / "out" / "dest", UnpackLimits())
    assert info.value.reason == "refused for a test"
    assert os.listdir(tmp_path / "out") == []


def test_a_file_is_private_until_its_data_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Created 0600 whatever the umask, given its mode (0644 or 0755) only once complete."""
    seen: list[int] = []
    fchmod = os.fchmod

    def spy(fd: int, mode: int) -> None:
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        fchmod(fd, mode)

    monkeypatch.setattr(os, "fchmod", spy)
    path = tmp_path / "a.tar.gz"
    path.write_bytes(tar_gz(OK, member("run", data=b"#!/bin/sh\n", mode=0o755)))
    with umask(0):
        unpack(path, tmp_path / "out", UnpackLimits())
    assert seen == [0o600, 0o600]
    assert contents(tmp_path / "out")["run"][2] == 0o755


def test_a_member_is_never_written_through_a_name_that_exists(tmp_path: Path) -> None:
    """Behind the name checks: the open itself neither follows a link nor writes into a file already there."""
    from service.registry.archive import _write

    target = tmp_path / "target"
    target.write_bytes(b"mine")
    (tmp_path / "link").symlink_to(target)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for existing in (target, tmp_path / "link", tmp_path / "dangling"):
        with pytest.raises(FileExistsError):
            _write(io.BytesIO(OK[1]), existing, "ok.txt", OK[0])
    assert target.read_bytes() == b"mine"
    assert not (tmp_path / "nowhere").exists()
