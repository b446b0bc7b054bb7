"""Host handles: a lab host is a network namespace; faults, load and metrics only ever see this handle.

Work inside a namespace happens two ways, neither of which moves this process:
- commands run through `nsenter --net=<ns file>`;
- in-process work (sockets, /proc/sys) runs on a helper thread that setns(2)'d into the namespace;
  setns only moves the calling thread, and we check the thread really arrived before doing anything.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any, TypeVar

from lab.errors import LabError

if TYPE_CHECKING:
    from pyroute2 import IPRoute

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


class NamespaceGone(LabError):
    pass


def enter_netns(path: str) -> None:
    """Move the calling thread into the network namespace at `path`, or raise."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise NamespaceGone(f"network namespace {path} does not exist") from None
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
        want = os.fstat(fd).st_ino
    finally:
        os.close(fd)
    if os.stat("/proc/thread-self/ns/net").st_ino != want:
        raise OSError(f"setns({path}) did not move this thread")


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2


def _ensure_shared_dir(directory: Path) -> None:
    """Make `directory` a shared mount point, as `ip netns add` does, so namespace mounts propagate."""
    directory.mkdir(mode=0o755, exist_ok=True)
    if _libc.mount(b"none", str(directory).encode(), b"none", MS_SHARED | MS_REC, None) == 0:
        return
    if _libc.mount(str(directory).encode(), str(directory).encode(), b"none", MS_BIND | MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount --bind {directory}: {os.strerror(err)}")
    if _libc.mount(b"none", str(directory).encode(), b"none", MS_SHARED | MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount --make-shared {directory}: {os.strerror(err)}")


def create_netns(path: Path) -> None:
    """Create a named network namespace at `path` (like `ip netns add`), without forking.

    A short-lived thread unshares its own network namespace and bind-mounts it at `path`;
    this process and its other threads stay where they are.
    """
    _ensure_shared_dir(path.parent)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0)
    os.close(fd)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
            if _libc.mount(b"/proc/thread-self/ns/net", str(path).encode(), b"none", MS_BIND, None) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"mount --bind {path}: {os.strerror(err)}")
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=work, name=f"create:{path.name}")
    t.start()
    t.join()
    if errors:
        path.unlink(missing_ok=True)
        raise errors[0]


def delete_netns(path: Path) -> None:
    """Unmount and remove a named network namespace (like `ip netns delete`)."""
    if _libc.umount2(str(path).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not mounted (half-created); ENOENT: already gone
            raise OSError(err, f"umount {path}: {os.strerror(err)}")
    path.unlink(missing_ok=True)


class NetnsThread:
    """A thread living in one network namespace; submit() runs a callable there."""

    def __init__(self, path: str):
        self.path = path
        self._queue: SimpleQueue = SimpleQueue()
        self._ready: Future = Future()
        self._thread = threading.Thread(target=self._loop, name=f"netns:{path}", daemon=True)
        self._thread.start()
        self._ready.result()

    def _loop(self) -> None:
        try:
            enter_netns(self.path)
        except BaseException as exc:  # report to the creator, then end: never run work in the wrong namespace
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, fut = item
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:
                    fut.set_exception(exc)

    def submit(self, fn: Callable[[], T]) -> Future:
        fut: Future = Future()
        self._queue.put((fn, fut))
        return fut

    def call(self, fn: Callable[[], T]) -> T:
        return self.submit(fn).result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def __enter__(self) -> NetnsThread:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(frozen=True)
class Host:
    """One lab host: a name, its role, and the network namespace file that is the host."""

    name: str
    role: str
    netns: str  # /run/netns/<name> for the netns backend, /proc/<pid>/ns/net for containers
    az: str | None = None
    ip: str | None = None
    node: str | None = None  # pods: the node they run on
    service: str | None = None  # pods: their service
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def exists(self) -> bool:
        return Path(self.netns).exists()

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net={self.netns}", "--", *cmd]

    def run(
        self,
        cmd: Sequence[str],
        *,
        input: str | bytes | None = None,
        check: bool = True,
        timeout: float | None = 30,
        text: bool = True,
    ) -> subprocess.CompletedProcess:
        """Run a command inside this host's network namespace and capture its output."""
        if not self.exists():
            raise NamespaceGone(f"host {self.name}: namespace {self.netns} is gone")
        proc = subprocess.run(self.argv(cmd), input=input, capture_output=True, text=text, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            err = (proc.stderr or "").strip().splitlines()
            detail = err[-1] if err else f"exit code {proc.returncode}"
            raise LabError(f"{self.name}: `{shlex.join(cmd)}` failed: {detail}")
        return proc

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        return subprocess.Popen(self.argv(cmd), **kwargs)

    def in_netns(self, fn: Callable[[], T]) -> T:
        """Run `fn` on a short-lived thread inside this namespace (sockets it creates stay there)."""
        with NetnsThread(self.netns) as t:
            return t.call(fn)

    def connect(self, address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
        """A TCP connection made from inside this host."""
        return self.timed_connect(address, timeout)[0]

    def timed_connect(self, address: tuple[str, int], timeout: float = 5.0) -> tuple[socket.socket, float]:
        """A TCP connection made from inside this host, and the seconds connect() took."""

        def connect() -> tuple[socket.socket, float]:
            t0 = time.perf_counter()
            sock = socket.create_connection(address, timeout=timeout)
            return sock, time.perf_counter() - t0

        return self.in_netns(connect)

    def sysctl(self, key: str) -> str:
        path = "/proc/sys/" + key.replace(".", "/")
        return self.in_netns(lambda: Path(path).read_text().strip())

    def set_sysctls(self, values: dict[str, str], only_present: bool = False) -> None:
        """Write sysctls in this namespace; `only_present` skips keys this kernel does not have."""

        def write() -> None:
            for key, value in values.items():
                path = Path("/proc/sys/" + key.replace(".", "/"))
                if only_present and not path.exists():
                    continue
                path.write_text(str(value))

        self.in_netns(write)


def pids_in_netns(paths: Sequence[str]) -> dict[str, list[int]]:
    """Processes whose network namespace is one of `paths` (what `ip netns pids` does, for many at once)."""
    wanted: dict[int, str] = {}
    for p in paths:
        try:
            wanted[os.stat(p).st_ino] = p
        except OSError:
            continue
    found: dict[str, list[int]] = {p: [] for p in wanted.values()}
    if not wanted:
        return found
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            ino = os.stat(f"/proc/{entry.name}/ns/net").st_ino
        except OSError:
            continue
        if ino in wanted:
            found[wanted[ino]].append(int(entry.name))
    return found


def netns_iproute(path: str) -> IPRoute:
    """A pyroute2 IPRoute bound to the namespace at `path`, for use from the calling thread only.

    The netlink socket is opened by a thread inside the namespace and handed to pyroute2
    (use_socket): no fork, and pyroute2 refuses use from another thread rather than opening a
    socket in this process's own namespace. (IPRoute(netns=...) would also create a missing
    namespace by default.)
    """
    from pyroute2 import IPRoute  # imported at use for start-up speed (most commands never need netlink)

    with NetnsThread(path) as t:
        sock = t.call(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0))
    return IPRoute(use_socket=sock)


def process_cmdline(pid: int) -> list[str]:
    """A process's command line from /proc ([] when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def is_zombie(pid: int) -> bool:
    """The process has exited and waits to be reaped (or is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
