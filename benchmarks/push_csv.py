"""Push one CSV in chunks through the core's push path, for the benchmark's memory figure.

The same calls as ``pigment-audit --import-config`` makes after writing its CSV: chunk files
written with :func:`write_chunks`, each streamed from disk by :meth:`PigmentClient.push_csv`,
then every import awaited. Run as a child process so its peak RSS is the push's alone.

    PIGMENT_BASE_URL=... PIGMENT_IMPORT_API_KEY=... python benchmarks/push_csv.py big.csv \
        --chunk-size 50 --import-config 00000000-0000-4000-8000-000000000001
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from pigment_audit_assets.core.chunks import chunk_size_bytes, write_chunks
from pigment_audit_assets.core.client import PigmentClient


def main(argv: list[str] | None = None) -> int:
    """Chunk and push ``csv``; prints the chunk count and the bytes pushed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--chunk-size", type=float, default=480.0, help="MiB per chunk")
    parser.add_argument("--import-config", required=True)
    args = parser.parse_args(argv)

    client = PigmentClient(os.environ["PIGMENT_BASE_URL"],
                           import_key=os.environ["PIGMENT_IMPORT_API_KEY"])
    with tempfile.TemporaryDirectory(prefix="bench-push-") as scratch:
        chunks = write_chunks(args.csv, chunk_size_bytes(args.chunk_size, "--chunk-size"),
                              Path(scratch) / "chunks")
        import_ids = [client.push_csv(args.import_config, chunk.path) for chunk in chunks]
        statuses = [client.wait_for_import(import_id, poll_seconds=0.2)["importStatus"]
                    for import_id in import_ids]
    if any(status != "Completed" for status in statuses):
        print(f"imports not all completed: {statuses}", file=sys.stderr)
        return 1
    print(f"pushed {len(chunks)} chunk(s), {sum(chunk.bytes for chunk in chunks):,} bytes, "
          f"{sum(chunk.rows for chunk in chunks):,} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
