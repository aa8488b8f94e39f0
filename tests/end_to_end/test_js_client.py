"""End to end with a real automerge-repo client: the npm packages `@automerge/automerge-repo`
and `@automerge/automerge-repo-network-websocket` on Node.js (tests/end_to_end/js/client.mjs),
over the server's WebSocket endpoint, and a phone (the mobile bridge through its Python
bindings) over HTTP sync. Both edit the same case file, partly at the same time, and end with
the same case file as the server; a case not allocated to the client's user is unavailable to
it and stays as it was. Invented data only."""

import hashlib
import json
import urllib.request
import uuid

import doorstep_mobile_bridge as bridge
from bridge_harness import run, visit

BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def base58check(payload):
    """Base58 of the bytes and the first four bytes of their double SHA-256, as automerge-repo
    writes document ids and heads."""
    data = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    number = int.from_bytes(data, "big")
    text = ""
    while number:
        number, digit = divmod(number, 58)
        text = BASE58[digit] + text
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + text


def document_id(case_id):
    """The automerge-repo document id of a case `case-<uuid>`: base58check of the UUID's bytes."""
    return base58check(uuid.UUID(case_id.removeprefix("case-")).bytes)


def js_heads(server_heads):
    """The server's heads (sorted hex, comma-separated) as automerge-repo writes heads."""
    return sorted(base58check(bytes.fromhex(h)) for h in server_heads.split(",") if h)


def new_case(server, lead, reference, allocate_to):
    """A case created by the school's attendance lead (its id is `case-<uuid>`), allocated."""
    details = {
        "reference": reference,
        "school_id": "school-riverside",
        "school_name": "Riverside Primary (invented)",
        "stage": "stage 1",
        "lead_practitioner": lead["user"]["id"],
        "status": "open",
    }
    case_id = server.post("/api/v1/cases", {"details": details}, lead["access_token"])["case_id"]
    for user_id in allocate_to:
        server.post(
            f"/api/v1/cases/{case_id}/allocations/{user_id}", None, lead["access_token"], "PUT"
        )
    return case_id


def read_case(server, token, case_id):
    request = urllib.request.Request(f"{server.url}/api/v1/cases/{case_id}")
    request.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(request) as response:
        reply = json.loads(response.read())
    return reply["heads"], reply["file"]


def ids(records):
    return {record["id"] for record in records}


def test_a_js_client_and_a_phone_edit_one_case_and_converge(
    fresh_server, phones, sign_in, js_client
):
    lead = sign_in(fresh_server, "lead", "e2e lead laptop")
    case_id = new_case(fresh_server, lead, "ATT-E2E-JS-0001", ["user-officer"])
    doc_id = document_id(case_id)
    url = "automerge:" + doc_id

    # The phone gets the case, records a visit offline and syncs it.
    phone = phones.new(fresh_server, user="officer")
    run(phone.sync_now())
    assert case_id in {c.case_id for c in phone.caseload()}
    first_visit = phone.record_visit(case_id, visit(note="Talked about the walk to school."))
    assert phone.open_case(case_id).pending_changes > 0
    run(phone.sync_now())
    assert phone.open_case(case_id).pending_changes == 0
    # Offline again: a second visit the server does not have while the JS client edits.
    failed = visit(note="Nobody home.")
    failed.outcome = bridge.VisitOutcome.NO_ANSWER
    failed.child_seen = False
    second_visit = phone.record_visit(case_id, failed)

    # The JS client (its own device of the same user) adds a contact entry over WebSocket.
    js = sign_in(fresh_server, "officer", "e2e js client")
    edited, _ = js_client.run(fresh_server, js, "edit", url)
    contact_id = edited["added_contact"]
    assert edited["document_id"] == doc_id
    assert edited["seen"]["case_id"] == case_id
    assert ids(edited["seen"]["visits"]) == {first_visit}
    # A fresh client reads back from the server exactly what this one holds.
    assert edited["server"] == edited["seen"]
    assert ids(edited["server"]["contacts"]) == {contact_id}
    assert edited["server"]["actors"][edited["actor"]] == {
        "user_id": js["user"]["id"],
        "device_id": js["device_id"],
    }
    heads, file = read_case(fresh_server, lead["access_token"], case_id)
    assert js_heads(heads) == sorted(edited["heads"])
    (stored,) = file["contacts"]
    assert stored["id"] == contact_id
    assert stored["author"] == {"user_id": js["user"]["id"], "device_id": js["device_id"]}
    assert stored["body"]["kind"] == "call" and stored["body"]["engaged"] is True

    # The phone syncs: its offline visit goes up, the JS client's contact entry comes down.
    run(phone.sync_now())
    view = phone.open_case(case_id)
    assert view.pending_changes == 0
    assert {v.info.id for v in view.visits} == {first_visit, second_visit}
    (contact,) = view.contacts
    assert contact.info.id == contact_id
    assert contact.info.author_device_id == js["device_id"]
    assert contact.entry.kind == bridge.ContactKind.CALL
    assert contact.entry.with_whom == "adult-1"
    assert contact.entry.outcome == "Phoned to arrange the next visit; agreed Tuesday."
    assert view.conflicts == []

    # All three hold the same case file: both visits and the contact entry.
    heads, file = read_case(fresh_server, lead["access_token"], case_id)
    assert view.heads == heads
    assert ids(file["visits"]) == {first_visit, second_visit}
    assert ids(file["contacts"]) == {contact_id}
    seen, _ = js_client.run(fresh_server, js, "read", url)
    assert sorted(seen["heads"]) == js_heads(heads)
    assert ids(seen["server"]["visits"]) == {first_visit, second_visit}
    assert ids(seen["server"]["contacts"]) == {contact_id}


def test_a_case_not_allocated_to_the_js_clients_user_is_unavailable(
    fresh_server, sign_in, js_client
):
    lead = sign_in(fresh_server, "lead", "e2e lead laptop")
    case_id = new_case(fresh_server, lead, "ATT-E2E-JS-0002", ["user-worker"])
    before = read_case(fresh_server, lead["access_token"], case_id)

    officer = sign_in(fresh_server, "officer", "e2e js client")
    for ref in (case_id.removeprefix("case-"), "automerge:" + document_id(case_id)):
        answer, done = js_client.run(fresh_server, officer, "unavailable", ref)
        assert answer["unavailable"] is True, done.stderr
    # A case that does not exist gets the same answer.
    answer, _ = js_client.run(fresh_server, officer, "unavailable", str(uuid.uuid4()))
    assert answer["unavailable"] is True
    assert read_case(fresh_server, lead["access_token"], case_id) == before

    # The same document is there for the user it is allocated to.
    worker = sign_in(fresh_server, "worker", "e2e js client")
    seen, _ = js_client.run(fresh_server, worker, "read", case_id.removeprefix("case-"))
    assert seen["server"]["case_id"] == case_id
    assert sorted(seen["heads"]) == js_heads(before[0])
