"""SSH into a guest booted by hand: dropbear in the guest, paramiko here.

Each boot gets a fresh host key and a fresh client key. Both go into the
guest through a second cpio archive appended to the initramfs (the kernel
unpacks concatenated archives), so the base initramfs, and with it every
matrix guest, stays as it is. QEMU's user-mode network forwards one port
of 127.0.0.1 to the guest's port 22 and nothing else reaches in; with
restrict=on the guest cannot reach out either.

The guest's directory keeps what a second terminal needs: ssh.json (port,
key, known_hosts), so `python -m harness ssh --guest DIR` and plain
OpenSSH both work while the guest runs.
"""
import gzip
import io
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import paramiko

from harness.errors import GuestError, HarnessError
from harness.initramfs import Newc

DROPBEAR = Path("/usr/sbin/dropbear")
DROPBEARKEY = Path("/usr/bin/dropbearkey")
GUEST_HOST_KEY = "etc/dropbear/hostkey"


def free_port() -> int:
    """A port on 127.0.0.1 that is free now (QEMU binds it a moment later;
    if something takes it in between, QEMU fails to start and says so)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shared_libs(binary: Path) -> list[Path]:
    """The libraries the dynamic loader would map for binary, and itself."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        # "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or
        # "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vdso has no file.
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            libs.append(Path(path))
    if not libs:
        raise HarnessError(f"ldd found no libraries for {binary}")
    return libs


def _run_keytool(*args: str) -> str:
    res = subprocess.run([str(DROPBEARKEY), *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise HarnessError(f"dropbearkey {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout


def prepare(workdir: Path, port: int) -> Path:
    """Keys for this boot and the cpio overlay that carries dropbear and
    them into the guest; returns the overlay's path."""
    for tool in (DROPBEAR, DROPBEARKEY):
        if not tool.is_file():
            raise HarnessError(f"{tool} is missing: install Debian's dropbear-bin "
                               f"(make deps does)")
    keydir = workdir / "ssh"
    keydir.mkdir(parents=True, exist_ok=True)
    host_key = keydir / "guest-host-key"
    host_key.unlink(missing_ok=True)
    _run_keytool("-t", "ecdsa", "-s", "256", "-f", str(host_key))
    host_pub = next(line for line in _run_keytool("-y", "-f", str(host_key)).splitlines()
                    if line.startswith("ecdsa-"))
    client = paramiko.ECDSAKey.generate(bits=256)
    client_file = keydir / "id_ecdsa"
    client_file.unlink(missing_ok=True)
    client.write_private_key_file(str(client_file))
    os.chmod(client_file, 0o600)
    known = keydir / "known_hosts"
    key_type, key_b64 = host_pub.split()[:2]
    known.write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
    (workdir / "ssh.json").write_text(json.dumps(
        {"port": port, "key": str(client_file.resolve()),
         "known_hosts": str(known.resolve())}, indent=1) + "\n")

    cpio = Newc()
    for d in ("etc/dropbear", "lib64", "lib/x86_64-linux-gnu", "var", "var/run"):
        cpio.add(d, 0o040755)
    cpio.add("root", 0o040700)
    cpio.add("root/.ssh", 0o040700)
    cpio.add("root/.ssh/authorized_keys", 0o100600,
             f"{client.get_name()} {client.get_base64()} harness\n".encode())
    cpio.add(GUEST_HOST_KEY, 0o100600, host_key.read_bytes())
    cpio.add("etc/passwd", 0o100644, b"root:x:0:0:root:/root:/bin/sh\n")
    cpio.add("etc/group", 0o100644, b"root:x:0:\n")
    cpio.add("sbin/dropbear", 0o100755, DROPBEAR.read_bytes())
    for lib in _shared_libs(DROPBEAR):
        cpio.add(str(lib).lstrip("/"), 0o100755, lib.read_bytes())
    overlay = workdir / "ssh-overlay.cpio.gz"
    overlay.write_bytes(gzip.compress(cpio.finish(), compresslevel=1, mtime=0))
    return overlay


def join_initrd(base: Path, overlay: Path, out: Path) -> Path:
    """base followed by overlay: the kernel unpacks one archive after the
    other, the later one adding and replacing files."""
    data = base.read_bytes()
    # Archives after the first must start on a 4-byte boundary; the
    # unpacker skips the zero padding.
    out.write_bytes(data + b"\0" * (-len(data) % 4) + overlay.read_bytes())
    return out


def qemu_args(port: int) -> list[str]:
    return ["-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device", "virtio-net-pci,netdev=net0"]


class GuestSSH:
    """An SSH connection to a guest started with `boot --ssh`."""

    def __init__(self, workdir: Path):
        info = Path(workdir) / "ssh.json"
        if not info.is_file():
            raise HarnessError(f"{workdir} is not the directory of a guest booted with "
                               f"--ssh (no ssh.json)")
        self.info = json.loads(info.read_text())
        self.client: paramiko.SSHClient | None = None

    def connect(self, timeout: float = 60.0) -> "GuestSSH":
        """Retry until the guest's sshd answers. QEMU accepts the TCP
        connection at once and only then tries the guest, so before
        dropbear runs the symptom is a missing banner, not a refusal."""
        key = paramiko.ECDSAKey.from_private_key_file(self.info["key"])
        deadline = time.monotonic() + timeout
        last = "no attempt"
        while time.monotonic() < deadline:
            client = paramiko.SSHClient()
            client.load_host_keys(self.info["known_hosts"])
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                client.connect("127.0.0.1", port=self.info["port"], username="root",
                               pkey=key, allow_agent=False, look_for_keys=False,
                               timeout=5, banner_timeout=5, auth_timeout=5)
                self.client = client
                return self
            except paramiko.BadHostKeyException as e:
                client.close()
                raise HarnessError(f"the guest's host key is not this boot's: {e}") from None
            except (paramiko.SSHException, OSError, EOFError) as e:
                client.close()
                last = f"{type(e).__name__}: {e}"
                time.sleep(0.5)
        raise GuestError(f"ssh: no SSH server on 127.0.0.1:{self.info['port']} within "
                         f"{timeout:.0f} s ({last}); is the guest still up?")

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.close()

    def run(self, command: str, timeout: float = 60.0, stdin: bytes = b"",
            out=None, err=None) -> int:
        """Run command in the guest; copy its output to out/err (binary
        files, default ours); return its exit status."""
        out = out or sys.stdout.buffer
        err = err or sys.stderr.buffer
        chan = self.client.get_transport().open_session(timeout=10)
        chan.settimeout(timeout)
        try:
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            while True:
                got = False
                if chan.recv_ready():
                    out.write(chan.recv(65536))
                    got = True
                if chan.recv_stderr_ready():
                    err.write(chan.recv_stderr(65536))
                    got = True
                if not got:
                    if chan.exit_status_ready() and not chan.recv_ready() \
                            and not chan.recv_stderr_ready():
                        break
                    time.sleep(0.01)
            return chan.recv_exit_status()
        except socket.timeout:
            raise GuestError(f"ssh: {command!r} did not finish within {timeout:.0f} s") \
                from None
        finally:
            chan.close()

    def put(self, local: Path, remote: str) -> None:
        """Copy a file in (the guest has no scp or sftp server: cat will do)."""
        data = Path(local).read_bytes()
        mode = Path(local).stat().st_mode & 0o777
        q = shlex.quote(remote)
        status = self._quiet(f"cat > {q} && chmod {mode:o} {q}", data)
        if status:
            raise GuestError(f"ssh: cannot write {remote} in the guest (status {status})")

    def get(self, remote: str, local: Path) -> None:
        buf = io.BytesIO()
        errors = io.BytesIO()
        status = self.run(f"cat {shlex.quote(remote)}", out=buf, err=errors)
        if status:
            raise GuestError(f"ssh: cannot read {remote} in the guest: "
                             f"{errors.getvalue().decode(errors='replace').strip()}")
        tmp = Path(str(local) + ".part")
        tmp.write_bytes(buf.getvalue())
        os.rename(tmp, local)

    def _quiet(self, command: str, stdin: bytes) -> int:
        return self.run(command, stdin=stdin, out=io.BytesIO(), err=io.BytesIO())

    def shell(self):
        """An interactive shell channel with a pty the size of ours."""
        try:
            cols, rows = os.get_terminal_size()
        except OSError:
            cols, rows = 80, 24
        chan = self.client.get_transport().open_session(timeout=10)
        chan.get_pty(term=os.environ.get("TERM", "vt100"), width=cols, height=rows)
        chan.invoke_shell()
        return chan


def openssh_command(workdir: Path) -> str:
    """The same login with OpenSSH, for people who prefer it."""
    info = json.loads((Path(workdir) / "ssh.json").read_text())
    return (f"ssh -i {info['key']} -p {info['port']} -o UserKnownHostsFile="
            f"{info['known_hosts']} root@127.0.0.1")


def split_remote(spec: str) -> str | None:
    """'guest:/tmp/x' -> '/tmp/x'; a local path -> None."""
    return spec[len("guest:"):] if spec.startswith("guest:") else None
