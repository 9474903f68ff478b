"""CPU per KiB of each compression codec and level, as lb runs them, so operators can choose.

Each corpus is compressed the way lb streams a response (lb/compress/codecs.py): one stream
per response, fed in 16 KiB chunks (a typical backend read), flushed after each chunk. What
is timed is process CPU time (`time.process_time`), so a loaded machine changes the figure
little; the ratio is the compressed size over the original.

    python bench/compress_bench.py                  # every codec at its useful levels
    python bench/compress_bench.py --chunk 65536    # larger backend reads

Corpora: "json", an API answer of 256 KiB (records of ids, names, e-mails, timestamps,
tags and prices, from a seeded generator), and "text", lb's own README and sources, cut to
256 KiB (markdown and Python: prose and code).
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lb.compress.codecs import BrotliStream, GzipStream, ZstdStreams  # noqa: E402

SIZE = 256 * 1024
LEVELS = {"gzip": (1, 4, 6, 9), "br": (0, 2, 4, 6, 9, 11), "zstd": (1, 3, 6, 9, 12, 19)}


def json_corpus() -> bytes:
    rng = random.Random(7)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    records = []
    while len(json.dumps(records)) < SIZE:
        n = len(records)
        records.append(
            {
                "id": n,
                "name": f"{rng.choice(words).title()} {rng.choice(words).title()}",
                "email": f"user{rng.randrange(10**6)}@example.com",
                "created": f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
                f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
                "tags": rng.sample(words, rng.randint(0, 4)),
                "price": round(rng.uniform(1, 500), 2),
                "active": rng.random() < 0.8,
            }
        )
    return json.dumps(records, indent=1).encode()[:SIZE]


def text_corpus() -> bytes:
    files = [ROOT / "README.md", *sorted((ROOT / "lb").rglob("*.py"))]
    return b"\n".join(f.read_bytes() for f in files)[:SIZE]


def stream_for(codec: str, level: int, zstd: ZstdStreams | None):
    if codec == "gzip":
        return GzipStream(level)
    if codec == "br":
        return BrotliStream(level)
    assert zstd is not None
    return zstd.open(-1)


def measure(codec: str, level: int, corpus: bytes, chunk: int) -> tuple[float, float]:
    """(CPU µs per KiB, ratio) over enough repetitions for about 0.3 s of CPU."""
    zstd = ZstdStreams(level) if codec == "zstd" else None
    pieces = [corpus[i : i + chunk] for i in range(0, len(corpus), chunk)]
    runs, spent, out = 0, 0.0, 0
    while spent < 0.3 and runs < 200:
        start = time.process_time()
        s = stream_for(codec, level, zstd)
        out = sum(len(s.step(p)) for p in pieces) + len(s.finish())
        spent += time.process_time() - start
        runs += 1
    return spent / runs / (len(corpus) / 1024) * 1e6, out / len(corpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunk", type=int, default=16 * 1024)
    args = parser.parse_args()
    corpora = {"json": json_corpus(), "text": text_corpus()}
    print(
        f"chunk {args.chunk} B, corpora {', '.join(f'{k} {len(v)} B' for k, v in corpora.items())}"
    )
    print("| codec | level | json µs/KiB | json ratio | text µs/KiB | text ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for codec, levels in LEVELS.items():
        for level in levels:
            cells = []
            for corpus in corpora.values():
                cpu, ratio = measure(codec, level, corpus, args.chunk)
                cells += [f"{cpu:.2f}", f"{ratio:.3f}"]
            print(f"| {codec} | {level} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
