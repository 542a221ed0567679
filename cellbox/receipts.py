"""Execution receipts: hashed, chained per cell, signed with the server's Ed25519 key.

A receipt's signed content is the canonical JSON (sorted keys, no spaces, UTF-8)
of its fields without ``signature`` and ``receipt_hash``. ``receipt_hash`` is the
SHA-256 of those same bytes, and each receipt's ``prev_hash`` is the previous
receipt's ``receipt_hash`` in the same cell (64 zeros for the first), so a chain
cannot be reordered or cut in the middle without breaking a signature.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger("cellbox.receipts")

GENESIS = "0" * 64
_BATCH_WINDOW_S = 0.1
SIGNED_FIELDS = (
    "execution_id", "cell_id", "sequence", "code_hash", "result_hash", "template", "language",
    "timestamp", "prev_hash",
)


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def result_hash(outcome: dict[str, Any]) -> str:
    """What an execution produced: output streams, exit code, rich results, error."""
    keys = ("stdout", "stderr", "exit_code", "results", "error")
    return sha256(canonical({k: outcome.get(k) for k in keys}))


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, Ed25519PrivateKey), f"{path} is not an Ed25519 key"
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def public_key_info(key: Ed25519PrivateKey) -> dict[str, str]:
    public = key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {"algorithm": "Ed25519", "public_key": base64.b64encode(raw).decode(), "pem": pem.decode()}


def verify(receipt: dict[str, Any], public_key: Ed25519PublicKey) -> bool:
    """True when the receipt's hash and signature match its fields."""
    body = canonical({k: receipt[k] for k in SIGNED_FIELDS})
    if sha256(body) != receipt.get("receipt_hash"):
        return False
    try:
        public_key.verify(base64.b64decode(receipt["signature"]), body)
    except Exception:
        return False
    return True


class ChainHead:
    """Where a cell's chain stands: the next sequence number and the previous hash."""

    def __init__(self, sequence: int = 0, prev_hash: str = GENESIS) -> None:
        self.sequence = sequence
        self.prev_hash = prev_hash


class Notary:
    """Signs receipts and persists them in order, off the request's critical path."""

    def __init__(self, key: Ed25519PrivateKey, store: Any) -> None:
        self.key = key
        self.store = store
        self._heads: dict[str, ChainHead] = {}
        self._pending: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._writer: asyncio.Task | None = None

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_forever())

    async def close(self) -> None:
        await self.flush()
        if self._writer is not None:
            self._writer.cancel()

    async def _head(self, cell_id: str) -> ChainHead:
        head = self._heads.get(cell_id)
        if head is None:
            await self.flush()
            last = await self.store.last_receipt(cell_id)
            head = ChainHead(last["sequence"] + 1, last["receipt_hash"]) if last else ChainHead()
            head = self._heads.setdefault(cell_id, head)
        return head

    async def issue(
        self, *, tenant_id: str, cell_id: str, template: str, language: str, code: str, outcome: dict[str, Any],
    ) -> dict[str, Any]:
        head = await self._head(cell_id)
        fields = {
            "execution_id": "exec_" + os.urandom(8).hex(),
            "cell_id": cell_id,
            "sequence": head.sequence,
            "code_hash": sha256(code),
            "result_hash": result_hash(outcome),
            "template": template,
            "language": language,
            "timestamp": int(time.time() * 1000),
            "prev_hash": head.prev_hash,
        }
        body = canonical(fields)
        receipt = {
            **fields,
            "receipt_hash": sha256(body),
            "signature": base64.b64encode(self.key.sign(body)).decode(),
        }
        head.sequence += 1
        head.prev_hash = receipt["receipt_hash"]
        self._pending.put_nowait({"tenant_id": tenant_id, **receipt})
        return receipt

    def forget(self, cell_id: str) -> None:
        self._heads.pop(cell_id, None)

    async def flush(self) -> None:
        await self._pending.join()

    async def _write_forever(self) -> None:
        while True:
            batch = [await self._pending.get()]
            # Gather for a moment: one insert per batch keeps the database off each
            # execution's path. ``flush`` (used by readers) still waits for the write.
            await asyncio.sleep(_BATCH_WINDOW_S)
            while not self._pending.empty() and len(batch) < 500:
                batch.append(self._pending.get_nowait())
            try:
                await self.store.add_receipts(batch)
            except Exception:
                log.exception("could not store %d receipts", len(batch))
            finally:
                for _ in batch:
                    self._pending.task_done()
