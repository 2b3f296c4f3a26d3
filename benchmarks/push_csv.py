"""Chunk (and push) one CSV: the push's memory figure, and the old and new chunking compared.

Two uses:

- With ``--import-config``: the same calls as ``pigment-audit --import-config`` makes after
  writing its CSV: chunks planned with :func:`write_chunks` (``in_place``: byte ranges of the
  open CSV), each streamed from disk by :meth:`PigmentClient.push_csv`, then every import
  awaited (``bench.py`` runs this as a child
  process so its peak RSS is the push's alone)::

    PIGMENT_BASE_URL=... PIGMENT_IMPORT_API_KEY=... python benchmarks/push_csv.py big.csv \\
        --chunk-size 50 --import-config 00000000-0000-4000-8000-000000000001

- Without it: chunking alone, the old way (rows read with ``csv`` and re-encoded one by one,
  the implementation before the byte copy, kept below), the new (:func:`write_chunks`, chunk
  files copied as bytes) and ``ranges`` (``in_place``: no chunk file; every body read once as
  the push reads it), side by side in one run, each in its own child process under
  ``rusage.py`` (CPU = user + system, peak RSS; the child reports the split itself), on
  ``csv`` or, without one, on a CSV of ``--size-mib`` MiB generated from the project's
  synthetic events (the default 386 MiB is the 1,000,000-event day's CSV). The two sets of
  chunk files are checked to be the same bytes, and the ranges' bodies to be the chunk
  files' bytes::

    python benchmarks/push_csv.py --size-mib 386 --chunk-size 50
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import resource
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import BinaryIO

from pigment_audit_assets.core.chunks import chunk_size_bytes, write_chunks
from pigment_audit_assets_tests.reference_chunks import reference_write_chunks

HERE = Path(__file__).resolve().parent
MEBIBYTE = 1024 * 1024


def generate_csv(path: Path, size_mib: float) -> None:
    """A CSV of about ``size_mib`` MiB (to within half a sample): 10,000 synthetic events
    (commas, quotes, embedded LF and CRLF, non-ASCII) through the project's CSV writer, its
    records repeated."""
    import orjson

    from pigment_audit_assets.core.table import write_csv  # only for this use
    from pigment_audit_assets_tests.synthetic import iter_synthetic_events

    raw = path.with_suffix(".jsonl")
    with open(raw, "wb") as handle:
        for event in iter_synthetic_events(date(2025, 9, 1), 10_000, seed=7):
            handle.write(orjson.dumps(event) + b"\n")
    sample = path.with_suffix(".sample.csv")
    write_csv([raw], sample)
    data = sample.read_bytes()
    header_end = data.index(b"\r\n") + 2  # column names hold no line end
    header, body = data[:header_end], data[header_end:]
    copies = max(1, round((size_mib * MEBIBYTE - len(header)) / len(body)))
    with open(path, "wb") as out:
        out.write(header)
        for _ in range(copies):
            out.write(body)
    raw.unlink()
    sample.unlink()


def compare(csv_path: Path, chunk_mb: float) -> int:
    """Run the old and the new chunking as children under rusage.py; print their figures."""
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench-chunks-") as scratch:
        for which in WAYS:
            out = Path(scratch) / f"{which}.json"
            child = subprocess.run([sys.executable, str(HERE / "rusage.py"), str(out), "--",
                                    sys.executable, str(Path(__file__).resolve()),
                                    str(csv_path), "--chunk-only", which, "--chunk-size",
                                    str(chunk_mb), "--work-dir", str(Path(scratch) / which)],
                                   check=True, capture_output=True, text=True)
            figures[which] = {**json.loads(out.read_text()), **json.loads(child.stdout)}
        old_files = sorted((Path(scratch) / "old").iterdir())
        new_files = sorted((Path(scratch) / "new").iterdir())
        same = ([path.name for path in old_files] == [path.name for path in new_files]
                and all(filecmp.cmp(a, b, shallow=False)
                        for a, b in zip(old_files, new_files, strict=True)))
        ranges_same = _ranges_match(csv_path, chunk_mb, new_files, Path(scratch) / "check")
    size = csv_path.stat().st_size
    print(f"{csv_path.name}: {size / MEBIBYTE:.1f} MiB in {chunk_mb:g} MiB chunks, "
          f"{len(new_files)} chunk(s); chunk files identical: {same}; byte ranges send the "
          f"same bytes: {ranges_same}")
    for which in WAYS:
        figure = figures[which]
        print(f"  {which}: {figure['cpu']:.2f} s CPU (user {figure['user']:.2f}, system "
              f"{figure['system']:.2f}), {figure['wall']:.2f} s wall, peak RSS "
              f"{figure['peak_rss_mb']:.1f} MB")
    print(f"  old / new CPU: {figures['old']['cpu'] / figures['new']['cpu']:.1f}x; "
          f"old / ranges: {figures['old']['cpu'] / figures['ranges']['cpu']:.1f}x; "
          f"new / ranges: {figures['new']['cpu'] / figures['ranges']['cpu']:.1f}x")
    return 0 if same and ranges_same else 1


WAYS = ("old", "new", "ranges")
SEND_BLOCK = 16 * 1024  # urllib3's blocksize: what it reads from a body per send


def _ranges_match(csv_path: Path, chunk_mb: float, files: list[Path], work_dir: Path) -> bool:
    """Whether the in-place chunks' bodies are the chunk files' bytes, block by block."""
    with open(csv_path, "rb") as source:
        chunks = write_chunks(source, chunk_size_bytes(chunk_mb, "--chunk-size"), work_dir,
                              in_place=True)
        if len(chunks) != len(files) or any(chunk.path is not None for chunk in chunks):
            return False
        for chunk, path in zip(chunks, files, strict=True):
            with chunk.open_body() as body, open(path, "rb") as file:
                while block := file.read(MEBIBYTE):
                    if _read_exactly(body, len(block)) != block:
                        return False
                if body.read(1):
                    return False
    return True


def _read_exactly(body: BinaryIO, size: int) -> bytes:
    """``size`` bytes of ``body`` (fewer only at its end): a raw body may read short."""
    parts, left = [], size
    while left and (part := body.read(left)):
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def chunk_only(csv_path: Path, chunk_mb: float, which: str, work_dir: Path) -> int:
    """One chunking, in this process (the child ``compare`` measures).

    ``ranges`` (``in_place``) writes nothing; so that it is not credited with less than the
    push costs, it also reads every chunk's body once, as urllib3 does while sending it
    (blocks of 16 KiB), which the two others leave to the push.
    """
    max_bytes = chunk_size_bytes(chunk_mb, "--chunk-size")
    if which == "ranges":
        with open(csv_path, "rb") as source:
            for chunk in write_chunks(source, max_bytes, work_dir, in_place=True):
                with chunk.open_body() as body:
                    while body.read(SEND_BLOCK):
                        pass
    else:
        function = reference_write_chunks if which == "old" else write_chunks
        function(csv_path, max_bytes, work_dir)
    usage = resource.getrusage(resource.RUSAGE_SELF)  # the split rusage.py does not give
    print(json.dumps({"user": usage.ru_utime, "system": usage.ru_stime}))
    return 0


def push(csv_path: Path, chunk_mb: float, import_config: str) -> int:
    """Chunk and push ``csv_path``; prints the chunk count and the bytes pushed."""
    from pigment_audit_assets.core.client import PigmentClient

    client = PigmentClient(os.environ["PIGMENT_BASE_URL"],
                           import_key=os.environ["PIGMENT_IMPORT_API_KEY"])
    with tempfile.TemporaryDirectory(prefix="bench-push-") as scratch:
        with open(csv_path, "rb") as source:  # as the command line pushes: byte ranges
            chunks = write_chunks(source, chunk_size_bytes(chunk_mb, "--chunk-size"),
                                  Path(scratch) / "chunks", in_place=True)
            import_ids = [client.push_csv(import_config, chunk) for chunk in chunks]
        statuses = [client.wait_for_import(import_id, poll_seconds=0.2)["importStatus"]
                    for import_id in import_ids]
    if any(status != "Completed" for status in statuses):
        print(f"imports not all completed: {statuses}", file=sys.stderr)
        return 1
    print(f"pushed {len(chunks)} chunk(s), {sum(chunk.bytes for chunk in chunks):,} bytes, "
          f"{sum(chunk.rows for chunk in chunks):,} rows")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Push ``csv`` with ``--import-config``; else compare the old and the new chunking."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, nargs="?", help="the CSV (generated if omitted)")
    parser.add_argument("--chunk-size", type=float, help="MiB per chunk (480 for a push, "
                        "50 for the comparison)")
    parser.add_argument("--import-config", help="push to this import configuration")
    parser.add_argument("--size-mib", type=float, default=386.0,
                        help="size of the generated CSV (386, the 1M-event day's)")
    parser.add_argument("--chunk-only", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.import_config:
        if args.csv is None:
            parser.error("a push needs the CSV")
        return push(args.csv, args.chunk_size or 480.0, args.import_config)
    if args.chunk_only:
        return chunk_only(args.csv, args.chunk_size, args.chunk_only, args.work_dir)
    chunk_mb = args.chunk_size or 50.0
    if args.csv is not None:
        return compare(args.csv, chunk_mb)
    with tempfile.TemporaryDirectory(prefix="bench-csv-") as scratch:
        csv_path = Path(scratch) / "generated.csv"
        print(f"generating a {args.size_mib:g} MiB CSV...", flush=True)
        generate_csv(csv_path, args.size_mib)
        return compare(csv_path, chunk_mb)


if __name__ == "__main__":
    raise SystemExit(main())
