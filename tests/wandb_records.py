"""Read an offline wandb run folder back: its records (config, metric definitions, history) from the
run-*.wandb file (wandb's leveldb-style log: 32 KiB blocks of [crc32, length, type] + protobuf chunks)."""

from __future__ import annotations

import json
from pathlib import Path

BLOCK, HEADER = 32768, 7  # file header ":W&B" + magic (2 bytes) + version; record header crc(4) len(2) type(1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(run_dir: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(run_dir).glob("*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb log"
    pos, chunks = HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # block trailer too short for a header: zero padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + HEADER:pos + HEADER + length], pos + HEADER + length
        if kind == 0:
            continue
        chunks += chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def config(run_dir: Path) -> dict:
    """The run's config as wandb holds it (the run record's config, then every config update)."""
    out: dict = {}
    for r in records(run_dir):
        kind = r.WhichOneof("record_type")
        items = r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        for item in items:
            key = item.key or "/".join(item.nested_key)
            out[key] = json.loads(item.value_json)
    return out


def run_record(run_dir: Path):
    return next(r.run for r in records(run_dir) if r.WhichOneof("record_type") == "run")


def metric_definitions(run_dir: Path) -> dict:
    """{name or glob: step metric} of every define_metric."""
    return {r.metric.name or r.metric.glob_name: r.metric.step_metric
            for r in records(run_dir) if r.WhichOneof("record_type") == "metric"}


def history(run_dir: Path) -> list[dict]:
    rows = []
    for r in records(run_dir):
        if r.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item})
    return rows


def summary(run_dir: Path) -> dict:
    out: dict = {}
    for r in records(run_dir):
        if r.WhichOneof("record_type") == "summary":
            for item in r.summary.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out
