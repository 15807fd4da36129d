"""Archives keep what a venv needs and refuse everything that could escape the folder."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from workflow_cache.workdir.archive import ArchiveError
from workflow_cache.workdir.archive_extract import unpack
from workflow_cache.workdir.archive_read import TarHeader
from workflow_cache.workdir.archive_write import gnu_header, pack
from workflow_cache.workdir.patterns import PatternError, match_files, validate_patterns

MTIME = 1_700_000_000


def make_tree(root: Path) -> None:
    """A small venv + node_modules lookalike with the awkward bits."""
    (root / "venv/bin").mkdir(parents=True)
    (root / "venv/include").mkdir()  # empty
    (root / "venv/lib/site-packages/pkg").mkdir(parents=True)
    (root / "venv/lib/site-packages/pkg/__init__.py").write_text("VALUE = 42\n")
    (root / "venv/pyvenv.cfg").write_text("home = /usr/bin\n")
    (root / "venv/.gitignore").write_text("*\n")
    tool = root / "venv/bin/tool"
    tool.write_text("#!/bin/sh\necho tool-ran\n")
    tool.chmod(0o755)
    private = root / "venv/lib/private.txt"
    private.write_text("secret")
    private.chmod(0o640)
    (root / "venv/bin/python").symlink_to("/usr/bin/python3")
    (root / "venv/bin/python3").symlink_to("python")
    (root / "node_modules/colors/lib").mkdir(parents=True)
    (root / "node_modules/colors/lib/index.js").write_text("module.exports = 1;\n")
    (root / "node_modules/.bin").mkdir()
    (root / "node_modules/.bin/colors").symlink_to("../colors/lib/index.js")
    long_dir = root / "node_modules" / ("d" * 120)
    long_dir.mkdir()
    (long_dir / ("f" * 120 + ".txt")).write_bytes(os.urandom(3000))
    (root / "node_modules/ünïcode name.txt").write_text("ok")
    (root / "unrelated").mkdir()
    (root / "unrelated/big.bin").write_bytes(b"x" * 1000)
    for path in [*root.rglob("*"), root]:
        if not path.is_symlink():
            os.utime(path, (MTIME, MTIME))


def archive_of(root: Path, patterns: list[str]) -> bytes:
    out = io.BytesIO()
    pack(root, match_files(root, patterns), out)
    return out.getvalue()


def hostile(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> io.BytesIO:
    """A hand-made tar (compressed like ours) with whatever members a test wants."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return io.BytesIO(zstandard.ZstdCompressor(write_checksum=True).compress(raw.getvalue()))


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- patterns ---------------------------------------------------------------------------


def test_patterns_are_normalised() -> None:
    assert validate_patterns(["./venv//", "a/../node_modules/**", "**/*.whl"]) == [
        "venv",
        "node_modules/**",
        "**/*.whl",
    ]


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("/etc/**", "absolute"),
        ("~/x", "absolute"),
        ("../x/**", "escapes"),
        ("a/../../x", "escapes"),
        ("**/../x", "after a wildcard"),
        ("", "empty"),
        ("  ", "empty"),
        (".", "itself"),
    ],
)
def test_bad_patterns_are_named(pattern: str, message: str) -> None:
    with pytest.raises(PatternError, match=message) as info:
        validate_patterns(["venv/**", pattern])
    assert repr(pattern) in str(info.value)


def test_patterns_must_be_a_list_of_strings() -> None:
    with pytest.raises(PatternError, match="list"):
        validate_patterns("venv/**")  # type: ignore[arg-type]
    with pytest.raises(PatternError, match="string"):
        validate_patterns([3])  # type: ignore[list-item]


def test_match_files(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "linked_dir").symlink_to(tmp_path / "unrelated")
    found = [p.as_posix() for p in match_files(tmp_path, ["venv/**"])]
    assert found == sorted(found)
    assert "venv/.gitignore" in found  # dotfiles
    assert "venv/include" in found  # empty directories
    assert "venv/bin/python" in found  # symlinks themselves
    assert not any(p.startswith(("node_modules", "unrelated")) for p in found)
    # A bare directory name keeps the same files as dir/**.
    assert [p.as_posix() for p in match_files(tmp_path, ["venv"])] == ["venv", *found]
    # Symlinked directories are kept as links, never walked.
    everything = [p.as_posix() for p in match_files(tmp_path, ["**"])]
    assert "linked_dir" in everything
    assert not any(p.startswith("linked_dir/") for p in everything)
    assert [p.as_posix() for p in match_files(tmp_path, ["**/index.js"])] == [
        "node_modules/colors/lib/index.js"
    ]
    assert match_files(tmp_path, ["nothing/**"]) == []


# --- round trip -------------------------------------------------------------------------


def test_round_trip_keeps_modes_symlinks_and_mtimes(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    make_tree(src)
    data = archive_of(src, ["venv/**", "node_modules/**"])
    stats = unpack(io.BytesIO(data), dst)

    assert listing(dst) == [p for p in listing(src) if not p.startswith("unrelated")]
    assert stats.files == len([p for p in (dst).rglob("*") if not p.is_dir() or p.is_symlink()])
    tool = dst / "venv/bin/tool"
    assert stat.S_IMODE(tool.stat().st_mode) == 0o755
    assert subprocess.run([tool], capture_output=True, text=True).stdout == "tool-ran\n"
    assert stat.S_IMODE((dst / "venv/lib/private.txt").stat().st_mode) == 0o640
    assert os.readlink(dst / "venv/bin/python") == "/usr/bin/python3"
    assert os.readlink(dst / "venv/bin/python3") == "python"
    assert os.readlink(dst / "node_modules/.bin/colors") == "../colors/lib/index.js"
    assert (dst / "node_modules/.bin/colors").read_text() == "module.exports = 1;\n"
    assert (dst / "venv/include").is_dir()
    assert (dst / "node_modules/ünïcode name.txt").read_text() == "ok"
    assert (dst / "venv/lib/private.txt").stat().st_mtime == MTIME
    assert (dst / "venv/lib").stat().st_mtime == MTIME  # directories too
    assert not any(p.name.startswith(".wfc-unpack-") for p in dst.iterdir())


def test_archives_are_plain_tar_zstd(tmp_path: Path) -> None:
    if not shutil.which("zstd"):
        pytest.skip("zstd command not installed")
    make_tree(tmp_path)
    archive = tmp_path / "a.tar.zst"
    archive.write_bytes(archive_of(tmp_path, ["venv/**"]))
    names = subprocess.run(
        ["tar", "-I", "zstd", "-tf", archive], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "venv/bin/tool" in names


def test_unpack_merges_into_an_existing_folder(tmp_path: Path) -> None:
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    src.mkdir()
    outside.mkdir()
    make_tree(src)
    (dst / "node_modules").mkdir(parents=True)
    (dst / "node_modules/kept.txt").write_text("kept")
    (dst / "input.txt").write_text("input")
    (dst / "venv").symlink_to(outside)  # must be replaced, never written through
    unpack(io.BytesIO(archive_of(src, ["venv/**", "node_modules/**"])), dst)
    assert (dst / "node_modules/kept.txt").read_text() == "kept"
    assert (dst / "input.txt").read_text() == "input"
    assert not (dst / "venv").is_symlink()
    assert (dst / "venv/bin/tool").exists()
    assert list(outside.iterdir()) == []


def test_pack_refuses_paths_outside_root(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match=r"\.\./etc"):
        pack(tmp_path, [Path("../etc/passwd")], io.BytesIO())
    with pytest.raises(ArchiveError, match="disappeared"):
        pack(tmp_path, [Path("gone.txt")], io.BytesIO())


def test_pack_skips_fifos(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "file").write_text("x")
    out = io.BytesIO()
    stats = pack(tmp_path, [Path("file"), Path("pipe")], out)
    assert stats.files == 1
    out.seek(0)
    unpack(out, tmp_path / "dst")
    assert listing(tmp_path / "dst") == ["file"]


# --- hostile archives -------------------------------------------------------------------


def hostile_cases(outside: Path) -> dict[str, list[tuple[tarfile.TarInfo, bytes | None]]]:
    return {
        "absolute name": [(member(str(outside / "evil.txt")), b"pwned")],
        "dot-dot name": [(member("../outside/evil.txt"), b"pwned")],
        "dot-dot inside": [(member("a/../../outside/evil.txt"), b"pwned")],
        "write through absolute symlink": [
            (member("link", tarfile.SYMTYPE, str(outside)), None),
            (member("link/evil.txt"), b"pwned"),
        ],
        "write through relative symlink": [
            (member("link", tarfile.SYMTYPE, "../outside"), None),
            (member("link/evil.txt"), b"pwned"),
        ],
        "write through symlink inside": [
            (member("real", tarfile.DIRTYPE), None),
            (member("link", tarfile.SYMTYPE, "real"), None),
            (member("link/sub/file.txt"), b"sneaky"),
        ],
        "overwrite a symlink": [
            (member("target", tarfile.SYMTYPE, str(outside / "victim.txt")), None),
            (member("target"), b"pwned"),
        ],
        "hard link outside": [(member("hl", tarfile.LNKTYPE, str(outside / "victim.txt")), None)],
        "hard link dot-dot": [(member("hl", tarfile.LNKTYPE, "../outside/victim.txt"), None)],
        "hard link to a symlink": [
            (member("sl", tarfile.SYMTYPE, str(outside)), None),
            (member("hl", tarfile.LNKTYPE, "sl"), None),
            (member("hl/evil.txt"), b"pwned"),
        ],
        "character device": [(member("dev", tarfile.CHRTYPE), None)],
        "block device": [(member("blk", tarfile.BLKTYPE), None)],
        "fifo": [(member("fifo", tarfile.FIFOTYPE), None)],
    }


@pytest.mark.parametrize("case", list(hostile_cases(Path("/x"))))
def test_hostile_archives_are_refused(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("original")
    root = tmp_path / "root"
    root.mkdir()
    (root / "existing.txt").write_text("existing")
    with pytest.raises(ArchiveError):
        unpack(hostile(hostile_cases(outside)[case]), root)
    assert (outside / "victim.txt").read_text() == "original"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert listing(root) == ["existing.txt"]  # nothing partial, no staging left over


def test_hard_link_to_an_extracted_file_is_fine(tmp_path: Path) -> None:
    archive = hostile(
        [(member("a.txt"), b"shared"), (member("sub/b.txt", tarfile.LNKTYPE, "a.txt"), None)]
    )
    unpack(archive, tmp_path)
    assert (tmp_path / "sub/b.txt").read_text() == "shared"
    assert (tmp_path / "sub/b.txt").stat().st_ino == (tmp_path / "a.txt").stat().st_ino


def test_high_mode_bits_are_dropped(tmp_path: Path) -> None:
    info = member("setuid")
    info.mode = 0o4777
    unpack(hostile([(info, b"#!/bin/sh\n")]), tmp_path)
    assert stat.S_IMODE((tmp_path / "setuid").stat().st_mode) == 0o755


# --- corrupt and truncated --------------------------------------------------------------


@pytest.fixture(scope="module")
def good_archive(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    src = tmp_path_factory.mktemp("src")
    make_tree(src)
    for i in range(30):
        (src / f"venv/lib/mod{i}.py").write_bytes(os.urandom(2000) + b"a" * 5000)
    return archive_of(src, ["venv/**", "node_modules/**"])


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_archive_is_refused(tmp_path: Path, good_archive: bytes, fraction: float) -> None:
    cut = good_archive[: int(len(good_archive) * fraction)]
    with pytest.raises(ArchiveError):
        unpack(io.BytesIO(cut), tmp_path)
    assert listing(tmp_path) == []


def test_archive_cut_at_a_member_boundary_is_refused(tmp_path: Path) -> None:
    """A tar that just stops between members looks complete to tarfile: not to us."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = member("a.txt")
        info.size = 512
        tar.addfile(info, io.BytesIO(b"a" * 512))
    body = raw.getvalue()[:1024]  # header + data, no end-of-archive blocks
    data = zstandard.ZstdCompressor(write_checksum=True).compress(body)
    with pytest.raises(ArchiveError, match="truncated"):
        unpack(io.BytesIO(data), tmp_path)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("where", [0.3, 0.6, 0.95])
def test_corrupt_archive_is_refused(tmp_path: Path, good_archive: bytes, where: float) -> None:
    data = bytearray(good_archive)
    at = int(len(data) * where)
    data[at : at + 8] = bytes(b ^ 0x5A for b in data[at : at + 8])
    with pytest.raises(ArchiveError):
        unpack(io.BytesIO(bytes(data)), tmp_path)
    assert listing(tmp_path) == []


def test_garbage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError):
        unpack(io.BytesIO(b"this is not an archive at all" * 100), tmp_path)
    with pytest.raises(ArchiveError):
        unpack(io.BytesIO(b""), tmp_path)
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    ("name", "kind", "mode", "mtime", "size", "linkname"),
    [
        ("venv/bin/python3.11", tarfile.REGTYPE, 0o755, MTIME, 12345, ""),
        ("a", tarfile.REGTYPE, 0o4644, 0, 0, ""),
        ("venv/include", tarfile.DIRTYPE, 0o700, MTIME, 0, ""),
        ("venv/bin/python", tarfile.SYMTYPE, 0o777, MTIME, 0, "/usr/bin/python3"),
        ("ünïcode/名前.txt", tarfile.REGTYPE, 0o644, MTIME, 7, ""),
        ("n" * 100, tarfile.REGTYPE, 0o644, MTIME, 1, ""),
        ("n" * 101, tarfile.REGTYPE, 0o644, MTIME, 1, ""),  # GNU long name
        ("l", tarfile.SYMTYPE, 0o777, MTIME, 0, "t" * 150),  # GNU long link
        ("big", tarfile.REGTYPE, 0o644, MTIME, 9 * 1024**3, ""),  # > 8 GiB
        ("bad\udcff", tarfile.REGTYPE, 0o644, MTIME, 1, ""),  # undecodable byte
    ],
)
def test_fast_headers_match_tarfile(
    name: str, kind: bytes, mode: int, mtime: int, size: int, linkname: str
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.size, info.linkname = kind, mode, mtime, size, linkname
    expected = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    assert gnu_header(name, kind, mode, mtime, size, linkname) == expected


def test_fast_header_parser_agrees_with_tarfile_on_valid_and_damaged_headers() -> None:
    """The struct-based header parser must read (or refuse) exactly what tarfile does."""
    import random

    rnd = random.Random(1234)
    kinds = [
        tarfile.REGTYPE,
        tarfile.AREGTYPE,
        tarfile.DIRTYPE,
        tarfile.SYMTYPE,
        tarfile.LNKTYPE,
        tarfile.CHRTYPE,
        tarfile.FIFOTYPE,
    ]
    blocks: list[bytes] = []
    for i in range(1500):
        info = tarfile.TarInfo("d/" * rnd.randint(0, 60) + f"f{i}" + "/" * (i % 7 == 0))
        info.size, info.mtime = rnd.randint(0, 10**9), rnd.randint(0, 2**33 - 1)
        info.mode, info.uid = rnd.randint(0, 0o7777), rnd.randint(0, 2**21)
        info.type, info.linkname = rnd.choice(kinds), "x" * rnd.randint(0, 99)
        info.uname = "ü" * rnd.randint(0, 10)
        for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT):
            try:
                raw = info.tobuf(fmt, "utf-8", "surrogateescape")
            except ValueError:
                continue
            blocks += [raw[k : k + 512] for k in range(0, len(raw), 512)]
    damaged = []
    for block in blocks[:1500]:
        broken = bytearray(block)
        broken[rnd.randrange(512)] = rnd.randrange(256)
        damaged.append(bytes(broken))
    fields = [
        "name",
        "mode",
        "uid",
        "gid",
        "size",
        "mtime",
        "chksum",
        "type",
        "linkname",
        "uname",
        "gname",
        "devmajor",
        "devminor",
    ]

    def parse(parser, block):
        try:
            info = parser.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            return type(exc)
        return [getattr(info, f) for f in fields]

    for block in [*blocks, *damaged, bytes(512), b"", bytes(100)]:
        assert parse(TarHeader, block) == parse(tarfile.TarInfo, block)


def test_pax_archives_are_refused_and_leave_the_folder_alone(tmp_path: Path) -> None:
    """pack never writes pax headers; an archive that has them is not one of ours."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("caf\u00e9/" + "x" * 120)
        data = b"hello"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    archive = io.BytesIO(zstandard.ZstdCompressor().compress(raw.getvalue()))
    root = tmp_path / "root"
    root.mkdir()
    (root / "kept.txt").write_text("kept")
    with pytest.raises(ArchiveError, match="pax or sparse"):
        unpack(archive, root)
    assert sorted(p.name for p in root.iterdir()) == ["kept.txt"]


def test_long_names_and_links_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    deep = src / ("a" * 90) / ("b" * 90)
    deep.mkdir(parents=True)
    (deep / ("c" * 90 + ".txt")).write_text("deep")
    (src / "link").symlink_to("/" + "t" * 150)
    paths = [p.relative_to(src) for p in sorted(src.rglob("*"))]
    archive = io.BytesIO()
    pack(src, paths, archive)
    archive.seek(0)
    dest = tmp_path / "dest"
    unpack(archive, dest)
    assert (dest / deep.relative_to(src) / ("c" * 90 + ".txt")).read_text() == "deep"
    assert os.readlink(dest / "link") == "/" + "t" * 150
