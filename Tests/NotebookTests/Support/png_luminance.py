#!/usr/bin/env python3
"""Prints `mean_luminance dark_fraction` for an 8-bit RGB/RGBA PNG.

mean_luminance is the WCAG relative luminance (0 black … 1 white) averaged over all
pixels; dark_fraction is the share of pixels with luminance below 0.2. The browser test
uses them to tell a dark-scheme screenshot from a light one. Standard library only: the
PNG decoder is png_stats.py's.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from png_stats import read_png  # noqa: E402


def channel(v):
    v /= 255
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


def main():
    width, height, channels, rows = read_png(sys.argv[1])
    table = [channel(v) for v in range(256)]
    cache, total, dark = {}, 0.0, 0
    for row in rows:
        for x in range(0, width * channels, channels):
            px = row[x:x + 3]
            lum = cache.get(px)
            if lum is None:
                lum = cache[px] = 0.2126 * table[px[0]] + 0.7152 * table[px[1]] + 0.0722 * table[px[2]]
            total += lum
            dark += lum < 0.2
    n = width * height
    print(f"{total / n:.4f} {dark / n:.4f}")


if __name__ == "__main__":
    main()
