"""A server-side store of per-client state (SCAFFOLD's control variates c_i), on disk.

A client may be trained by a different node every round, so state that belongs to a client
lives with the server, keyed by client id, and travels with the cohort as per-client arrays.
Its size is one model per client ever sampled: 62,006 float32 numbers (248 KB) per client for
the simple CNN, so 248 MB for 1,000 clients; 11.2 M (45 MB) per client for ResNet-18, so 45 GB
for 1,000 clients. That is why it lives on disk, not in memory or on the GPU: only the
sampled clients' rows are read each round.

Layout (one file per client and version, so a round rewrites only the clients it trained)::

    STORE/store.json          {"format": 1, "id": ..., "params": [[name, shape], ...]}
    STORE/c<cid>.r<round>.npy  the client's state as one flat float32 vector, written in round

Crash safety: every file is written atomically, and a client's file of round r never replaces
the one a checkpoint refers to. The checkpoint holds the version (round) of every client's
file; a resumed run reads those versions and deletes every other file (newer versions written
after the checkpoint, and versions the checkpoint superseded). After a checkpoint is safely
written (``committed``), the versions it superseded are deleted, so at most two versions of a
client exist between checkpoints. Files are read with ``np.load(allow_pickle=False)``: a
store can never run code.
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fedwsa.atomic import fsync_directory, write_bytes_atomic, write_text_atomic
from fedwsa.keys import ConfigError

FORMAT = 1
MANIFEST = "store.json"
_FILE = re.compile(r"c(\d+)\.r(\d+)\.npy")


class ClientStateStore:
    """Per-client flat float32 vectors with the layout of ``params`` (names and shapes).

    Nothing touches the disk until the first ``read``/``write`` (``open``), so building the
    store (e.g. in a run's preflight) writes nothing. ``key`` is the config key that sets the
    store's path, named in every error.
    """

    def __init__(self, path: Path | str, params: Mapping[str, Tensor], key: str) -> None:
        self.path = Path(path)
        self.key = key
        self.names = list(params)
        self.shapes = [tuple(params[n].shape) for n in self.names]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.numel = sum(self.sizes)
        self.id = ""
        self.current: dict[int, int] = {}     # client -> round of its newest file
        self.committed: dict[int, int] = {}   # client -> round the last checkpoint refers to
        self._open = False

    # --- checks (no writes) ---------------------------------------------------------------
    def _error(self, accepted: str) -> ConfigError:
        return ConfigError(self.key, str(self.path), accepted)

    def check_new(self) -> None:
        """A new run can create the store here: writable, and no other run's store in it."""
        probe = self.path
        while not probe.exists():
            if probe.parent == probe:
                break
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            raise self._error(f"a directory path ({probe} is a file)")
        if not (probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)):
            raise self._error(f"a directory this user can write ({probe} is not writable)")
        if self.path.is_dir() and any(self.path.iterdir()):
            raise self._error("a new or empty directory for this run's client state (it holds "
                              "files already, e.g. another run's store)")

    def check_resumable(self, store_id: str, versions: Mapping[int, int]) -> None:
        """The store the checkpoint refers to is here, is this run's, and holds every file."""
        manifest = self.path / MANIFEST
        try:
            meta = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise self._error(f"the client-state store of the run being resumed, with a "
                              f"readable {MANIFEST} ({type(err).__name__}: {err})") from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise self._error(f"a fedwsa client-state store of format {FORMAT} "
                              f"({manifest} is not one)")
        if meta.get("id") != store_id:
            raise self._error(f"the store of the run being resumed (id {store_id}); {manifest} "
                              f"belongs to another run (id {meta.get('id')})")
        layout = [[n, list(s)] for n, s in zip(self.names, self.shapes, strict=True)]
        if meta.get("params") != layout:
            raise self._error(f"a store for this model's parameters {layout}; {manifest} holds "
                              f"{meta.get('params')}")
        for cid, rnd in sorted(versions.items()):
            self._load(self._file(cid, rnd))  # reads the header and checks the size

    # --- reading and writing --------------------------------------------------------------
    def open(self) -> None:
        """Create the store (new run) or tidy it (resumed run: drop files no checkpoint needs)."""
        if self._open:
            return
        if not self.id:
            self.id = uuid.uuid4().hex
            layout = [[n, list(s)] for n, s in zip(self.names, self.shapes, strict=True)]
            write_text_atomic(self.path / MANIFEST, json.dumps(
                {"format": FORMAT, "id": self.id, "params": layout}, indent=1))
        else:
            keep = {self._file(c, r).name for c, r in self.current.items()} | {MANIFEST}
            for f in self.path.iterdir():
                if f.name not in keep and (_FILE.fullmatch(f.name) or f.name.endswith(".tmp")):
                    f.unlink()
        self._open = True

    def _file(self, cid: int, rnd: int) -> Path:
        return self.path / f"c{cid}.r{rnd}.npy"

    def _load(self, path: Path) -> np.ndarray:
        try:
            with path.open("rb") as fh:
                if fh.read(6) != b"\x93NUMPY":
                    raise ValueError("not a .npy file")
            flat = np.load(path, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise self._error(f"a store whose client files are readable ({path}: "
                              f"{type(err).__name__}: {err})") from err
        if flat.dtype != np.float32 or flat.shape != (self.numel,):
            raise self._error(f"client files of {self.numel} float32 numbers ({path} holds "
                              f"{flat.shape} {flat.dtype})")
        return flat

    def read(self, client_ids: Sequence[int], device: torch.device | str = "cpu"
             ) -> dict[str, Tensor]:
        """The clients' states stacked on axis 0 (zeros for a client never written)."""
        self.open()
        rows = np.zeros((len(client_ids), self.numel), dtype=np.float32)
        for k, cid in enumerate(client_ids):
            if cid in self.current:
                rows[k] = self._load(self._file(cid, self.current[cid]))
        return self._unflatten(torch.from_numpy(rows).to(device))

    def write(self, server_round: int, states: Mapping[int, Mapping[str, Tensor]]) -> None:
        """Store each client's new state as its version of ``server_round``."""
        self.open()
        for cid, state in states.items():
            flat = torch.cat([state[n].detach().reshape(-1).float().cpu() for n in self.names])
            buf = io.BytesIO()
            np.save(buf, flat.numpy(), allow_pickle=False)
            # one directory sync after the loop, before any checkpoint refers to these files
            write_bytes_atomic(self._file(cid, server_round), buf.getvalue(),
                               sync_directory=False)
            old = self.current.get(cid)
            if old is not None and old != server_round and old != self.committed.get(cid):
                self._file(cid, old).unlink(missing_ok=True)  # no checkpoint refers to it
            self.current[cid] = server_round
        if states:
            fsync_directory(self.path)

    def commit(self) -> None:
        """A checkpoint referring to ``current`` is on disk: drop the versions it superseded."""
        for cid, rnd in self.committed.items():
            if self.current.get(cid) != rnd:
                self._file(cid, rnd).unlink(missing_ok=True)
        self.committed = dict(self.current)

    def _unflatten(self, rows: Tensor) -> dict[str, Tensor]:
        parts = torch.split(rows, self.sizes, dim=1)
        return {n: p.reshape(len(rows), *s)
                for n, p, s in zip(self.names, parts, self.shapes, strict=True)}

    # --- checkpoint -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, object]:
        clients = sorted(self.current)
        return {"id": self.id,
                "clients": torch.tensor(clients, dtype=torch.int64),
                "rounds": torch.tensor([self.current[c] for c in clients], dtype=torch.int64)}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Point at the versions a checkpoint refers to (checked; tidied at ``open``)."""
        versions = versions_of(state)
        self.check_resumable(str(state["id"]), versions)
        self.current, self.committed = dict(versions), dict(versions)
        self.id = str(state["id"])
        self._open = False


def versions_of(state: Mapping[str, object]) -> dict[int, int]:
    """client -> round, from ``ClientStateStore.state_dict()``'s output."""
    clients = torch.as_tensor(state["clients"]).tolist()
    rounds = torch.as_tensor(state["rounds"]).tolist()
    return dict(zip(clients, rounds, strict=True))
