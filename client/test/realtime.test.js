import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { RealtimeClient } from "../src/realtime.js";
import { FakeClock, FakeSocket, fakeFetch, fakeJwt, flush } from "./fakes.js";

/** @param {Partial<import("../src/realtime.js").RealtimeOptions>} [options] */
function makeClient(options = {}) {
  const clock = new FakeClock();
  const token = fakeJwt(clock.now() / 1000 + 3600);
  const fetch = fakeFetch({
    "GET /api/v1/notifications": () => Response.json({ items: [{ seq: 41 }], has_more: true, next_cursor: "c" }),
  });
  const client = new RealtimeClient({
    url: "http://gateway.test",
    sessionId: "00000000-0000-4000-8000-000000000001",
    getToken: () => token,
    clock,
    WebSocket: /** @type {any} */ (FakeSocket),
    fetch,
    backoff: { random: () => 0.5 },
    ...options,
  });
  /** @type {any[]} */
  const states = [];
  client.on("state", (state) => states.push(state));
  return { client, clock, token, fetch, states };
}

beforeEach(() => FakeSocket.reset());

test("authenticates with the bearer subprotocol, never the query string", async () => {
  const { client, token } = makeClient();
  client.connect();
  await flush();
  const ws = FakeSocket.last();
  assert.deepEqual(ws.protocols, ["bearer", token]);
  assert.ok(!ws.url.includes(token));
  assert.equal(new URL(ws.url).pathname, "/api/v1/ws/00000000-0000-4000-8000-000000000001");
  ws.open();
  assert.equal(client.state.status, "open");
});

test("the first connect resumes after the newest seq the REST API shows", async () => {
  const { client } = makeClient();
  client.connect();
  await flush();
  assert.equal(new URL(FakeSocket.last().url).searchParams.get("last_seq"), "41");
});

test("every reconnect resumes with last_seq and duplicates are dropped by seq", async () => {
  const { client, clock } = makeClient();
  /** @type {number[]} */
  const seen = [];
  client.on("notification", (n) => seen.push(/** @type {number} */ (n.seq)));
  client.connect();
  await flush();
  const first = FakeSocket.last();
  first.open();
  first.notification(42);
  first.notification(43);
  first.serverClose(1006, "");
  assert.equal(client.state.status, "reconnecting");
  await clock.advance(/** @type {number} */ (clock.nextDelay()));
  const second = FakeSocket.last();
  assert.notEqual(second, first);
  assert.equal(new URL(second.url).searchParams.get("last_seq"), "43");
  second.open();
  second.notification(43); // replay overlapping what was delivered
  second.notification(44);
  second.notification(44);
  second.notification(46);
  assert.deepEqual(seen, [42, 43, 44, 46]);
  assert.equal(client.stats.duplicatesDropped, 2);
  assert.equal(client.lastSeq, 46);
});

test("1013 backs off with growing delays within bounds; 1012 reconnects promptly", async () => {
  const { client, clock, states } = makeClient({ pingInterval: 1e9 });
  client.connect();
  await flush();
  /** @type {number[]} */
  const delays = [];
  for (let i = 0; i < 4; i++) {
    FakeSocket.last().serverClose(1013, "too many connections for this session");
    const state = states[states.length - 1];
    assert.equal(state.status, "reconnecting");
    assert.equal(state.lastClose.code, 1013);
    delays.push(state.retryInMs);
    await clock.advance(state.retryInMs);
  }
  assert.deepEqual(delays, [750, 1250, 2250, 4250]); // random 0.5 between 500 and 1 s, 2 s, 4 s, 8 s
  FakeSocket.last().open();
  await clock.advance(60_000); // stable: attempts reset
  FakeSocket.last().serverClose(1012, "server restarting: reconnect");
  assert.equal(states[states.length - 1].retryInMs, 500, "prompt: within 1 s, jittered");
});

test("a short-lived connection does not reset the backoff (no reconnect storm)", async () => {
  const { client, clock, states } = makeClient();
  client.connect();
  await flush();
  for (let i = 0; i < 3; i++) {
    FakeSocket.last().open();
    FakeSocket.last().serverClose(1011, "keepalive ping timeout");
    await clock.advance(states[states.length - 1].retryInMs);
  }
  assert.ok(states[states.length - 2].retryInMs > 2000);
});

test("1008 token expired: one new-token attempt, then closed with an auth error, no loop", async () => {
  const { client, clock, states } = makeClient();
  /** @type {any[]} */
  const errors = [];
  client.on("error", (error) => errors.push(error));
  client.connect();
  await flush();
  FakeSocket.last().serverClose(1008, "token expired");
  assert.equal(errors[0].kind, "auth");
  await clock.advance(60_000);
  // The provider handed back the same token: no second connection is made.
  assert.equal(FakeSocket.instances.length, 1);
  const final = states[states.length - 1];
  assert.equal(final.status, "closed");
  assert.equal(final.auth, true);
  assert.equal(final.code, 1008);
  assert.equal(clock.nextDelay(), null, "no timer left: nothing will retry");
});

test("1008 with a new token from the provider: one retry, a second refusal stops", async () => {
  let n = 0;
  const { client, clock, states } = makeClient({ getToken: () => `token-${n++}` });
  client.connect();
  await flush();
  FakeSocket.last().serverClose(1008, "token signature invalid");
  await clock.advance(/** @type {number} */ (clock.nextDelay()));
  assert.equal(FakeSocket.instances.length, 2);
  FakeSocket.last().serverClose(1008, "token signature invalid");
  await clock.advance(60_000);
  assert.equal(FakeSocket.instances.length, 2);
  assert.equal(states[states.length - 1].status, "closed");
});

test("1008 about the request (foreign session) stops at once", async () => {
  const { client, clock, states } = makeClient();
  client.connect();
  await flush();
  FakeSocket.last().serverClose(1008, "session belongs to another user");
  await clock.advance(60_000);
  assert.equal(FakeSocket.instances.length, 1);
  assert.equal(states[states.length - 1].status, "closed");
  assert.equal(states[states.length - 1].auth, false);
});

test("pings keep the connection alive; silence after a ping reconnects", async () => {
  const { client, clock } = makeClient({ pingInterval: 25_000, pongTimeout: 10_000 });
  client.connect();
  await flush();
  const ws = FakeSocket.last();
  ws.open();
  await clock.advance(25_000);
  assert.deepEqual(ws.sentFrames(), [{ type: "ping" }]);
  ws.frame({ type: "pong", timestamp: "" });
  await clock.advance(25_000);
  assert.equal(ws.sentFrames().length, 2);
  assert.equal(client.state.status, "open");
  await clock.advance(10_001); // no pong to the second ping
  assert.equal(ws.closedByClient?.code, 4000);
  assert.equal(client.state.status, "reconnecting");
});

test("the token is refreshed in band refreshMargin before exp, and on token_expiring", async () => {
  const clock = new FakeClock();
  const now = clock.now() / 1000;
  const tokens = [fakeJwt(now + 600), fakeJwt(now + 1200), fakeJwt(now + 1800)];
  let calls = 0;
  const { client } = makeClient({ clock, resumeFromLatest: false, getToken: async () => tokens[Math.min(calls++, 2)], refreshMargin: 60_000, pingInterval: 1e9 });
  client.connect();
  await flush();
  const ws = FakeSocket.last();
  ws.open();
  await clock.advance(539_999);
  assert.deepEqual(ws.sentFrames(), [], "nothing before exp - 60 s");
  await clock.advance(1);
  assert.deepEqual(ws.sentFrames(), [{ type: "refresh_token", token: tokens[1] }]);
  ws.frame({ type: "token_refreshed", expires_at: "" });
  // The server's warning triggers a refresh at once, whatever the timer says.
  ws.frame({ type: "token_expiring", expires_at: "" });
  await flush();
  assert.deepEqual(ws.sentFrames()[1], { type: "refresh_token", token: tokens[2] });
});

test("a provider with no new token before expiry is reported, not looped on", async () => {
  const { client, clock, token } = makeClient({ pingInterval: 1e9 });
  /** @type {any[]} */
  const errors = [];
  client.on("error", (e) => errors.push(e));
  client.connect();
  await flush();
  FakeSocket.last().open();
  FakeSocket.last().frame({ type: "token_expiring", expires_at: "" });
  await flush();
  assert.deepEqual(FakeSocket.last().sentFrames(), []);
  assert.equal(errors[0].kind, "auth");
  assert.ok(token);
  await clock.advance(1000);
});

test("close() stops reconnecting and is idempotent", async () => {
  const { client, clock, states } = makeClient();
  client.connect();
  await flush();
  FakeSocket.last().open();
  client.close();
  client.close();
  await clock.advance(60_000);
  assert.equal(FakeSocket.instances.length, 1);
  assert.equal(states[states.length - 1].status, "closed");
});

test("notifications as an async iterator", async () => {
  const { client } = makeClient();
  client.connect();
  await flush();
  FakeSocket.last().open();
  const iterator = client.notifications();
  FakeSocket.last().notification(50);
  FakeSocket.last().notification(50);
  FakeSocket.last().notification(51);
  const first = await iterator.next();
  const second = await iterator.next();
  assert.deepEqual([first.value?.seq, second.value?.seq], [50, 51]);
  await iterator.return?.();
});

test("notifications_changed frames become `changed` events; unknown frames reach `frame`", async () => {
  const { client } = makeClient();
  /** @type {any[]} */
  const changes = [];
  /** @type {string[]} */
  const frames = [];
  client.on("changed", (change) => changes.push(change));
  client.on("frame", (frame) => frames.push(frame.type));
  client.connect();
  await flush();
  FakeSocket.last().open();
  FakeSocket.last().frame({ type: "notifications_changed", data: { change: "read", ids: ["n1"], unread_count: 3 } });
  FakeSocket.last().frame({ type: "announcement", text: "maintenance at 22:00" });
  assert.deepEqual(changes, [{ change: "read", ids: ["n1"], unread_count: 3 }]);
  assert.deepEqual(frames, ["connection_established", "notifications_changed", "announcement"]);
});

test("chat over the WebSocket streams chat_event frames; a drop mid-answer resumes over SSE", async () => {
  const sse = (/** @type {string} */ text) =>
    new Response(new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode(text)); c.close(); } }));
  const fetch = fakeFetch({
    "GET /api/v1/notifications": () => Response.json({ items: [], has_more: false, next_cursor: null }),
    "GET /api/v1/chat/stream/m1": ({ init }) => {
      assert.equal(/** @type {any} */ (init.headers)["last-event-id"], "2-0");
      return sse('id: 3-0\ndata: {"type":"token","content":" there","event_id":"3-0"}\n\n' +
        'id: 4-0\ndata: {"type":"end","message_id":"m1","tokens_used":3,"status":"complete","event_id":"4-0"}\n\n');
    },
  });
  const { client } = makeClient({ fetch, pingInterval: 1e9 });
  client.connect();
  await flush();
  const ws = FakeSocket.last();
  ws.open();
  const answer = client.ask("hi", { transport: "ws" });
  assert.deepEqual(ws.sentFrames(), [{ type: "message", message: "hi", stream: true }]);
  const done = answer.done();
  ws.frame({ type: "chat_event", event: { type: "start", session_id: "s1", message_id: "m1", event_id: "1-0" } });
  ws.frame({ type: "chat_event", event: { type: "token", content: "Hello", event_id: "2-0" } });
  await flush();
  ws.serverClose(1012, "server restarting: reconnect");
  await done;
  assert.equal(answer.text, "Hello there");
  assert.equal(answer.status, "complete");
});

test("a question the server refuses over the WebSocket fails with its code", async () => {
  const { client } = makeClient({ pingInterval: 1e9 });
  client.connect();
  await flush();
  FakeSocket.last().open();
  const answer = client.ask("hi", { transport: "ws" });
  const done = answer.done();
  FakeSocket.last().frame({ type: "error", error: { code: "CHAT_BUSY", message: "busy", details: { message_id: "m0" } } });
  await assert.rejects(done, { code: "CHAT_BUSY" });
});

test("the package entry exports the public API", async () => {
  const api = await import("../src/index.js");
  for (const name of ["RealtimeClient", "RestClient", "ApiError", "ChatAnswer", "SseParser", "Backoff", "closeDecision", "SeqTracker", "webStorageSeqStore"]) {
    assert.equal(typeof api[/** @type {keyof typeof api} */ (name)], "function", name);
  }
  assert.throws(() => new api.RealtimeClient({ getToken: () => "t", WebSocket: /** @type {any} */ (FakeSocket) }), /options.url is required/);
});
