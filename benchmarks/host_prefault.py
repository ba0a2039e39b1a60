"""Touch N GiB of memory once, on huge pages, before a CPU benchmark on a virtual machine whose host backs
guest memory lazily or takes free memory back (a virtio-balloon with free page reporting, as this project's
Firecracker host has): the first write to such memory faults on the host too, ~100 ms per 64 MiB here, which
would land in the benchmark's rows of fresh outputs. It does not stop the reporting; see
benchmarks/results/cpu/README.md.

    python benchmarks/host_prefault.py 12
"""
import argparse
import mmap
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gib", type=float, help="GiB to touch (leave the benchmark's few GiB free)")
    args = parser.parse_args()
    n = int(args.gib * 2**30)
    start = time.perf_counter()
    memory = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        memory.madvise(mmap.MADV_HUGEPAGE)
    pages = np.frombuffer(memory, dtype=np.uint8)
    for offset in range(0, n, 1 << 28):
        pages[offset:offset + (1 << 28):4096] = 1  # one write per 4 KiB page
    print(f"touched {args.gib:g} GiB in {time.perf_counter() - start:.1f} s")
    del pages
    memory.close()


if __name__ == "__main__":
    main()
