-- Every Automerge actor a device may write with. A phone registers one actor at sign-in; a
-- client of the automerge-repo WebSocket protocol (server/src/repo_ws) cannot choose its
-- actors, so the first device to deliver a change by an actor nobody has used is bound to it.
-- An actor belongs to one device only (the primary key): every change stays attributable.
CREATE TABLE device_actors (
    actor_id   TEXT PRIMARY KEY,
    device_id  TEXT NOT NULL REFERENCES devices (id),
    bound_at   BIGINT NOT NULL
);
CREATE INDEX device_actors_device ON device_actors (device_id);

-- The actors registered at sign-in so far.
INSERT INTO device_actors (actor_id, device_id, bound_at)
SELECT actor_id, id, created_at FROM devices;

-- Whether an actor has written before (and for whom) is asked before it is bound.
CREATE INDEX changes_actor ON changes (actor_id);
