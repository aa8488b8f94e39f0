"""Evidence uploads from the phone, through the Python bindings, against a real server: the
file goes up in chunks after the case files, with progress; the server's signed receipt is
verified on the phone and recorded against the evidence item (and verifies with the
documented openssl command); an upload cut off mid-chunk resumes from the server's offset;
the server's limits are checked before a byte is sent; an altered receipt is refused.

The files are invented random bytes."""

import base64
import hashlib
import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import doorstep_mobile_bridge as bridge
from bridge_harness import DEMO_PASSWORD, Server, run

CASE = "case-demo-1"
MIB = 1024 * 1024


class Recorder(bridge.SyncListener):
    def __init__(self):
        self.progress = []

    def on_progress(self, progress):
        self.progress.append(progress)

    def on_status(self, status):
        pass


class Proxy:
    """Forwards the phone's requests to the server, counting the bytes of uploaded chunks.
    Told to, it cuts the connection in the middle of the next chunk (half the body reaches the
    server, then both connections close), or alters the receipt in the server's answers."""

    def __init__(self, upstream):
        proxy = self
        self.upstream = upstream.removeprefix("http://")
        self.lock = threading.Lock()
        self.cut_next_chunk = False
        self.cuts = 0
        self.chunk_bytes = 0
        self.alter_receipts = False

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {
                    name: value
                    for name, value in self.headers.items()
                    if name.lower() in ("content-type", "authorization")
                }
                if self.command == "PUT":
                    with proxy.lock:
                        cut, proxy.cut_next_chunk = proxy.cut_next_chunk, False
                        proxy.chunk_bytes += len(body) // 2 if cut else len(body)
                    if cut:
                        proxy.cut_mid_body(self.command, self.path, headers, body)
                        proxy.cuts += 1
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                connection = http.client.HTTPConnection(proxy.upstream, timeout=30)
                connection.request(self.command, self.path, body=body or None, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                if proxy.alter_receipts and b'"receipt":{' in payload:
                    answer = json.loads(payload)
                    answer["receipt"]["received_at"] += 1
                    payload = json.dumps(answer).encode()
                self.send_response(response.status)
                for name in ("Content-Type", "Upload-Offset"):
                    if response.getheader(name):
                        self.send_header(name, response.getheader(name))
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                connection.close()

            do_GET = do_POST = do_PUT = forward

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def cut_mid_body(self, method, path, headers, body):
        """Sends the request with its full Content-Length but only half the body, then closes:
        what the server sees when the signal drops mid-chunk."""
        host, port = self.upstream.split(":")
        with socket.create_connection((host, int(port))) as upstream:
            head = f"{method} {path} HTTP/1.1\r\nHost: {self.upstream}\r\n"
            head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            upstream.sendall(head.encode() + body[: len(body) // 2])
            upstream.shutdown(socket.SHUT_WR)
            upstream.settimeout(10)
            try:
                while upstream.recv(65536):
                    pass
            except OSError:
                pass

    def close(self):
        self.httpd.shutdown()


def signed_in_phone(phones, url, user="officer"):
    """A phone signed in through `url` (the server or a proxy before it), its caseload synced."""
    phone = phones.new()
    run(phone.sign_in(url, user, DEMO_PASSWORD, "evidence test phone"))
    run(phone.sync_now())
    return phone


def attach(phone, tmp_path, size, media_type="image/jpeg", name="photo.jpg"):
    path = tmp_path / name
    path.write_bytes(secrets.token_bytes(size))
    evidence_id = phone.attach_evidence(
        CASE,
        bridge.EvidenceInput(
            file_path=str(path), kind=bridge.EvidenceKind.PHOTO, media_type=media_type,
            captured_at="2026-01-05T09:30:00Z", captured_where=None, related_record=None,
            description="invented test photo",
        ),
    )
    return evidence_id, path.read_bytes()


def item(phone, evidence_id):
    (found,) = [e for e in phone.open_case(CASE).evidence if e.info.id == evidence_id]
    return found


def token(server, user="officer"):
    reply = server.post(
        "/api/v1/auth/sign-in",
        {"username": user, "password": DEMO_PASSWORD, "device_name": "test reader",
         "actor_id": secrets.token_hex(16)},
    )
    return reply["access_token"]


def download(server, sha256, user="officer"):
    request = urllib.request.Request(f"{server.url}/api/v1/cases/{CASE}/evidence/{sha256}")
    request.add_header("Authorization", "Bearer " + token(server, user))
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_a_photo_uploads_in_chunks_with_progress_and_a_verified_receipt(phones, server, tmp_path):
    phone = signed_in_phone(phones, server.url)
    size = 2 * MIB + 12345
    evidence_id, data = attach(phone, tmp_path, size)
    sha256 = hashlib.sha256(data).hexdigest()
    before = item(phone, evidence_id).upload
    assert before.state == bridge.UploadState.PENDING and before.receipt is None

    recorder = Recorder()
    phone.set_sync_listener(recorder)
    report = run(phone.sync_now())
    assert (report.evidence_uploaded, report.evidence_pending) == (1, 0)

    upload = item(phone, evidence_id).upload
    assert upload.state == bridge.UploadState.UPLOADED
    assert upload.uploaded_bytes == size and upload.last_error is None
    receipt = upload.receipt
    assert (receipt.case_id, receipt.sha256, receipt.size_bytes) == (CASE, sha256, size)
    assert receipt.media_type == "image/jpeg"
    assert receipt.uploader_user_id == phone.account().user_id
    assert receipt.uploader_device_id == phone.account().device_id

    # Progress: the document rounds, then one report per chunk (1 MiB each) up to the total.
    evidence = [p for p in recorder.progress if p.phase == bridge.SyncPhase.EVIDENCE]
    assert recorder.progress[0].phase == bridge.SyncPhase.DOCUMENTS
    acknowledged = [p.evidence_bytes_acknowledged for p in evidence]
    assert acknowledged == sorted(acknowledged) and acknowledged[-1] == size
    assert {p.evidence_bytes_total for p in evidence} == {size}
    assert len(set(acknowledged)) >= 3, acknowledged

    # The server holds exactly these bytes.
    assert download(server, sha256) == (200, data)

    # The receipt verifies offline with the server's key, as the README documents.
    if shutil.which("openssl"):
        key = json.loads(urllib.request.urlopen(f"{server.url}/api/v1/evidence/public-key").read())
        signed = (
            f"doorstep-evidence-receipt-v1\nreceipt_id={receipt.receipt_id}\ncase_id={receipt.case_id}\n"
            f"sha256={receipt.sha256}\nsize={receipt.size_bytes}\nmedia_type={receipt.media_type}\n"
            f"uploader_user_id={receipt.uploader_user_id}\n"
            f"uploader_device_id={receipt.uploader_device_id}\nreceived_at={receipt.received_at_ms}\n"
        )
        (tmp_path / "pub.pem").write_text(key["public_key_pem"])
        (tmp_path / "receipt.txt").write_text(signed)
        (tmp_path / "receipt.sig").write_bytes(base64.b64decode(receipt.signature))
        verified = subprocess.run(
            ["openssl", "pkeyutl", "-verify", "-pubin", "-rawin", "-inkey", tmp_path / "pub.pem",
             "-in", tmp_path / "receipt.txt", "-sigfile", tmp_path / "receipt.sig"],
            capture_output=True,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr

    # Nothing is sent again.
    again = run(phone.sync_now())
    assert (again.evidence_uploaded, again.evidence_pending) == (0, 0)


def test_an_upload_cut_mid_chunk_resumes_from_the_servers_offset(phones, server, tmp_path):
    proxy = Proxy(server.url)
    try:
        phone = signed_in_phone(phones, proxy.url)
        size = 3 * MIB
        evidence_id, data = attach(phone, tmp_path, size)
        # Let the first chunk through, then cut the second halfway.
        sent = {"chunks": 0}

        class CutSecond(bridge.SyncListener):
            def on_progress(self, progress):
                if progress.phase == bridge.SyncPhase.EVIDENCE:
                    sent["chunks"] += 1
                    if sent["chunks"] == 2:
                        with proxy.lock:
                            proxy.cut_next_chunk = True

            def on_status(self, status):
                pass

        phone.set_sync_listener(CutSecond())
        report = run(phone.sync_now())
        assert proxy.cuts == 1
        assert (report.evidence_uploaded, report.evidence_pending) == (1, 0)
        upload = item(phone, evidence_id).upload
        assert upload.state == bridge.UploadState.UPLOADED
        # The resume re-sent only the cut chunk: the file plus the half that was lost.
        assert proxy.chunk_bytes == size + MIB // 2, proxy.chunk_bytes
        assert download(server, hashlib.sha256(data).hexdigest()) == (200, data)
    finally:
        proxy.close()


def test_an_upload_interrupted_between_syncs_resumes_in_the_next(phones, fresh_server, tmp_path):
    phone = signed_in_phone(phones, fresh_server.url)
    evidence_id, data = attach(phone, tmp_path, 3 * MIB)
    stopped = {"done": False}

    class StopAfterFirstChunk(bridge.SyncListener):
        def on_progress(self, progress):
            if progress.phase == bridge.SyncPhase.EVIDENCE and progress.evidence_bytes_acknowledged >= MIB and not stopped["done"]:
                stopped["done"] = True
                fresh_server.stop()

        def on_status(self, status):
            pass

    phone.set_sync_listener(StopAfterFirstChunk())
    report = run(phone.sync_now())
    assert (report.evidence_uploaded, report.evidence_pending) == (0, 1)
    upload = item(phone, evidence_id).upload
    assert upload.state == bridge.UploadState.UPLOADING
    assert upload.uploaded_bytes == MIB and upload.last_error.startswith("network")

    phone.set_sync_listener(None)
    fresh_server.start(demo=False)
    report = run(phone.sync_now())
    assert (report.evidence_uploaded, report.evidence_pending) == (1, 0)
    assert item(phone, evidence_id).upload.state == bridge.UploadState.UPLOADED
    assert download(fresh_server, hashlib.sha256(data).hexdigest()) == (200, data)


def test_the_servers_limits_are_checked_before_sending(phones, tmp_path):
    server = Server(tmp_path / "server", ["--evidence-max-bytes", "4096"]).start()
    proxy = Proxy(server.url)
    try:
        phone = signed_in_phone(phones, proxy.url)
        big_id, big = attach(phone, tmp_path, 5000, name="big.jpg")
        gif_id, gif = attach(phone, tmp_path, 100, media_type="image/gif", name="anim.gif")
        report = run(phone.sync_now())
        assert (report.evidence_uploaded, report.evidence_pending) == (0, 2)
        big_upload = item(phone, big_id).upload
        assert big_upload.state == bridge.UploadState.PENDING
        assert big_upload.last_error.startswith("file_too_large"), big_upload.last_error
        assert item(phone, gif_id).upload.last_error.startswith("media_type_refused")
        assert proxy.chunk_bytes == 0, "not a byte was sent"
        for data in (big, gif):
            assert download(server, hashlib.sha256(data).hexdigest())[0] == 404
    finally:
        proxy.close()
        server.stop()


def test_an_altered_receipt_is_refused_and_the_file_stays_pending(phones, server, tmp_path):
    proxy = Proxy(server.url)
    try:
        phone = signed_in_phone(phones, proxy.url)
        evidence_id, data = attach(phone, tmp_path, 1000)
        proxy.alter_receipts = True
        report = run(phone.sync_now())
        assert (report.evidence_uploaded, report.evidence_pending) == (0, 1)
        upload = item(phone, evidence_id).upload
        assert upload.state == bridge.UploadState.PENDING and upload.receipt is None
        assert upload.last_error.startswith("receipt_refused"), upload.last_error

        # With the true receipt it is recorded (the server answers the retry with it again).
        proxy.alter_receipts = False
        report = run(phone.sync_now())
        assert report.evidence_uploaded == 1
        assert item(phone, evidence_id).upload.receipt.sha256 == hashlib.sha256(data).hexdigest()
    finally:
        proxy.close()
