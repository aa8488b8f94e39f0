"""The phone core through its generated Python bindings, against a real server.

Fixtures are invented; the demo accounts and cases come from `doorstep-server --demo`."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import doorstep_mobile_bridge as bridge
from bridge_harness import DEMO_PASSWORD, run, snapshot, visit

CASE = "case-demo-1"
SHARED_CASE = "case-demo-2"  # allocated to both `officer` and `worker`
E = bridge.DoorstepError


def synced_phone(phones, server, user="officer"):
    phone = phones.new(server, user)
    report = run(phone.sync_now())
    assert report.cases_received >= 1
    return phone


# --- opening the store ---------------------------------------------------------------------


def test_wrong_key_is_a_typed_error_and_the_right_key_still_opens(phones, server):
    phone = synced_phone(phones, server)
    visit_id = phone.record_visit(CASE, visit())
    phone.close_store()
    with pytest.raises(E.WrongKey):
        bridge.Doorstep(phone.path, bytes(32))
    reopened = bridge.Doorstep(phone.path, phone.key)
    assert visit_id in [v.info.id for v in reopened.open_case(CASE).visits]


def test_a_key_of_the_wrong_length_is_refused(phones):
    with pytest.raises(E.InvalidInput) as raised:
        bridge.Doorstep(str(phones.tmp_path / "short.db"), b"short")
    assert raised.value.fields == ["key"]


def test_a_closed_store_refuses_every_call(phones, server):
    phone = synced_phone(phones, server)
    phone.close_store()
    with pytest.raises(E.StoreClosed):
        phone.caseload()
    with pytest.raises(E.StoreClosed):
        phone.record_visit(CASE, visit())
    with pytest.raises(E.StoreClosed):
        run(phone.sync_now())


def test_nothing_is_readable_before_sign_in(phones):
    phone = phones.new()
    assert phone.account() is None
    with pytest.raises(E.NotSignedIn):
        phone.caseload()
    with pytest.raises(E.NotSignedIn):
        phone.record_visit(CASE, visit())
    with pytest.raises(E.NotSignedIn):
        run(phone.sync_now())


def test_wrong_password_is_a_typed_error(phones, server):
    phone = phones.new()
    with pytest.raises(E.InvalidCredentials):
        run(phone.sign_in(server.url, "officer", "not the password", "test phone"))
    with pytest.raises(E.InvalidInput):
        run(phone.sign_in("not a url", "officer", DEMO_PASSWORD, "test phone"))
    assert phone.account() is None


# --- offline work --------------------------------------------------------------------------


def test_caseload_comes_from_the_local_store(phones, server):
    phone = synced_phone(phones, server)
    account = phone.account()
    assert account.actor_id and account.device_id
    cases = {c.case_id: c for c in phone.caseload()}
    assert set(cases) == {"case-demo-1", "case-demo-2"}
    assert cases[CASE].reference == "ATT-DEMO-0001"
    assert cases[CASE].status == bridge.CaseStatus.OPEN
    assert cases[CASE].pending_changes == 0


def test_record_a_joint_visit_with_failed_attempts_and_sync_it(phones, server):
    phone = synced_phone(phones, server)
    visit_id = phone.record_visit(CASE, visit(visitors=("officer", "worker")))
    view = phone.open_case(CASE)
    (record,) = [v for v in view.visits if v.info.id == visit_id]
    assert [v.user_id for v in record.visit.visitors] == ["officer", "worker"]
    assert record.visit.attempts[0].outcome == bridge.VisitOutcome.NO_ANSWER
    assert record.info.author_user_id == phone.account().user_id
    assert record.info.author_device_id == phone.account().device_id
    assert view.pending_changes >= 1
    assert phone.sync_status().pending_changes >= 1

    report = run(phone.sync_now())
    assert report.pending_changes == 0
    status = phone.sync_status()
    assert status.pending_changes == 0 and status.last_success is not None

    # Another phone of another worker on the same case sees it after syncing.
    other = synced_phone(phones, server, "worker")
    shared_id = phone.record_visit(SHARED_CASE, visit())
    run(phone.sync_now())
    run(other.sync_now())
    assert shared_id in [v.info.id for v in other.open_case(SHARED_CASE).visits]


def test_voice_evidence_contacts_targets(phones, server, tmp_path):
    phone = synced_phone(phones, server)
    pupil = phone.record_voice(
        CASE,
        bridge.VoiceEntry(
            speaker=bridge.Speaker.PUPIL, speaker_ref="child-1", tool=bridge.VoiceTool.SCALING_THERMOMETER,
            words="Mornings feel like a seven.", scale_value=7, islands=[],
            feelings_about_prosecution=None, visit_id=None,
        ),
    )
    parent = phone.record_voice(
        CASE,
        bridge.VoiceEntry(
            speaker=bridge.Speaker.PARENT, speaker_ref="adult-1", tool=bridge.VoiceTool.CONVERSATION,
            words="The bus is the hard part.", scale_value=None, islands=[],
            feelings_about_prosecution=None, visit_id=None,
        ),
    )
    drawing = tmp_path / "drawing.jpg"
    drawing.write_bytes(b"\xff\xd8 invented drawing bytes " * 100)
    evidence_id = phone.attach_evidence(
        CASE,
        bridge.EvidenceInput(
            file_path=str(drawing), kind=bridge.EvidenceKind.DRAWING, media_type="image/jpeg",
            captured_at="2026-01-05T09:30:00Z",
            captured_where=bridge.GeoPoint(latitude=53.0, longitude=-1.5, accuracy_m=10.0),
            related_record=bridge.RecordRef(collection=bridge.RecordKind.VOICE, id=pupil),
            description="ideal school drawing",
        ),
    )
    contact = phone.add_contact(
        CASE,
        bridge.ContactEntry(
            kind=bridge.ContactKind.LETTER, at="2026-01-06T10:00:00Z", letter_number=1, meeting=None,
            with_whom="parents", outcome="posted first class", engaged=False,
            legal_action_warned=False, evidence_id=None,
        ),
    )
    target = phone.set_target(
        CASE,
        bridge.Target(
            description="Attend every Monday for four weeks", owner="parents",
            starts_on="2026-01-05", review_on="2026-02-02", ends_on="2026-03-02",
            outcome=None, review_notes="",
        ),
    )
    phone.review_target(CASE, target, bridge.TargetOutcome.PARTLY_ACHIEVED, "Three Mondays of four.")

    view = phone.open_case(CASE)
    assert {v.info.id for v in view.voice} == {pupil, parent}
    (item,) = view.evidence
    assert item.info.id == evidence_id and item.file_on_device
    assert item.item.sha256 == hashlib.sha256(drawing.read_bytes()).hexdigest()
    assert item.item.size_bytes == drawing.stat().st_size
    assert item.item.captured_by == phone.account().user_id
    assert item.item.related_record.id == pupil
    assert phone.evidence_file(CASE, evidence_id) == drawing.read_bytes()
    assert [c.info.id for c in view.contacts] == [contact]
    (reviewed,) = view.targets
    assert reviewed.target.outcome == bridge.TargetOutcome.PARTLY_ACHIEVED
    run(phone.sync_now())
    assert phone.sync_status().pending_changes == 0


def test_finalise_then_amend_with_a_reason(phones, server):
    phone = synced_phone(phones, server)
    visit_id = phone.record_visit(CASE, visit(note="first note"))
    with pytest.raises(E.NotFinalised):
        phone.amend(CASE, bridge.RecordKind.VISITS, visit_id, "discussed", '"x"', "typo")
    phone.finalise(CASE, bridge.RecordKind.VISITS, visit_id)
    with pytest.raises(E.Finalised):
        phone.update_visit(CASE, visit_id, visit(note="silently changed"))
    with pytest.raises(E.InvalidInput):
        phone.amend(CASE, bridge.RecordKind.VISITS, visit_id, "discussed", '"x"', "  ")
    phone.amend(CASE, bridge.RecordKind.VISITS, visit_id, "discussed", '"corrected note"', "wrong family named")
    (record,) = [v for v in phone.open_case(CASE).visits if v.info.id == visit_id]
    assert record.visit.discussed == "corrected note"
    assert record.info.finalised is not None
    (amendment,) = record.info.amendments
    assert json.loads(amendment.original_json) == "first note"
    assert amendment.reason == "wrong family named"


# --- bad input: a typed error, and the store as it was ---------------------------------------


def test_unknown_ids(phones, server):
    phone = synced_phone(phones, server)
    before = snapshot(phone, CASE)
    with pytest.raises(E.NotFound):
        phone.open_case("case-that-does-not-exist")
    with pytest.raises(E.NotFound):
        phone.record_visit("case-that-does-not-exist", visit())
    with pytest.raises(E.NotFound):
        phone.finalise(CASE, bridge.RecordKind.VISITS, "no-such-visit")
    with pytest.raises(E.NotFound):
        phone.review_target(CASE, "no-such-target", bridge.TargetOutcome.ACHIEVED, "")
    with pytest.raises(E.StaleConflict):
        phone.resolve_conflict(CASE, "no-such-conflict", '"x"')
    with pytest.raises(E.InvalidInput):
        phone.open_case("")
    assert snapshot(phone, CASE) == before


def test_missing_required_fields(phones, server):
    phone = synced_phone(phones, server)
    before = snapshot(phone, CASE)
    no_location = visit()
    no_location.location = "  "
    with pytest.raises(E.InvalidInput) as raised:
        phone.record_visit(CASE, no_location)
    assert "location" in raised.value.fields
    nobody = visit(visitors=())
    with pytest.raises(E.InvalidInput) as raised:
        phone.record_visit(CASE, nobody)
    assert "visitors" in raised.value.fields
    no_scale = bridge.VoiceEntry(
        speaker=bridge.Speaker.PUPIL, speaker_ref="child-1", tool=bridge.VoiceTool.FIVE_POINT_SCALE,
        words="ok", scale_value=None, islands=[], feelings_about_prosecution=None, visit_id=None,
    )
    with pytest.raises(E.InvalidInput) as raised:
        phone.record_voice(CASE, no_scale)
    assert "scale_value" in raised.value.fields
    assert snapshot(phone, CASE) == before


def test_invalid_dates(phones, server):
    phone = synced_phone(phones, server)
    before = snapshot(phone, CASE)
    with pytest.raises(E.InvalidInput) as raised:
        phone.record_visit(CASE, visit(started="2026-02-30T09:00:00Z"))
    assert raised.value.fields == ["started_at"]
    backwards = bridge.Target(
        description="d", owner="o", starts_on="2026-03-01", review_on="2026-02-01",
        ends_on="2026-04-01", outcome=None, review_notes="",
    )
    with pytest.raises(E.InvalidInput) as raised:
        phone.set_target(CASE, backwards)
    assert "review_on" in raised.value.fields
    not_a_date = visit()
    not_a_date.next_visit_on = "next tuesday"
    with pytest.raises(E.InvalidInput):
        phone.record_visit(CASE, not_a_date)
    assert snapshot(phone, CASE) == before


def test_oversized_values(phones, server, tmp_path):
    phone = synced_phone(phones, server)
    before = snapshot(phone, CASE)
    with pytest.raises(E.InvalidInput) as raised:
        phone.record_visit(CASE, visit(note="x" * 20_001))
    assert raised.value.fields == ["discussed"]
    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as f:
        f.truncate(32 * 1024 * 1024 + 1)  # one byte over the bridge's limit (sparse file)
    with pytest.raises(E.TooLarge):
        phone.attach_evidence(
            CASE,
            bridge.EvidenceInput(
                file_path=str(huge), kind=bridge.EvidenceKind.PHOTO, media_type="image/jpeg",
                captured_at="2026-01-05T09:30:00Z", captured_where=None, related_record=None,
                description="",
            ),
        )
    with pytest.raises(E.TooLarge):
        phone.open_case("c" * 1000)
    assert snapshot(phone, CASE) == before


def test_calls_after_sign_out(phones, server):
    phone = synced_phone(phones, server)
    visit_id = phone.record_visit(CASE, visit())
    phone.sign_out()
    for call in (
        phone.caseload,
        lambda: phone.open_case(CASE),
        lambda: phone.record_visit(CASE, visit()),
        phone.sync_status,
        phone.sign_out,
        lambda: run(phone.sync_now()),
    ):
        with pytest.raises(E.NotSignedIn):
            call()
    # Signing in again as the same user brings the unsynced work back.
    run(phone.sign_in(server.url, "officer", DEMO_PASSWORD, "test phone"))
    assert visit_id in [v.info.id for v in phone.open_case(CASE).visits]
    assert phone.sync_status().pending_changes >= 1


def test_another_user_cannot_sign_in_on_a_store_that_is_not_theirs(phones, server):
    phone = synced_phone(phones, server)
    phone.sign_out()
    with pytest.raises(E.StoreOwnedByAnotherUser):
        run(phone.sign_in(server.url, "worker", DEMO_PASSWORD, "test phone"))
    phone.wipe()
    run(phone.sign_in(server.url, "worker", DEMO_PASSWORD, "test phone"))
    assert phone.caseload() == []


# --- durability, sync, conflicts -------------------------------------------------------------


def test_a_write_survives_the_process_being_killed(phones, server):
    phone = synced_phone(phones, server)
    phone.close_store()
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import doorstep_mobile_bridge as bridge
        from bridge_harness import visit
        phone = bridge.Doorstep({phone.path!r}, bytes.fromhex({phone.key.hex()!r}))
        visit_id = phone.record_visit({CASE!r}, visit(note="written just before the kill"))
        print(visit_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    visit_id = result.stdout.strip()
    reopened = bridge.Doorstep(phone.path, phone.key)
    (record,) = [v for v in reopened.open_case(CASE).visits if v.info.id == visit_id]
    assert record.visit.discussed == "written just before the kill"
    assert reopened.sync_status().pending_changes >= 1


class Recorder(bridge.SyncListener):
    def __init__(self):
        self.progress = []
        self.statuses = []

    def on_progress(self, progress):
        self.progress.append(progress)

    def on_status(self, status):
        self.statuses.append(status)


def test_listener_hears_progress_and_status(phones, server):
    phone = phones.new(server)
    recorder = Recorder()
    phone.set_sync_listener(recorder)
    run(phone.sync_now())
    assert recorder.progress and recorder.progress[0].round == 1
    assert recorder.statuses[-1].last_success is not None
    assert not recorder.statuses[-1].syncing


def test_retries_then_resumes_after_the_server_comes_back(phones, fresh_server):
    phone = synced_phone(phones, fresh_server)
    visit_id = phone.record_visit(CASE, visit())
    recorder = Recorder()
    phone.set_sync_listener(recorder)
    fresh_server.stop()
    with pytest.raises(E.Network):
        run(phone.sync_now())
    status = phone.sync_status()
    assert status.pending_changes >= 1 and status.last_error
    assert len(recorder.statuses) >= 2  # one per failed attempt, then the final one
    fresh_server.start(demo=False)
    report = run(phone.sync_now())
    assert report.pending_changes == 0
    other = synced_phone(phones, fresh_server)
    assert visit_id in [v.info.id for v in other.open_case(CASE).visits]


def test_concurrent_edits_conflict_on_both_phones_and_resolving_clears_it(phones, server):
    a = synced_phone(phones, server, "officer")
    b = synced_phone(phones, server, "worker")
    visit_id = a.record_visit(SHARED_CASE, visit(note="agreed note"))
    run(a.sync_now())
    run(b.sync_now())
    mine, theirs = visit(note="agreed note"), visit(note="agreed note")
    mine.concerns = "tired in the mornings"
    theirs.concerns = "worried about the bus"
    a.update_visit(SHARED_CASE, visit_id, mine)
    b.update_visit(SHARED_CASE, visit_id, theirs)
    for phone in (a, b, a):
        run(phone.sync_now())
    (conflict,) = a.conflicts(SHARED_CASE)
    assert [c.id for c in b.conflicts(SHARED_CASE)] == [conflict.id]
    assert conflict.field_name == "concerns" and conflict.record_id == visit_id
    assert {json.loads(v.value_json) for v in conflict.values} == {
        "tired in the mornings", "worried about the bus"}
    with pytest.raises(E.InConflict):
        b.finalise(SHARED_CASE, bridge.RecordKind.VISITS, visit_id)
    with pytest.raises(E.InvalidInput):
        b.resolve_conflict(SHARED_CASE, conflict.id, '"neither value"')
    b.resolve_conflict(SHARED_CASE, conflict.id, '"worried about the bus"')
    for phone in (b, a):
        run(phone.sync_now())
    assert a.conflicts(SHARED_CASE) == [] and b.conflicts(SHARED_CASE) == []
    (record,) = [v for v in a.open_case(SHARED_CASE).visits if v.info.id == visit_id]
    assert record.visit.concerns == "worried about the bus"


def test_a_revoked_device_is_wiped(phones, fresh_server):
    phone = synced_phone(phones, fresh_server)
    phone.record_visit(CASE, visit())
    device_id = phone.account().device_id
    fresh_server.post(f"/api/v1/devices/{device_id}/revoke", {}, fresh_server.admin_token())
    with pytest.raises(E.DeviceRevoked):
        run(phone.sync_now())
    assert phone.account() is None
    with pytest.raises(E.NotSignedIn):
        phone.caseload()
    phone.close_store()
    with open(phone.path, "rb") as f:
        assert b"family home" not in f.read()  # encrypted at rest, and wiped


def test_a_deallocated_case_is_dropped_with_its_evidence(phones, fresh_server, tmp_path):
    phone = synced_phone(phones, fresh_server)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"invented photo bytes")
    phone.attach_evidence(
        CASE,
        bridge.EvidenceInput(
            file_path=str(photo), kind=bridge.EvidenceKind.PHOTO, media_type="image/jpeg",
            captured_at="2026-01-05T09:30:00Z", captured_where=None, related_record=None,
            description="front door",
        ),
    )
    run(phone.sync_now())
    user_id = phone.account().user_id
    fresh_server.post(
        f"/api/v1/cases/{CASE}/allocations/{user_id}", None, fresh_server.admin_token(), method="DELETE"
    )
    report = run(phone.sync_now())
    assert report.cases_dropped == [CASE]
    assert CASE not in [c.case_id for c in phone.caseload()]
    with pytest.raises(E.NotFound):
        phone.open_case(CASE)
    # The other case is untouched.
    assert [c.case_id for c in phone.caseload()] == [SHARED_CASE]


def test_a_sync_killed_midway_resumes_and_loses_nothing(phones, server):
    phone = synced_phone(phones, server)
    ids = [phone.record_visit(CASE, visit(note=f"visit {i}")) for i in range(5)]
    phone.close_store()
    child = textwrap.dedent(
        f"""
        import asyncio, os, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import doorstep_mobile_bridge as bridge

        class KillOnFirstRound(bridge.SyncListener):
            def on_progress(self, progress):
                os.kill(os.getpid(), signal.SIGKILL)
            def on_status(self, status):
                pass

        phone = bridge.Doorstep({phone.path!r}, bytes.fromhex({phone.key.hex()!r}))
        phone.set_sync_listener(KillOnFirstRound())
        asyncio.run(phone.sync_now())
        """
    )
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    reopened = bridge.Doorstep(phone.path, phone.key)
    assert set(ids) <= {v.info.id for v in reopened.open_case(CASE).visits}
    report = run(reopened.sync_now())
    assert report.pending_changes == 0
    other = synced_phone(phones, server)
    assert set(ids) <= {v.info.id for v in other.open_case(CASE).visits}


def test_tokens_are_refreshed_and_a_replayed_refresh_token_ends_the_session(phones, short_token_server):
    phone = synced_phone(phones, short_token_server)
    # Every sync needs a fresh access token: each one refreshes (and rotates) by itself.
    for note in ("first", "second"):
        phone.record_visit(CASE, visit(note=note))
        assert run(phone.sync_now()).pending_changes == 0
    # A copy of the store holds the same refresh token: whichever presents it second replays
    # a retired token, and the server revokes the whole sign-in.
    phone.close_store()
    copy_path = phone.path + ".copy"
    with open(phone.path, "rb") as src, open(copy_path, "wb") as dst:
        dst.write(src.read())
    original = bridge.Doorstep(phone.path, phone.key)
    copy = bridge.Doorstep(copy_path, phone.key)
    run(original.sync_now())
    with pytest.raises(E.SessionExpired):
        run(copy.sync_now())
    with pytest.raises(E.SessionExpired):
        run(original.sync_now())
    # Local work goes on; the data is kept until the worker signs in again.
    visit_id = original.record_visit(CASE, visit(note="after the session ended"))
    run(original.sign_in(short_token_server.url, "officer", DEMO_PASSWORD, "test phone"))
    assert run(original.sync_now()).pending_changes == 0
    assert visit_id in [v.info.id for v in original.open_case(CASE).visits]
