import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { RealtimeClient } from "../src/realtime.js";
import { FakeClock, FakeSocket, fakeFetch, fakeJwt, flush } from "./fakes.js";

function makeClient() {
  const clock = new FakeClock();
  const token = fakeJwt(clock.now() / 1000 + 3600);
  const client = new RealtimeClient({
    url: "http://gateway.test",
    sessionId: "00000000-0000-4000-8000-000000000001",
    getToken: () => token,
    clock,
    WebSocket: /** @type {any} */ (FakeSocket),
    fetch: fakeFetch({ "GET /api/v1/notifications": () => Response.json({ items: [], has_more: false, next_cursor: null }) }),
    backoff: { random: () => 0.5 },
    pingInterval: 3_600_000, // no ping/pong in these tests: the fake server never answers
  });
  return { client, clock };
}

/** @param {FakeSocket} ws @param {string} type */
function sentOf(ws, type) {
  return ws.sentFrames().filter((frame) => frame.type === type);
}

beforeEach(() => FakeSocket.reset());

test("subscribes once open, delivers publications once in offset order", async () => {
  const { client } = makeClient();
  const sub = client.subscribe("public:lobby");
  client.connect();
  await flush();
  const ws = FakeSocket.last();
  ws.open();
  await flush();
  assert.deepEqual(sentOf(ws, "subscribe"), [{ type: "subscribe", topic: "public:lobby" }]);
  /** @type {unknown[]} */
  const seen = [];
  sub.on("publication", (p) => seen.push(p.data));
  ws.frame({ type: "subscribed", topic: "public:lobby", offset: 4, epoch: "e1", recovered: true, publications: [] });
  ws.frame({ type: "publication", topic: "public:lobby", offset: 5, data: "a" });
  ws.frame({ type: "publication", topic: "public:lobby", offset: 5, data: "a" });
  ws.frame({ type: "publication", topic: "public:other", offset: 6, data: "x" });
  ws.frame({ type: "publication", topic: "public:lobby", offset: 6, data: "b" });
  assert.deepEqual(seen, ["a", "b"]);
  assert.equal(sub.duplicatesDropped, 1);
  assert.deepEqual(sub.position, { offset: 6, epoch: "e1" });
});

test("after a reconnect it resubscribes since the last position and delivers what was recovered", async () => {
  const { client, clock } = makeClient();
  const sub = client.subscribe("public:lobby");
  /** @type {unknown[]} */
  const seen = [];
  /** @type {any[]} */
  const infos = [];
  sub.on("publication", (p) => seen.push(p.data));
  sub.on("subscribed", (info) => infos.push(info));
  client.connect();
  await flush();
  const first = FakeSocket.last();
  first.open();
  await flush();
  first.frame({ type: "subscribed", topic: "public:lobby", offset: 1, epoch: "e1", recovered: true, publications: [] });
  first.frame({ type: "publication", topic: "public:lobby", offset: 2, data: 2 });
  first.serverClose(1012, "server restarting: reconnect");
  await clock.advance(5000);
  const second = FakeSocket.last();
  assert.notEqual(second, first);
  second.open();
  await flush();
  assert.deepEqual(sentOf(second, "subscribe"), [{ type: "subscribe", topic: "public:lobby", since: { offset: 2, epoch: "e1" } }]);
  second.frame({
    type: "subscribed", topic: "public:lobby", offset: 4, epoch: "e1", recovered: true,
    publications: [{ offset: 3, data: 3 }, { offset: 4, data: 4 }],
  });
  assert.deepEqual(seen, [2, 3, 4]);
  assert.equal(infos[1].recovered, true);
  assert.equal(infos[1].resubscribed, true);
});

test("recovered false is reported and the position moves to the new epoch", async () => {
  const { client } = makeClient();
  const sub = client.subscribe("public:lobby", { since: { offset: 9, epoch: "old" } });
  /** @type {any[]} */
  const infos = [];
  sub.on("subscribed", (info) => infos.push(info));
  client.connect();
  await flush();
  const ws = FakeSocket.last();
  ws.open();
  await flush();
  assert.deepEqual(sentOf(ws, "subscribe")[0].since, { offset: 9, epoch: "old" });
  ws.frame({ type: "subscribed", topic: "public:lobby", offset: 0, epoch: "new", recovered: false, publications: [] });
  assert.equal(infos[0].recovered, false);
  assert.deepEqual(sub.position, { offset: 0, epoch: "new" });
});

test("INSUFFICIENT_STATE resubscribes at once from the last position", async () => {
  const { client } = makeClient();
  const sub = client.subscribe("public:lobby");
  client.connect();
  await flush();
  const ws = FakeSocket.last();
  ws.open();
  await flush();
  ws.frame({ type: "subscribed", topic: "public:lobby", offset: 3, epoch: "e", recovered: true, publications: [] });
  ws.frame({ type: "unsubscribed", topic: "public:lobby", code: "INSUFFICIENT_STATE", reason: "x" });
  await flush();
  const subscribes = sentOf(ws, "subscribe");
  assert.equal(subscribes.length, 2);
  assert.deepEqual(subscribes[1].since, { offset: 3, epoch: "e" });
  assert.equal(sub.active, true);
});

test("a token provider is asked at subscribe and before expiry (sub_refresh)", async () => {
  const { client, clock } = makeClient();
  let minted = 0;
  const sub = client.subscribe("private:doc", { token: () => `tok${++minted}`, refreshMargin: 10000 });
  client.connect();
  await flush();
  const ws = FakeSocket.last();
  ws.open();
  await flush();
  assert.equal(sentOf(ws, "subscribe")[0].token, "tok1");
  const expiresAt = clock.now() / 1000 + 60;
  ws.frame({ type: "subscribed", topic: "private:doc", offset: 0, epoch: "e", recovered: true, publications: [], expires_at: expiresAt });
  await clock.advance(49000);
  assert.equal(sentOf(ws, "sub_refresh").length, 0);
  await clock.advance(2000);
  assert.deepEqual(sentOf(ws, "sub_refresh"), [{ type: "sub_refresh", topic: "private:doc", token: "tok2" }]);
  assert.equal(sub.state.status, "subscribed");
});

test("a final refusal ends the subscription with the error's code", async () => {
  const { client } = makeClient();
  const sub = client.subscribe("private:doc");
  /** @type {any[]} */
  const errors = [];
  sub.on("error", (e) => errors.push(e.code));
  client.connect();
  await flush();
  const ws = FakeSocket.last();
  ws.open();
  await flush();
  ws.frame({ type: "error", error: { code: "TOPIC_TOKEN_REQUIRED", message: "needs a token", details: { topic: "private:doc" } } });
  assert.deepEqual(errors, ["TOPIC_TOKEN_REQUIRED"]);
  assert.equal(sub.state.status, "unsubscribed");
  assert.equal(client.topics?.subscriptions.size, 0);
});

test("presence and publish resolve with their answers", async () => {
  const { client } = makeClient();
  const sub = client.subscribe("public:lobby");
  client.connect();
  await flush();
  const ws = FakeSocket.last();
  ws.open();
  await flush();
  ws.frame({ type: "subscribed", topic: "public:lobby", offset: 0, epoch: "e", recovered: true, publications: [] });
  const presence = sub.presence();
  const published = sub.publish({ text: "hi" });
  ws.frame({ type: "presence_result", topic: "public:lobby", clients: [{ user_id: "u1", session_id: "s1", conn_id: "c1" }] });
  ws.frame({ type: "published", topic: "public:lobby", offset: 1, epoch: "e" });
  assert.equal((await presence).clients.length, 1);
  assert.equal((await published).offset, 1);
  assert.deepEqual(sentOf(ws, "publish"), [{ type: "publish", topic: "public:lobby", data: { text: "hi" } }]);
  const refused = sub.publish(1);
  ws.frame({ type: "error", error: { code: "PUBLISH_FORBIDDEN", message: "no", details: { topic: "public:lobby" } } });
  await assert.rejects(refused, /no/);
});
