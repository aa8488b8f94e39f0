"""Benchmark of the phone core through its Python bindings, against a real server: a store
holding 200 cases; time to open the caseload, to record a visit, and to sync 50 new visits;
the size of the local store per visit. Prints figures; fails only if something errors.

Run by scripts/test-bindings.sh (SKIP_BENCH=1 skips it)."""

import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

import doorstep_mobile_bridge as bridge  # noqa: E402
from bridge_harness import DEMO_PASSWORD, Server, run, visit  # noqa: E402

CASES = 200
VISITS = 50
NOTE_CHARS = 500


def store_bytes(path):
    return sum(Path(path + suffix).stat().st_size for suffix in ("", "-wal") if Path(path + suffix).exists())


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), max(times)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "server").start()
        try:
            path = str(Path(tmp) / "phone" / "doorstep.db")
            key = secrets.token_bytes(32)
            phone = bridge.Doorstep(path, key)
            run(phone.sign_in(server.url, "officer", DEMO_PASSWORD, "bench phone"))
            admin = server.admin_token()
            user_id = phone.account().user_id
            held = len(run_and_count(phone))
            for i in range(CASES - held):
                created = server.post(
                    "/api/v1/cases",
                    {"details": {
                        "reference": f"ATT-BENCH-{i:04}", "school_id": "school-riverside",
                        "school_name": "Riverside Primary (invented)", "stage": "level 1",
                        "lead_practitioner": user_id, "status": "open",
                        "early_help_offered_on": None, "consent_to_share": None,
                    }},
                    admin,
                )
                server.post(f"/api/v1/cases/{created['case_id']}/allocations/{user_id}", None, admin, method="PUT")

            start = time.perf_counter()
            run(phone.sync_now())
            first_sync = time.perf_counter() - start
            cases = phone.caseload()
            assert len(cases) == CASES, len(cases)

            caseload_ms, caseload_max = timed(phone.caseload, 20)
            case_id = cases[0].case_id
            # Closing checkpoints the WAL into the database file: sizes then mean stored data.
            phone, size_before = reopened(phone, path, key)
            note = "mum said the bus was late again and the morning routine is hard " * 8
            visit_times = []
            for i in range(VISITS):
                v = visit(note=note[:NOTE_CHARS] + str(i))
                start = time.perf_counter()
                phone.record_visit(case_id, v)
                visit_times.append((time.perf_counter() - start) * 1000)
            phone, size_after = reopened(phone, path, key)
            open_ms, _ = timed(lambda: phone.open_case(case_id), 5)
            start = time.perf_counter()
            report = run(phone.sync_now())
            sync_ms = (time.perf_counter() - start) * 1000
            assert report.pending_changes == 0

            print(f"store holding {CASES} cases (debug build of the bridge):")
            print(f"  first sync of {CASES} cases:          {first_sync:8.2f} s")
            print(f"  open the caseload:                 {caseload_ms:8.2f} ms median, {caseload_max:.2f} ms max")
            print(f"  record a visit ({NOTE_CHARS}-char note):     {statistics.median(visit_times):8.2f} ms median, "
                  f"{max(visit_times):.2f} ms max")
            print(f"  open a case holding {VISITS} visits:      {open_ms:8.2f} ms median")
            print(f"  sync {VISITS} new visits:                {sync_ms:8.2f} ms ({report.rounds} rounds)")
            print(f"  local store growth per visit:      {(size_after - size_before) / VISITS:8.0f} bytes "
                  f"(store {size_after / 1024:.0f} KiB)")
        finally:
            server.stop()


def reopened(phone, path, key):
    phone.close_store()
    size = store_bytes(path)
    return bridge.Doorstep(path, key), size


def run_and_count(phone):
    run(phone.sync_now())
    return phone.caseload()


if __name__ == "__main__":
    main()
