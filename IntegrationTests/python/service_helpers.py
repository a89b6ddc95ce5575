"""Helpers of the IntegrationTests/python/test_service_*.py suites: a fake systemd notify socket."""
import os
import socket
import tempfile
import time


class NotifySocket:
    """Plays systemd's side of sd_notify: a datagram socket the daemon finds in $NOTIFY_SOCKET."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="moe-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages = []  # each a dict of one datagram's KEY=VALUE lines, with its arrival time

    def poll(self, duration=0.0):
        end = time.time() + duration
        while True:
            try:
                data = self.sock.recv(4096)
                msg = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
                msg["_t"] = time.time()
                self.messages.append(msg)
                continue
            except socket.timeout:
                pass
            if time.time() >= end:
                return self.messages

    def wait_for(self, key, value=None, timeout=10.0, after=0):
        """The first message from index `after` on with `key` (= `value`), waiting up to `timeout`."""
        end = time.time() + timeout
        while time.time() < end:
            self.poll(0.1)
            for i, m in enumerate(self.messages[after:], start=after):
                if key in m and (value is None or m[key] == value):
                    return i, m
        raise AssertionError(f"no {key}={value} within {timeout}s; got {self.messages}")

    def close(self):
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)
