"""End to end through the Python bindings: a real server and three phones (each its own
encrypted store) record on the same case while offline, including a joint visit and a
concurrent edit of one field; they sync in random orders, some cut off in the middle of a
sync (the server commits, the reply is lost); all three phones and the server end with the
same case file, nothing lost, the conflict listed on every phone; resolving it on one phone
clears it on all after they sync."""

import json
import random
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import doorstep_mobile_bridge as bridge
from bridge_harness import DEMO_PASSWORD, run, visit

CASE = "case-demo-2"  # allocated to both `officer` and `worker`
E = bridge.DoorstepError


class CuttingProxy:
    """Forwards a phone's requests to the server; told to, it lets the server answer and then
    drops the connection before the reply reaches the phone (signal lost mid-sync)."""

    def __init__(self, upstream):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = urllib.request.Request(upstream + self.path, data=body, method="POST")
                for name in ("Content-Type", "Authorization"):
                    if self.headers.get(name):
                        request.add_header(name, self.headers[name])
                try:
                    with urllib.request.urlopen(request) as response:
                        status, payload = response.status, response.read()
                except urllib.error.HTTPError as error:
                    status, payload = error.code, error.read()
                with proxy.lock:
                    cut = proxy.pass_before_cut == 0
                    if proxy.pass_before_cut is not None:
                        proxy.pass_before_cut -= 1
                    if cut:
                        proxy.pass_before_cut = None
                        proxy.cuts += 1
                if cut:
                    self.close_connection = True
                    return  # the server has committed; the phone never hears it
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.lock = threading.Lock()
        self.pass_before_cut = None
        self.cuts = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def cut_after(self, requests):
        with self.lock:
            self.pass_before_cut = requests

    def close(self):
        self.httpd.shutdown()


def server_heads(server, token):
    request = urllib.request.Request(f"{server.url}/api/v1/cases/{CASE}")
    request.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(request) as response:
        reply = json.loads(response.read())
    return reply["heads"], reply["file"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_three_phones_converge_through_random_and_interrupted_syncs(phones, fresh_server, seed):
    rng = random.Random(seed)
    proxies = []
    devices = []
    for user in ("officer", "worker", "officer"):
        proxy = CuttingProxy(fresh_server.url)
        proxies.append(proxy)
        phone = phones.new()
        phone.set_retry_policy(1, 10, 10)
        run(phone.sign_in(proxy.url, user, DEMO_PASSWORD, f"e2e phone {len(devices) + 1}"))
        run(phone.sync_now())
        devices.append(phone)
    a, b, c = devices
    try:
        # A visit everyone has, then edited by two phones at once.
        shared = a.record_visit(CASE, visit(note="agreed note"))
        for phone in devices:
            run(phone.sync_now())

        # Offline.
        joint = a.record_visit(CASE, visit(visitors=("officer", "worker"), note="joint visit"))
        failed = visit(note="nobody home")
        failed.outcome = bridge.VisitOutcome.NO_ANSWER
        failed.child_seen = False
        no_answer = c.record_visit(CASE, failed)
        voice = a.record_voice(CASE, bridge.VoiceEntry(
            speaker=bridge.Speaker.PUPIL, speaker_ref="child-1", tool=bridge.VoiceTool.CONVERSATION,
            words="I like art on Fridays.", scale_value=None, islands=[],
            feelings_about_prosecution=None, visit_id=joint))
        parent = b.record_voice(CASE, bridge.VoiceEntry(
            speaker=bridge.Speaker.PARENT, speaker_ref="adult-1", tool=bridge.VoiceTool.CONVERSATION,
            words="Mornings are a battle.", scale_value=None, islands=[],
            feelings_about_prosecution=None, visit_id=None))
        edit_a, edit_b = visit(note="agreed note"), visit(note="agreed note")
        edit_a.concerns, edit_b.concerns = "tired in the mornings", "worried about the bus"
        a.update_visit(CASE, shared, edit_a)
        b.update_visit(CASE, shared, edit_b)
        expected_visits = {shared, joint, no_answer}
        expected_voice = {voice, parent}

        # Random orders; about a third of the syncs lose a reply midway.
        for round_no in range(4):
            order = [0, 1, 2]
            rng.shuffle(order)
            for position, i in enumerate(order):
                # The first sync of all is always cut, so every seed exercises a lost reply.
                if (round_no, position) == (0, 0) or rng.random() < 0.35:
                    proxies[i].cut_after(rng.choice([0, 1]))
                    try:
                        run(devices[i].sync_now())
                    except E.Network:
                        pass
                    proxies[i].cut_after(None)
                else:
                    run(devices[i].sync_now())
        assert sum(proxy.cuts for proxy in proxies) >= 1
        for _ in range(2):
            for phone in devices:
                run(phone.sync_now())

        token = fresh_server.admin_token()
        heads, server_file = server_heads(fresh_server, token)
        views = [phone.open_case(CASE) for phone in devices]
        assert [v.heads for v in views] == [heads] * 3
        for view in views:
            assert expected_visits <= {v.info.id for v in view.visits}
            assert expected_voice <= {v.info.id for v in view.voice}
            assert view.pending_changes == 0
        assert expected_visits <= {v["id"] for v in server_file["visits"]}
        (joint_record,) = [v for v in views[2].visits if v.info.id == joint]
        assert [v.user_id for v in joint_record.visit.visitors] == ["officer", "worker"]

        conflict_ids = [[cf.id for cf in phone.conflicts(CASE)] for phone in devices]
        assert len(conflict_ids[0]) == 1 and conflict_ids == [conflict_ids[0]] * 3
        (conflict,) = c.conflicts(CASE)
        assert conflict.field_name == "concerns" and conflict.record_id == shared

        c.resolve_conflict(CASE, conflict.id, '"worried about the bus"')
        for phone in (c, a, b, c):
            run(phone.sync_now())
        assert all(phone.conflicts(CASE) == [] for phone in devices)
        heads, _ = server_heads(fresh_server, token)
        assert [phone.open_case(CASE).heads for phone in devices] == [heads] * 3
        (resolved,) = [v for v in a.open_case(CASE).visits if v.info.id == shared]
        assert resolved.visit.concerns == "worried about the bus"
    finally:
        for proxy in proxies:
            proxy.close()
