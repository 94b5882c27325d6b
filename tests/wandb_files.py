"""Read an offline W&B run file (``run-*.wandb``) without the network or W&B's service.

The file is W&B's datastore: a 7-byte header, then LevelDB-log records (32 KiB blocks, each
record: crc32 [4], length [2, LE], type [1]: 1 full, 2 first, 3 middle, 4 last) holding
``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7


def records(path: str | Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B datastore file"
    out, pos, pending = [], HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - (pos % BLOCK)
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            out.append(rec)
            pending = b""
    return out


def summary(path: str | Path) -> dict[str, Any]:
    """The run's final summary (later updates win)."""
    result: dict[str, Any] = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") == "summary":
            for item in rec.summary.update:
                result[_key(item)] = json.loads(item.value_json)
    return result


def history(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    for rec in records(path):
        if rec.WhichOneof("record_type") == "history":
            rows.append({_key(i): json.loads(i.value_json) for i in rec.history.item})
    return rows


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)
