"""Registers the harness's fixtures (a real server, phones with their own stores) for pytest,
and the end-to-end suite's own: staff sign-in and the automerge-repo JS client."""

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from bridge_harness import *  # noqa: F401,F403
from bridge_harness import DEMO_PASSWORD

JS_DIR = Path(__file__).parent / "js"
JS_CLIENT = JS_DIR / "client.mjs"


def _sign_in(server, username, device_name):
    """Registers a device for a demo user (with a random actor) and returns the server's
    token response: access_token, device_id, user."""
    return server.post(
        "/api/v1/auth/sign-in",
        {
            "username": username,
            "password": DEMO_PASSWORD,
            "device_name": device_name,
            "actor_id": secrets.token_hex(16),
        },
    )


class JsClient:
    """Runs tests/end_to_end/js/client.mjs (automerge-repo from npm, on Node.js) for one
    signed-in device against one server."""

    def __init__(self, node):
        self.node = node

    def run(self, server, session, mode, case_ref, expect_ok=True):
        env = dict(
            os.environ,
            DOORSTEP_WS_URL=server.url.replace("http://", "ws://", 1) + "/api/v1/repo/ws",
            DOORSTEP_TOKEN=session["access_token"],
            DOORSTEP_USER_ID=session["user"]["id"],
            DOORSTEP_DEVICE_ID=session["device_id"],
            DOORSTEP_TIMEOUT_MS="30000",
        )
        done = subprocess.run(
            [self.node, str(JS_CLIENT), mode, case_ref],
            cwd=JS_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if expect_ok and done.returncode != 0:
            pytest.fail(f"the JS client failed ({done.returncode}):\n{done.stderr}")
        lines = done.stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else None, done


@pytest.fixture(scope="session")
def js_client():
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is needed for the JS client tests")
    if not (JS_DIR / "node_modules" / "@automerge" / "automerge-repo").is_dir():
        pytest.fail(f"run `npm ci` in {JS_DIR} (scripts/test-bindings.sh --install-only does)")
    return JsClient(node)


@pytest.fixture
def sign_in():
    """sign_in(server, username, device_name): a new device's token response (access_token,
    device_id, user) for a demo user."""
    return _sign_in
