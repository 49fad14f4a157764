#!/usr/bin/env python3
"""Peer benchmark: TheengsDecoder's decodeBLE over an NDJSON advert stream.

Each line is one advert in Theengs' own input shape, e.g.
  {"id":"AA:BB:CC:DD:EE:FF","rssi":-60,"manufacturerdata":"4c000215..."}
  {"id":"...","rssi":-70,"servicedatauuid":"0xfeaa","servicedata":"00e8..."}
Hex must be lower-case (Theengs matches conditions with strncmp), and
servicedatauuid is the 16-bit UUID as "0xfeaa" or "feaa".

Run it with the venv python printed by bench/peers/setup-theengs.
"""
import argparse
import json
import os
import platform
import sys
import time
from importlib.metadata import version

OPTIONAL_KEYS = ("manufacturerdata", "servicedata", "servicedatauuid", "name")


def fail(msg):
    # Exit 2 with one line, not a traceback, so the Rust bench can relay it.
    print(f"theengs.py: {msg}", file=sys.stderr)
    sys.exit(2)


def load(path):
    """Validate every line up front and keep it as the exact string to decode.

    Validation is ours because decodeBLE returns None for bad JSON, which
    would silently count as "not decoded" instead of failing.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"{path}: {e}")
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            advert = json.loads(line)
        except json.JSONDecodeError as e:
            fail(f"{path}:{n}: malformed advert: {e}")
        if (not isinstance(advert, dict) or not isinstance(advert.get("id"), str)
                or type(advert.get("rssi")) is not int
                or any(not isinstance(advert[k], str) for k in OPTIONAL_KEYS if k in advert)):
            fail(f"{path}:{n}: malformed advert: want an object with string id, "
                 f"integer rssi and string {'/'.join(OPTIONAL_KEYS)}")
        lines.append(line)
    if not lines:
        fail(f"{path}: no adverts")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", help="NDJSON file, one advert per line")
    ap.add_argument("--core", type=int, default=max(os.sched_getaffinity(0)),
                    help="CPU to pin to (default: the last allowed one)")
    ap.add_argument("--repeat", type=int, default=1, help="passes over the file")
    ap.add_argument("--json", metavar="OUT", help="write the result as JSON here")
    args = ap.parse_args()
    if args.repeat < 1:
        fail("--repeat must be at least 1")

    try:
        from TheengsDecoder import decodeBLE
    except ImportError as e:
        fail(f"{e} (use the python printed by bench/peers/setup-theengs)")
    try:
        # Pin before timing so the figure is one core's, like the Rust bench's.
        os.sched_setaffinity(0, {args.core})
    except (OSError, ValueError) as e:
        fail(f"--core {args.core}: {e}")

    lines = load(args.path)
    decoded = 0
    start = time.perf_counter_ns()
    for _ in range(args.repeat):
        for line in lines:
            if decodeBLE(line):
                decoded += 1
    ns = time.perf_counter_ns() - start

    adverts = len(lines) * args.repeat
    result = {
        "decoder": "TheengsDecoder",
        "version": version("TheengsDecoder"),
        "adverts": adverts,
        "seconds": ns / 1e9,
        "adverts_per_s": adverts * 1e9 / ns,
        "ns_per_advert": ns / adverts,
        "decoded": decoded,  # over all passes, so decoded/adverts is the hit rate
        "python": platform.python_version(),
    }
    print(f"TheengsDecoder {result['version']}: {adverts} adverts in "
          f"{result['seconds']:.3f} s = {result['adverts_per_s']:,.0f} adverts/s, "
          f"{result['ns_per_advert']:,.0f} ns/advert, {decoded} decoded "
          f"(core {args.core}, Python {result['python']})")
    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
        except OSError as e:
            fail(f"--json: {e}")


if __name__ == "__main__":
    main()
