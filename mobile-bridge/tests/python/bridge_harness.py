"""The harness of the bridge's Python tests and of the end-to-end tests in tests/: a real
doorstep-server with invented demo data, and phones (bridge instances, each with its own
encrypted store).

The script scripts/test-bindings.sh puts the generated bindings (and the cdylib beside them)
on PYTHONPATH and names the server binary in DOORSTEP_SERVER_BIN."""

import asyncio
import json
import os
import re
import secrets
import subprocess
import urllib.request

import pytest

import doorstep_mobile_bridge as bridge

DEMO_PASSWORD = "doorstep-demo"  # invented demo data seeded by `doorstep-server --demo`


class Server:
    """A doorstep-server process on a free port, restartable on the same port and data."""

    def __init__(self, data_dir, extra_args=()):
        self.data_dir = str(data_dir)
        self.extra_args = list(extra_args)
        self.listen = "127.0.0.1:0"
        self.process = None
        self.url = None

    def start(self, demo=True):
        binary = os.environ["DOORSTEP_SERVER_BIN"]
        args = [binary, "--listen", self.listen, "--data-dir", self.data_dir, *self.extra_args]
        if demo:
            args.append("--demo")
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        for line in self.process.stdout:
            match = re.search(r"listening on (http://[0-9.:]+)", line)
            if match:
                self.url = match.group(1)
                self.listen = self.url.removeprefix("http://")
                return self
        raise RuntimeError("the server did not start")

    def stop(self):
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def post(self, path, body, token=None, method="POST"):
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
            method=method,
        )
        if token:
            request.add_header("Authorization", "Bearer " + token)
        with urllib.request.urlopen(request) as response:
            text = response.read()
            return json.loads(text) if text else None

    def admin_token(self):
        reply = self.post(
            "/api/v1/auth/sign-in",
            {
                "username": "admin",
                "password": DEMO_PASSWORD,
                "device_name": "test admin",
                "actor_id": secrets.token_hex(16),
            },
        )
        return reply["access_token"]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("server")).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_server(tmp_path):
    """A server of one's own, for tests that stop it or revoke devices."""
    server = Server(tmp_path / "server").start()
    yield server
    server.stop()


@pytest.fixture
def short_token_server(tmp_path):
    """A server whose access tokens live one second: phones must refresh before every call."""
    server = Server(tmp_path / "server", ["--access-token-ttl-secs", "1"]).start()
    yield server
    server.stop()


def run(awaitable):
    return asyncio.run(awaitable)


class Phones:
    """Makes phones: each a store file with its own random key."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.count = 0

    def new(self, server=None, user="officer"):
        self.count += 1
        path = str(self.tmp_path / f"phone-{self.count}" / "doorstep.db")
        key = secrets.token_bytes(32)
        phone = bridge.Doorstep(path, key)
        phone.path, phone.key = path, key
        phone.set_retry_policy(2, 10, 50)
        if server is not None:
            run(phone.sign_in(server.url, user, DEMO_PASSWORD, f"test phone {self.count}"))
        return phone


@pytest.fixture
def phones(tmp_path):
    return Phones(tmp_path)


def visit(visitors=("officer",), note="Talked about the morning routine.", started="2026-01-05T09:00:00Z"):
    return bridge.HomeVisit(
        started_at=started,
        ended_at="2026-01-05T09:40:00Z",
        location="family home",
        visitors=[bridge.Visitor(user_id=v, name=f"Worker {v}", role="EWO") for v in visitors],
        kind=bridge.VisitKind.UNANNOUNCED,
        outcome=bridge.VisitOutcome.FULL_VISIT,
        attempts=[
            bridge.ContactAttempt(at="2026-01-05T08:15:00Z", outcome=bridge.VisitOutcome.NO_ANSWER, note="no answer, card left"),
            bridge.ContactAttempt(at="2026-01-05T09:00:00Z", outcome=bridge.VisitOutcome.FULL_VISIT, note=None),
        ],
        child_seen=True,
        adults_seen=[],
        discussed=note,
        concerns="",
        safeguarding_flag=False,
        actions_agreed="Walk to school together on Mondays",
        next_visit_on="2026-01-19",
    )


def snapshot(phone, case_id):
    """What a failed call must leave unchanged."""
    view = phone.open_case(case_id)
    return (repr(view), phone.sync_status().pending_changes)
