// A real automerge-repo client (the npm packages, as a web or desktop app would use them) that
// opens one Doorstep case file over the server's WebSocket endpoint, optionally adds a contact
// log entry in exactly the shape sync-core writes, waits until the server has it, and prints
// what it sees as one line of JSON. Driven by tests/end_to_end/test_js_client.py.
//
// It signs nothing itself: the test signs in and passes what it got.
//
// Usage: node client.mjs <mode> <case uuid or automerge: url>
//   mode "edit":        find the case, add a contact entry, wait for the server's ack, print
//   mode "read":        find the case and print it
//   mode "unavailable": expect the server to answer that the case is unavailable
// Environment: DOORSTEP_WS_URL  ws://127.0.0.1:<port>/api/v1/repo/ws
//              DOORSTEP_TOKEN   an access token (sent as ?access_token=)
//              DOORSTEP_USER_ID, DOORSTEP_DEVICE_ID  who the token belongs to (for the record's
//                               meta and the actor's entry in `actors`; "edit" only)
//              DOORSTEP_TIMEOUT_MS  give up after this long (default 30000)
// Exit code 0 on success; 1 on any failure or timeout, with the reason on stderr.

import * as A from "@automerge/automerge";
import { Repo } from "@automerge/automerge-repo";
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket";
import { randomUUID } from "node:crypto";

const TIMEOUT_MS = Number(process.env.DOORSTEP_TIMEOUT_MS ?? 30000);

function fail(message) {
  process.stderr.write(`js client: ${message}\n`);
  process.exit(1);
}

// The adapter throws from its socket's error handler (e.g. a refused upgrade): fail cleanly.
process.on("uncaughtException", error => fail(`uncaught: ${error?.stack ?? error}`));
process.on("unhandledRejection", error => fail(`unhandled rejection: ${error?.stack ?? error}`));
setTimeout(() => fail(`timed out after ${TIMEOUT_MS} ms`), TIMEOUT_MS).unref();

function env(name) {
  const value = process.env[name];
  if (!value) fail(`${name} is not set`);
  return value;
}

const [mode, caseRef] = process.argv.slice(2);
if (!["edit", "read", "unavailable"].includes(mode) || !caseRef) {
  fail("usage: node client.mjs edit|read|unavailable <case uuid or automerge: url>");
}
const wsUrl = `${env("DOORSTEP_WS_URL")}?access_token=${encodeURIComponent(env("DOORSTEP_TOKEN"))}`;

/// sync-core stores every string as a scalar string; automerge 3.x would make a plain JS string
/// collaborative text.
const str = s => new A.ImmutableString(s);
const plain = v => (A.isImmutableString(v) ? v.toString() : v);

/// A repo with one WebSocket connection to the server and no storage. It holds only the
/// documents it finds, so the default share policy offers the server nothing else.
async function connect() {
  const adapter = new WebSocketClientAdapter(wsUrl, 1000);
  const repo = new Repo({ network: [adapter], isEphemeral: true });
  await adapter.whenReady();
  return repo;
}

/// The server's peer: its id and storage id, once the handshake is done.
async function serverPeer(repo) {
  for (;;) {
    const [peerId] = repo.peers;
    const storageId = peerId && repo.getStorageIdOfPeer(peerId);
    if (storageId) return { peerId, storageId };
    await new Promise(resolve => setTimeout(resolve, 20));
  }
}

/// Record ids by collection, with each record's author as its meta says.
function summary(doc) {
  const records = collection =>
    Object.keys(doc[collection] ?? {})
      .sort()
      .map(id => {
        const meta = doc[collection][id].meta ?? {};
        return { id, user_id: plain(meta.user_id), device_id: plain(meta.device_id) };
      });
  return {
    case_id: plain(doc.case_id),
    reference: plain(doc.case?.reference),
    visits: records("visits"),
    contacts: records("contacts"),
    actors: Object.fromEntries(
      Object.entries(doc.actors ?? {}).map(([actor, who]) => [actor, JSON.parse(plain(who))]),
    ),
  };
}

/// A new contact log entry written as sync-core's `CaseFile::add` writes it: the record map
/// with `meta`, `body` (every field of `ContactEntry`, absent options as null) and an empty
/// `amendments` map, and this actor registered in `actors` in the same change.
function addContact(handle, userId, deviceId) {
  const id = randomUUID();
  const deviceTime = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  handle.change(doc => {
    const actor = A.getActorId(doc);
    if (!doc.actors[actor]) {
      doc.actors[actor] = str(JSON.stringify({ user_id: userId, device_id: deviceId }));
    }
    doc.contacts[id] = {
      meta: { id: str(id), user_id: str(userId), device_id: str(deviceId), device_time: str(deviceTime) },
      body: {
        kind: str("call"),
        at: str(deviceTime),
        letter_number: null,
        meeting: null,
        with_whom: str("adult-1"),
        outcome: str("Phoned to arrange the next visit; agreed Tuesday."),
        engaged: true,
        legal_action_warned: false,
        evidence_id: null,
      },
      amendments: {},
    };
  }, { message: `add contacts/${id}` });
  return id;
}

const sameHeads = (a, b) => a && b && a.length === b.length && a.every(h => b.includes(h));

/// Waits until the server's sync messages say it has exactly our heads: it answers only after
/// it has validated and committed the change.
async function acknowledged(handle, storageId) {
  const heads = handle.heads();
  if (sameHeads(handle.getSyncInfo(storageId)?.lastHeads, heads)) return;
  await new Promise(resolve => {
    const check = () => {
      if (sameHeads(handle.getSyncInfo(storageId)?.lastHeads, heads)) {
        handle.off("remote-heads", check);
        resolve();
      }
    };
    handle.on("remote-heads", check);
    check();
  });
}

async function main() {
  const repo = await connect();
  const { storageId } = await serverPeer(repo);

  if (mode === "unavailable") {
    try {
      const handle = await repo.find(caseRef);
      fail(`expected the case to be unavailable, got a document (${handle.heads().length} heads)`);
    } catch (error) {
      if (!/unavailable/.test(String(error?.message))) throw error;
      console.log(JSON.stringify({ unavailable: true, message: error.message }));
    }
    await repo.shutdown();
    return;
  }

  const handle = await repo.find(caseRef);
  const result = { document_id: handle.documentId, url: handle.url };
  if (mode === "edit") {
    result.added_contact = addContact(handle, env("DOORSTEP_USER_ID"), env("DOORSTEP_DEVICE_ID"));
    result.actor = A.getActorId(handle.doc());
    await acknowledged(handle, storageId);
  }
  result.seen = summary(handle.doc());
  const ours = handle.heads();
  await repo.shutdown();

  // A second, independent client opens the case from the server: what the server stored.
  const again = await connect();
  const stored = await again.find(caseRef);
  result.server = summary(stored.doc());
  result.heads = stored.heads();
  if (mode === "edit" && !sameHeads(result.heads, ours)) {
    fail(`the server's heads ${result.heads} are not this client's ${ours}`);
  }
  await again.shutdown();
  console.log(JSON.stringify(result));
}

main().then(
  () => process.exit(0),
  error => fail(error?.stack ?? String(error)),
);
