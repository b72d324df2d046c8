"""Control socket: the JSON line protocol, a real Unix socket, peer-credential checks."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import pwd
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from ops_support import SampleView, llm_rows

from tunneler.errors import ControlError
from tunneler.ops import control
from tunneler.ops.control import ControlServer, dispatch

NOBODY = 65534


def answer(view: SampleView, line: bytes) -> dict[str, object]:
    return asyncio.run(dispatch(view, line))


@pytest.mark.parametrize(("line", "error"), [
    (b"not json", "Expecting value"),
    (b"[1, 2]", "request must be a JSON object"),
    (b'{"command": "reboot"}', "unknown command 'reboot'; known: status, intercepts"),
    (b'{"command": 7}', "unknown command 7"),
    (b'{"command": "status", "data": [1]}', "data must be a JSON object"),
    (b'{"command": "set_log_level", "data": {}}', 'set_log_level needs {"level": NAME}'),
    (b'{"command": "set_log_level", "data": {"level": "loud"}}', "unknown log level 'loud'"),
])
def test_bad_requests_get_clear_errors(line: bytes, error: str) -> None:
    response = answer(SampleView(), line)
    assert response["success"] is False and response["data"] is None
    assert error in str(response["error"])


def test_commands() -> None:
    view = SampleView(rows=llm_rows())
    status = answer(view, b'{"command": "status"}')
    assert status["success"] is True and status["error"] is None
    assert isinstance(status["data"], dict) and status["data"]["healthy"] is True
    rows = answer(view, b'{"command": "intercepts"}')["data"]
    assert isinstance(rows, dict) and rows["intercepts"][0]["address"] == "llm.private.test"
    assert answer(view, b'{"command": "refresh"}')["data"] == {"added": 1, "changed": 0,
                                                               "removed": 0}
    level = answer(view, b'{"command": "set_log_level", "data": {"level": "debug"}}')
    assert level["data"] == {"level": "debug"} and view.log_levels == ["debug"]


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A directory any user may traverse (so an unprivileged peer reaches the socket)."""
    directory = Path(tempfile.mkdtemp(prefix="tunneler-ctl-"))
    directory.chmod(0o711)
    try:
        yield directory
    finally:
        for item in directory.iterdir():
            item.unlink()
        directory.rmdir()


async def _with_server(path: Path, view: SampleView, body: object) -> object:
    server = ControlServer(view, path)
    await server.start()
    try:
        return await asyncio.to_thread(body)  # type: ignore[arg-type]
    finally:
        await server.close()


def test_server_answers_and_sets_mode(socket_dir: Path) -> None:
    path = socket_dir / "tunneler.sock"
    view = SampleView(rows=llm_rows())

    def client() -> object:
        mode = stat.S_IMODE(path.stat().st_mode)
        return mode, control.request(path, "intercepts"), control.request(path, "refresh")

    mode, rows, refreshed = asyncio.run(_with_server(path, view, client))  # type: ignore[misc]
    assert mode == 0o660
    assert len(rows["intercepts"]) == 2
    assert refreshed["added"] == 1 and view.refreshes == 1
    assert not path.exists()


def test_several_requests_on_one_connection_and_oversized_line(socket_dir: Path) -> None:
    path = socket_dir / "tunneler.sock"

    def client() -> object:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))
            sock.sendall(b'{"command": "status"}\n{"command": "refresh"}\n')
            reader = sock.makefile("rb")
            first, second = json.loads(reader.readline()), json.loads(reader.readline())
            sock.sendall(b"x" * (control.MAX_REQUEST + 10) + b"\n")
            third = json.loads(reader.readline())
            return first, second, third, reader.readline()

    first, second, third, eof = asyncio.run(
        _with_server(path, SampleView(), client))  # type: ignore[misc]
    assert first["success"] and second["success"]
    assert third == {"success": False, "data": None,
                     "error": f"request longer than {control.MAX_REQUEST} bytes"}
    assert eof == b""


def test_client_errors(socket_dir: Path) -> None:
    with pytest.raises(ControlError, match="does not exist"):
        control.request(socket_dir / "missing.sock", "status")
    path = socket_dir / "tunneler.sock"

    def client() -> object:
        with pytest.raises(ControlError, match="unknown command"):
            control.request(path, "nope")
        return None

    asyncio.run(_with_server(path, SampleView(), client))


def test_stale_socket_is_replaced_live_one_refused(socket_dir: Path) -> None:
    path = socket_dir / "tunneler.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()                                     # a socket file nobody listens on

    async def scenario() -> None:
        first = ControlServer(SampleView(), path)
        await first.start()
        try:
            with pytest.raises(ControlError, match="already listening"):
                await ControlServer(SampleView(), path).start()
        finally:
            await first.close()
        path.write_text("not a socket")
        with pytest.raises(ControlError, match="is not a socket"):
            await ControlServer(SampleView(), path).start()

    asyncio.run(scenario())


def test_a_directory_we_cannot_use_is_a_clear_error_and_close_touches_nothing(
        socket_dir: Path) -> None:
    blocker = socket_dir / "file"
    blocker.write_text("a file where the runtime directory should be")
    server = ControlServer(SampleView(), blocker / "s.sock")
    with pytest.raises(ControlError, match="--control-socket ''"):
        asyncio.run(server.start())
    asyncio.run(server.close())  # nothing bound: nothing to unlink, no second error
    assert blocker.read_text().startswith("a file")


def test_a_missing_runtime_directory_is_made_searchable(socket_dir: Path) -> None:
    server = ControlServer(SampleView(), socket_dir / "run" / "s.sock")

    async def scenario() -> None:
        await server.start()
        await server.close()

    asyncio.run(scenario())
    made = socket_dir / "run"
    mode = made.stat().st_mode & 0o700
    made.rmdir()
    assert mode == 0o700  # the socket's umask (0o117) is not the directory's


def test_unknown_group_is_refused(socket_dir: Path) -> None:
    server = ControlServer(SampleView(), socket_dir / "s.sock", group="no-such-group-xyz")
    with pytest.raises(ControlError, match="group 'no-such-group-xyz' does not exist"):
        asyncio.run(server.start())


CLIENT = ("import json, socket, sys\n"
          "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
          "s.sendall(b'{\"command\": \"status\"}\\n')\n"
          "print(s.makefile().readline(), end='')\n")


#: an interpreter other users may run (the venv under /root is not reachable for them)
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _as_user(path: Path, **user: object) -> dict[str, object]:
    result = subprocess.run([str(SYSTEM_PYTHON), "-c", CLIENT, str(path)], capture_output=True,
                            text=True, timeout=30, check=True, cwd="/",
                            **user)  # type: ignore[call-overload]
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs /usr/bin/python3 for the client")
def test_peer_credentials_are_checked(socket_dir: Path) -> None:
    path = socket_dir / "tunneler.sock"

    def clients() -> object:
        path.chmod(0o666)        # let everyone connect: only SO_PEERCRED stands in the way
        return (_as_user(path, user=NOBODY, group=NOBODY, extra_groups=[]),
                _as_user(path, user=NOBODY, group=os.getegid(), extra_groups=[]),
                _as_user(path, user=NOBODY, group=NOBODY, extra_groups=[os.getegid()]))

    outsider, primary, supplementary = asyncio.run(
        _with_server(path, SampleView(), clients))  # type: ignore[misc]
    assert outsider["success"] is False
    assert "permission denied" in outsider["error"]
    assert primary["success"] is True
    assert supplementary["success"] is True


def test_a_peer_in_more_groups_than_the_kernel_reply_holds_is_looked_up_by_name() -> None:
    # CPython's getsockopt takes 1024 bytes (256 groups); more gives ERANGE
    class Crowded:
        def getsockopt(self, *_args: object) -> bytes:
            raise OSError(errno.ERANGE, "Numerical result out of range")

    uid, gid = os.getuid(), os.getgid()
    expected = set(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    assert control.peer_groups(Crowded(), uid, gid) == expected  # type: ignore[arg-type]
