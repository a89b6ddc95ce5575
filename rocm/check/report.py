"""One table from scripts/gpu-check.sh's timing files.

Reads the tab-separated lines of kernel_timing ("kernel ..."), gpu_check time ("route ...",
"copy ...", "mapped ...") and torch_baseline.py ("torch ...") from the files named on the command line (missing files and
other lines are skipped: a step that failed leaves its columns as "-") and prints one row per
(layer, tokens), in the order the kernel timings came.
"""
import sys

COLUMNS = [
    ("layer", 18), ("tokens", 7), ("kernel", 16), ("kernel us", 10), ("thread/token us", 15),
    ("speedup", 8), ("mrh_route us", 12), ("copy us", 8), ("mapped us", 9), ("torch kernel us", 15),
    ("torch trip us", 13), ("trip ratio", 10),
    ("team==thread", 12),
]


def read_rows(paths):
    rows, order = {}, []
    for path in paths:
        try:
            lines = open(path).read().splitlines()
        except OSError:
            continue
        for line in lines:
            f = line.split("\t")
            if len(f) < 4 or f[0] not in ("kernel", "route", "copy", "mapped", "torch"):
                continue
            key = (f[1], int(f[2]))
            if key not in rows:
                rows[key] = {}
                order.append(key)
            rows[key][f[0]] = f[3:]
    return rows, order


def ratio(a, b):
    try:
        return f"{float(a) / float(b):.1f}x"
    except (TypeError, ValueError, ZeroDivisionError):
        return "-"


def format_row(key, r):
    kernel, route, torch = r.get("kernel"), r.get("route"), r.get("torch")
    copy, mapped = r.get("copy"), r.get("mapped")
    cells = [
        key[0], str(key[1]),
        kernel[2] if kernel else "-",
        kernel[0] if kernel else "-",
        kernel[1] if kernel else "-",
        ratio(kernel[1], kernel[0]) if kernel else "-",
        route[0] if route else "-",
        copy[0] if copy else "-",
        mapped[0] if mapped else "-",
        torch[0] if torch else "-",
        torch[1] if torch else "-",
        ratio(torch[1], mapped[0]) if torch and mapped else "-",
        kernel[3] if kernel else "-",
    ]
    return "  ".join(c.rjust(w) if i > 0 else c.ljust(w) for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS)))


def main():
    rows, order = read_rows(sys.argv[1:])
    print("  ".join(n.rjust(w) if i > 0 else n.ljust(w) for i, (n, w) in enumerate(COLUMNS)))
    for key in order:
        print(format_row(key, rows[key]))
    print()
    print("kernel us / thread/token us: mean of back-to-back launches between two events, device-resident fp32")
    print("logits (speedup = thread/token / kernel). Median wall clock of a whole route, host memory in and out:")
    print("mrh_route us = inline data through the stream's mapped pinned staging (read in place), copy us = the")
    print("same with the staging uploaded and downloaded, mapped us = mrh_route_mapped on registered host memory")
    print("(a client's segment: one launch, no copy). torch: eager on the same device, kernel = events around")
    print("back-to-back calls, trip = median wall clock host -> device -> host; trip ratio = torch trip / mapped.")


if __name__ == "__main__":
    main()
