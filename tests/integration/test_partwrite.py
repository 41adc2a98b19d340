"""Received chunks written with O_DIRECT on a real ext4 filesystem, through the page cache where refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e import ext4_image, private_mounts, script_in

_SCRIPT = r"""
import ctypes, ctypes.util, errno, hashlib, json, logging, mmap, os, sys
from pathlib import Path
from collector.pipeline.files import FileStore

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
disk, ram = Path(sys.argv[1]), Path(sys.argv[2])
CHUNK = 1 << 20


libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mmap.restype = ctypes.c_void_p
c = ctypes
libc.mmap.argtypes = [c.c_void_p, c.c_size_t, c.c_int, c.c_int, c.c_int, c.c_long]


def resident(path):
    # Bytes of the file in the page cache: mincore(2) over a mapping that is never touched.
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        vec = (ctypes.c_ubyte * ((size + 4095) // 4096))()
        assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) == 0
        libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec) * 4096


def send(store, run, content, offsets):
    sha = hashlib.sha256(content).hexdigest()
    store.offer(run, sha, len(content))
    for start, end in zip(offsets, offsets[1:]):
        status = store.chunk(run, sha, start, content[start:end])
    return sha, status


def chunks(size, first=0):
    return [0, *range(first or CHUNK, size, CHUNK), size] if first else [*range(0, size, CHUNK), size]


out = {}
content = os.urandom(4 * CHUNK + 100)

# Whole chunks and a short tail: the disk takes them from the aligned buffer, not the page cache.
store = FileStore(disk / "direct")
sha, status = send(store, "r", content, chunks(len(content)))
out["direct"] = [status.complete, store.direct, resident(store.path("r", sha)),
                 store.path("r", sha).read_bytes() == content]

# The same through the page cache, to show the measure tells the two apart.
cached = FileStore(disk / "cached", direct=False)
sha, status = send(cached, "r", content, chunks(len(content)))
out["cached"] = [status.complete, cached.direct, resident(cached.path("r", sha))]

# A chunk resumed at an odd offset: its unaligned head and tail go through the page cache.
odd = FileStore(disk / "odd")
sha, status = send(odd, "r", content, chunks(len(content), first=1000))
out["odd"] = [status.complete, odd.direct, resident(odd.path("r", sha)),
              odd.path("r", sha).read_bytes() == content]

# The disk fills part way through a file, then space returns.
big = os.urandom(8 * CHUNK)
sha = hashlib.sha256(big).hexdigest()
full = FileStore(disk / "full")
full.offer("r", sha, len(big))
ballast = disk / "ballast"
with ballast.open("wb", buffering=0) as f:
    try:
        while True:
            f.write(b"\0" * CHUNK)
    except OSError:
        pass
os.truncate(ballast, max(0, ballast.stat().st_size - 3 * CHUNK))
have, failed = 0, None
for offset in range(0, len(big), CHUNK):
    try:
        have = full.chunk("r", sha, offset, big[offset:offset + CHUNK]).have
    except OSError as exc:
        failed = errno.errorcode[exc.errno]
        break
part = full.path("r", sha).with_name(sha + ".part")
held = full.offer("r", sha, len(big)).have
out["full"] = [failed, have, held, part.read_bytes()[:held] == big[:held]]
ballast.unlink()
for offset in range(held, len(big), CHUNK):
    status = full.chunk("r", sha, offset, big[offset:offset + CHUNK])
out["full_after"] = [status.complete, full.path("r", sha).read_bytes() == big,
                     full.counters.get("files_complete"), full.counters.get("file_sha256_mismatch")]

# ramfs refuses O_DIRECT: the store goes on through the page cache, and says so once.
ramstore = FileStore(ram / "files")
sha, status = send(ramstore, "r", content, chunks(len(content)))
sha2, status2 = send(ramstore, "r2", content[:3 * CHUNK], chunks(3 * CHUNK))
out["ramfs"] = [status.complete and status2.complete, ramstore.direct,
                ramstore.path("r", sha).read_bytes() == content]
for s in (store, cached, odd, full, ramstore):
    s.close()
print(json.dumps(out))
"""


def test_chunks_go_to_the_disk_directly_and_a_full_disk_or_a_refusing_filesystem_loses_nothing(
    tmp_path: Path,
) -> None:
    disk, ram = tmp_path / "disk", tmp_path / "ram"
    prefix = private_mounts((ext4_image(tmp_path / "disk.img", "40M"), disk), ("-t ramfs ramfs", ram))
    if prefix is None:
        pytest.skip("this machine cannot mount private filesystems (unshare --mount, loop devices)")
    out, stderr = script_in(prefix, _SCRIPT, str(disk), str(ram))
    size = 4 * 1024 * 1024 + 100

    complete, direct, resident, same = out["direct"]
    assert complete
    assert direct
    assert same
    assert resident <= 4096, f"{resident} bytes of a directly written file sit in the page cache"
    complete, direct, resident = out["cached"]
    assert complete
    assert not direct
    assert resident >= size - 4096, (
        "the page-cache store's file is not in the page cache: the measure is blind"
    )
    complete, direct, resident, same = out["odd"]
    assert complete
    assert direct
    assert same
    # Six chunks: each unaligned boundary leaves one page (a tail and the next head) in the cache.
    assert resident <= 6 * 4096, "more than the unaligned heads and tails went through the page cache"

    failed, have, held, intact = out["full"]
    assert failed == "ENOSPC"
    assert held == have, "the store counts bytes that did not land"
    assert 0 < have < 8 * 1024 * 1024
    assert intact
    assert out["full_after"] == [True, True, 1, 0], (
        "the resend after the disk filled did not complete cleanly"
    )

    complete, direct, same = out["ramfs"]
    assert complete
    assert same
    assert not direct, "the store did not notice the filesystem refused O_DIRECT"
    assert stderr.count("refuses O_DIRECT") == 1, stderr
