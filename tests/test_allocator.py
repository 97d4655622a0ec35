"""keep_freed_blocks: large tensors come from the heap and their memory stays in the process after free."""

import platform
import subprocess
import sys

import pytest

SCRIPT = r"""
import ctypes, torch
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
def mapped_and_heap():
    m = libc.mallinfo2()
    return m.hblkhd, m.arena
from progsae.allocator import keep_freed_blocks
mapped0, heap0 = mapped_and_heap()
t = torch.empty(16 << 20)  # 64 MiB: above glibc's largest default mmap threshold
mapped_default = mapped_and_heap()[0] - mapped0
del t
assert keep_freed_blocks()
mapped1, heap1 = mapped_and_heap()
t = torch.empty(16 << 20)
mapped_after, heap_after = mapped_and_heap()[0] - mapped1, mapped_and_heap()[1] - heap1
del t
heap_kept = mapped_and_heap()[1] - heap1
print(mapped_default >> 20, mapped_after >> 20, heap_after >> 20, heap_kept >> 20)
"""


def _has_mallinfo2() -> bool:
    import ctypes

    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" and hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")


@pytest.mark.skipif(not _has_mallinfo2(), reason="glibc >= 2.33 malloc only")
def test_large_tensors_come_from_the_heap_and_stay_after_free():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    mapped_default, mapped_after, heap_after, heap_kept = map(int, out)
    assert mapped_default >= 64  # by default glibc maps a 64 MiB block on its own
    assert mapped_after < 1 and heap_after >= 48  # after: it comes from the heap (which may have had some room)
    assert heap_kept >= 48  # and the heap keeps it after the tensor is freed
