// The phone core through its generated Kotlin bindings on the JVM (JNA), against a real
// doorstep-server with invented demo data. Run by scripts/test-bindings.sh.
package doorstep.bridge.tests

import java.io.File
import java.nio.file.Files
import java.security.MessageDigest
import java.security.SecureRandom
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeAll
import org.junit.jupiter.api.Test
import uniffi.doorstep_mobile_bridge.*

private const val DEMO_PASSWORD = "doorstep-demo" // invented demo data (`--demo`)
private const val CASE = "case-demo-1"

class BridgeTest {
    companion object {
        private lateinit var server: Process
        private lateinit var serverUrl: String
        private val tmp: File = Files.createTempDirectory("doorstep-kotlin").toFile()
        private var phoneCount = 0

        @BeforeAll
        @JvmStatic
        fun startServer() {
            val binary = System.getenv("DOORSTEP_SERVER_BIN") ?: error("DOORSTEP_SERVER_BIN is not set")
            server = ProcessBuilder(
                binary, "--demo", "--listen", "127.0.0.1:0", "--data-dir", File(tmp, "server").path,
            ).redirectError(ProcessBuilder.Redirect.DISCARD).start()
            val reader = server.inputStream.bufferedReader()
            val pattern = Regex("listening on (http://[0-9.:]+)")
            while (true) {
                val line = reader.readLine() ?: error("the server did not start")
                val match = pattern.find(line)
                if (match != null) {
                    serverUrl = match.groupValues[1]
                    break
                }
            }
        }

        @AfterAll
        @JvmStatic
        fun stopServer() {
            server.destroyForcibly().waitFor()
            tmp.deleteRecursively()
        }
    }

    private class Phone(val store: Doorstep, val path: String, val key: ByteArray)

    private fun newPhone(signIn: Boolean = true, sync: Boolean = true): Phone {
        phoneCount += 1
        val path = File(tmp, "phone-$phoneCount/doorstep.db").path
        val key = ByteArray(32).also { SecureRandom().nextBytes(it) }
        val store = Doorstep(path, key)
        store.setRetryPolicy(2u, 10uL, 50uL)
        if (signIn) runBlocking { store.signIn(serverUrl, "officer", DEMO_PASSWORD, "kotlin phone $phoneCount") }
        if (signIn && sync) runBlocking { store.syncNow() }
        return Phone(store, path, key)
    }

    private fun visit(note: String = "Talked about the morning routine.", started: String = "2026-01-05T09:00:00Z") =
        HomeVisit(
            startedAt = started,
            endedAt = "2026-01-05T09:40:00Z",
            location = "family home",
            visitors = listOf(Visitor("officer", "Worker officer", "EWO"), Visitor("worker", "Worker worker", null)),
            kind = VisitKind.UNANNOUNCED,
            outcome = VisitOutcome.FULL_VISIT,
            attempts = listOf(
                ContactAttempt("2026-01-05T08:15:00Z", VisitOutcome.NO_ANSWER, "card left"),
                ContactAttempt("2026-01-05T09:00:00Z", VisitOutcome.FULL_VISIT, null),
            ),
            childSeen = true,
            adultsSeen = listOf(),
            discussed = note,
            concerns = "",
            safeguardingFlag = false,
            actionsAgreed = "Walk to school together on Mondays",
            nextVisitOn = "2026-01-19",
        )

    /** What a failed call must leave unchanged. */
    private fun snapshot(store: Doorstep) = Pair(store.openCase(CASE).toString(), store.syncStatus().pendingChanges)

    @Test
    fun `record a joint visit offline then sync it`() {
        val phone = newPhone()
        val cases = phone.store.caseload().map { it.caseId }.toSet()
        assertEquals(setOf("case-demo-1", "case-demo-2"), cases)
        val id = phone.store.recordVisit(CASE, visit())
        val record = phone.store.openCase(CASE).visits.single { it.info.id == id }
        assertEquals(listOf("officer", "worker"), record.visit.visitors.map { it.userId })
        assertEquals(VisitOutcome.NO_ANSWER, record.visit.attempts[0].outcome)
        assertTrue(phone.store.syncStatus().pendingChanges >= 1uL)
        val report = runBlocking { phone.store.syncNow() }
        assertEquals(0uL, report.pendingChanges)
        assertNotNull(phone.store.syncStatus().lastSuccess)
    }

    @Test
    fun `voice evidence contacts targets finalise and amend`() {
        val phone = newPhone()
        val store = phone.store
        val voice = store.recordVoice(
            CASE,
            VoiceEntry(Speaker.PUPIL, "child-1", VoiceTool.THREE_ISLANDS, "Mum is on the always island.", null,
                listOf(IslandPlacement(Island.ALWAYS, "mum")), null, null),
        )
        val file = File(tmp, "letter-${phone.hashCode()}.pdf").apply { writeBytes("%PDF invented letter".toByteArray()) }
        val evidenceId = store.attachEvidence(
            CASE,
            EvidenceInput(file.path, EvidenceKind.LETTER, "application/pdf", "2026-01-06T10:00:00Z", null,
                RecordRef(RecordKind.VOICE, voice), "letter 1 as posted"),
        )
        val item = store.openCase(CASE).evidence.single { it.info.id == evidenceId }.item
        val sha = MessageDigest.getInstance("SHA-256").digest(file.readBytes()).joinToString("") { "%02x".format(it) }
        assertEquals(sha, item.sha256)
        assertEquals(file.length().toULong(), item.sizeBytes)
        assertTrue(store.evidenceFile(CASE, evidenceId).contentEquals(file.readBytes()))
        store.addContact(CASE, ContactEntry(ContactKind.MEETING, "2026-01-07T10:00:00Z", null, MeetingKind.TAF,
            "parents", "agreed a plan", true, false, null))
        val target = store.setTarget(CASE, Target("Attend every Monday", "parents", "2026-01-05", "2026-02-02",
            "2026-03-02", null, ""))
        store.reviewTarget(CASE, target, TargetOutcome.ACHIEVED, "Every Monday attended.")
        assertEquals(TargetOutcome.ACHIEVED, store.openCase(CASE).targets.single().target.outcome)
        store.finalise(CASE, RecordKind.VOICE, voice)
        assertThrows(DoorstepException.InvalidInput::class.java) {
            store.amend(CASE, RecordKind.VOICE, voice, "words", "\"changed\"", "")
        }
        store.amend(CASE, RecordKind.VOICE, voice, "words", "\"Mum and Gran are on the always island.\"", "Gran was missed")
        val amended = store.openCase(CASE).voice.single { it.info.id == voice }
        assertEquals("Mum and Gran are on the always island.", amended.entry.words)
        assertEquals("Gran was missed", amended.info.amendments.single().reason)
        runBlocking { store.syncNow() }
        assertEquals(0uL, store.syncStatus().pendingChanges)
    }

    @Test
    fun `wrong key and bad keys are typed errors`() {
        val phone = newPhone()
        val id = phone.store.recordVisit(CASE, visit())
        phone.store.closeStore()
        assertThrows(DoorstepException.WrongKey::class.java) { Doorstep(phone.path, ByteArray(32)) }
        val short = assertThrows(DoorstepException.InvalidInput::class.java) { Doorstep(phone.path, ByteArray(5)) }
        assertEquals(listOf("key"), short.fields)
        assertTrue(Doorstep(phone.path, phone.key).openCase(CASE).visits.any { it.info.id == id })
    }

    @Test
    fun `a closed store refuses every call`() {
        val store = newPhone().store
        store.closeStore()
        assertThrows(DoorstepException.StoreClosed::class.java) { store.caseload() }
        assertThrows(DoorstepException.StoreClosed::class.java) { store.recordVisit(CASE, visit()) }
        assertThrows(DoorstepException.StoreClosed::class.java) { runBlocking { store.syncNow() } }
    }

    @Test
    fun `nothing before sign-in and nothing after sign-out`() {
        val fresh = newPhone(signIn = false).store
        assertNull(fresh.account())
        assertThrows(DoorstepException.NotSignedIn::class.java) { fresh.caseload() }
        assertThrows(DoorstepException.InvalidCredentials::class.java) {
            runBlocking { fresh.signIn(serverUrl, "officer", "wrong password", "kotlin phone") }
        }
        val store = newPhone().store
        val id = store.recordVisit(CASE, visit())
        store.signOut()
        assertThrows(DoorstepException.NotSignedIn::class.java) { store.caseload() }
        assertThrows(DoorstepException.NotSignedIn::class.java) { store.openCase(CASE) }
        assertThrows(DoorstepException.NotSignedIn::class.java) { store.recordVisit(CASE, visit()) }
        assertThrows(DoorstepException.NotSignedIn::class.java) { runBlocking { store.syncNow() } }
        runBlocking { store.signIn(serverUrl, "officer", DEMO_PASSWORD, "kotlin phone") }
        assertTrue(store.openCase(CASE).visits.any { it.info.id == id })
    }

    @Test
    fun `unknown ids`() {
        val store = newPhone().store
        val before = snapshot(store)
        assertThrows(DoorstepException.NotFound::class.java) { store.openCase("case-that-does-not-exist") }
        assertThrows(DoorstepException.NotFound::class.java) { store.recordVisit("case-that-does-not-exist", visit()) }
        assertThrows(DoorstepException.NotFound::class.java) { store.finalise(CASE, RecordKind.VISITS, "no-such-visit") }
        assertThrows(DoorstepException.StaleConflict::class.java) { store.resolveConflict(CASE, "no-such-conflict", "1") }
        assertEquals(before, snapshot(store))
    }

    @Test
    fun `missing required fields`() {
        val store = newPhone().store
        val before = snapshot(store)
        val noLocation = assertThrows(DoorstepException.InvalidInput::class.java) {
            store.recordVisit(CASE, visit().copy(location = " "))
        }
        assertTrue("location" in noLocation.fields)
        val nobody = assertThrows(DoorstepException.InvalidInput::class.java) {
            store.recordVisit(CASE, visit().copy(visitors = listOf()))
        }
        assertTrue("visitors" in nobody.fields)
        assertThrows(DoorstepException.InvalidInput::class.java) {
            store.addContact(CASE, ContactEntry(ContactKind.CALL, "2026-01-07T10:00:00Z", null, null, "", "", false, false, null))
        }
        assertEquals(before, snapshot(store))
    }

    @Test
    fun `invalid dates`() {
        val store = newPhone().store
        val before = snapshot(store)
        val e = assertThrows(DoorstepException.InvalidInput::class.java) {
            store.recordVisit(CASE, visit(started = "2026-02-30T09:00:00Z"))
        }
        assertEquals(listOf("started_at"), e.fields)
        assertThrows(DoorstepException.InvalidInput::class.java) {
            store.setTarget(CASE, Target("d", "o", "2026-03-01", "2026-02-01", "2026-04-01", null, ""))
        }
        assertThrows(DoorstepException.InvalidInput::class.java) {
            store.recordVisit(CASE, visit().copy(nextVisitOn = "next tuesday"))
        }
        assertEquals(before, snapshot(store))
    }

    @Test
    fun `oversized values`() {
        val store = newPhone().store
        val before = snapshot(store)
        val e = assertThrows(DoorstepException.InvalidInput::class.java) {
            store.recordVisit(CASE, visit(note = "x".repeat(20_001)))
        }
        assertEquals(listOf("discussed"), e.fields)
        val huge = File(tmp, "huge-${store.hashCode()}.bin")
        java.io.RandomAccessFile(huge, "rw").use { it.setLength(32L * 1024 * 1024 + 1) }
        assertThrows(DoorstepException.TooLarge::class.java) {
            store.attachEvidence(CASE, EvidenceInput(huge.path, EvidenceKind.PHOTO, "image/jpeg",
                "2026-01-05T09:30:00Z", null, null, ""))
        }
        assertThrows(DoorstepException.TooLarge::class.java) {
            store.amend(CASE, RecordKind.VISITS, "v", "discussed", "\"" + "x".repeat(300_000) + "\"", "r")
        }
        assertEquals(before, snapshot(store))
    }

    private class Recorder : SyncListener {
        val progress: MutableList<SyncProgress> = java.util.Collections.synchronizedList(mutableListOf())
        val statuses: MutableList<SyncStatus> = java.util.Collections.synchronizedList(mutableListOf())
        override fun onProgress(progress: SyncProgress) { this.progress.add(progress) }
        override fun onStatus(status: SyncStatus) { statuses.add(status) }
    }

    @Test
    fun `the listener hears progress and status`() {
        val phone = newPhone(sync = false)
        val recorder = Recorder()
        phone.store.setSyncListener(recorder)
        runBlocking { phone.store.syncNow() }
        assertTrue(recorder.progress.isNotEmpty())
        assertEquals(1u, recorder.progress.first().round)
        assertNotNull(recorder.statuses.last().lastSuccess)
    }

    @Test
    fun `a photo uploads in chunks during sync and its verified receipt is recorded`() {
        val phone = newPhone()
        val store = phone.store
        val bytes = ByteArray(1_500_000).also { SecureRandom().nextBytes(it) } // invented
        val file = File(tmp, "photo-${phone.hashCode()}.jpg").apply { writeBytes(bytes) }
        val evidenceId = store.attachEvidence(
            CASE,
            EvidenceInput(file.path, EvidenceKind.PHOTO, "image/jpeg", "2026-01-06T10:00:00Z", null, null, "invented photo"),
        )
        assertEquals(UploadState.PENDING, store.openCase(CASE).evidence.single { it.info.id == evidenceId }.upload.state)
        val recorder = Recorder()
        store.setSyncListener(recorder)
        val report = runBlocking { store.syncNow() }
        assertEquals(1uL, report.evidenceUploaded)
        assertEquals(0uL, report.evidencePending)
        val upload = store.openCase(CASE).evidence.single { it.info.id == evidenceId }.upload
        assertEquals(UploadState.UPLOADED, upload.state)
        val receipt = upload.receipt!!
        val sha = MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { "%02x".format(it) }
        assertEquals(sha, receipt.sha256)
        assertEquals(bytes.size.toULong(), receipt.sizeBytes)
        assertEquals(store.account()!!.deviceId, receipt.uploaderDeviceId)
        val evidence = recorder.progress.filter { it.phase == SyncPhase.EVIDENCE }
        assertTrue(evidence.size >= 2, "progress per chunk: $evidence")
        assertEquals(bytes.size.toULong(), evidence.last().evidenceBytesAcknowledged)
    }

    /** POSTs JSON to the server as a test client (not through the bridge). */
    private fun post(path: String, body: String, token: String? = null): String {
        val builder = java.net.http.HttpRequest.newBuilder(java.net.URI.create(serverUrl + path))
            .header("Content-Type", "application/json")
            .POST(java.net.http.HttpRequest.BodyPublishers.ofString(body))
        if (token != null) builder.header("Authorization", "Bearer $token")
        val response = java.net.http.HttpClient.newHttpClient()
            .send(builder.build(), java.net.http.HttpResponse.BodyHandlers.ofString())
        assertTrue(response.statusCode() in 200..299, "HTTP ${response.statusCode()}: ${response.body()}")
        return response.body()
    }

    @Test
    fun `a revoked device is wiped and refuses further calls`() {
        val phone = newPhone()
        phone.store.recordVisit(CASE, visit())
        val deviceId = phone.store.account()!!.deviceId
        val actor = ByteArray(16).also { SecureRandom().nextBytes(it) }.joinToString("") { "%02x".format(it) }
        val signIn = post("/api/v1/auth/sign-in",
            """{"username":"admin","password":"$DEMO_PASSWORD","device_name":"kotlin admin","actor_id":"$actor"}""")
        val token = Regex("\"access_token\":\"([^\"]+)\"").find(signIn)!!.groupValues[1]
        post("/api/v1/devices/$deviceId/revoke", "{}", token)
        assertThrows(DoorstepException.DeviceRevoked::class.java) { runBlocking { phone.store.syncNow() } }
        assertNull(phone.store.account())
        assertThrows(DoorstepException.NotSignedIn::class.java) { phone.store.caseload() }
        assertThrows(DoorstepException.NotSignedIn::class.java) { phone.store.recordVisit(CASE, visit()) }
    }
}
