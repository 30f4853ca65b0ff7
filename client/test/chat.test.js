import { test } from "node:test";
import assert from "node:assert/strict";
import { askOverSse, resumeOverSse, eventIdAfter } from "../src/chat.js";
import { ApiError, RestClient } from "../src/rest.js";
import { FakeClock, fakeFetch } from "./fakes.js";

/** A streaming response whose body is `chunks`, then ends (a cut connection if no `end`). */
function sse(/** @type {string[]} */ chunks) {
  const encoder = new TextEncoder();
  const body = new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
      controller.close();
    },
  });
  return new Response(body, { headers: { "content-type": "text/event-stream" } });
}

const start = 'data: {"type":"start","session_id":"s1","message_id":"m1","event_id":"1-0"}\n\n';
/** @param {string} id @param {string} text */
const token = (id, text) => `data: {"type":"token","content":"${text}","event_id":"${id}"}\n\n`;

/** @param {Record<string, any>} routes */
function rest(routes) {
  const fetch = fakeFetch(routes);
  return { rest: new RestClient({ baseUrl: "http://gateway.test", getToken: () => "jwt", fetch }), fetch };
}

/** Run `answer` to the end while advancing the fake clock through its resume delays. */
async function drain(/** @type {import("../src/chat.js").ChatAnswer} */ answer, /** @type {FakeClock} */ clock) {
  const events = [];
  const iterator = answer[Symbol.asyncIterator]();
  for (;;) {
    const next = iterator.next();
    let settled = false;
    next.then(() => (settled = true), () => (settled = true));
    while (!settled) await clock.advance(100);
    const { value, done } = await next;
    if (done) return events;
    events.push(value);
  }
}

test("a dropped POST stream resumes with Last-Event-ID: no gap, no repeat", async () => {
  const clock = new FakeClock();
  const { rest: client, fetch } = rest({
    "POST /api/v1/chat/stream": () => sse([start, token("2-0", "Hel"), token("3-0", "lo"), 'data: {"type":"tok']),
    "GET /api/v1/chat/stream/m1": () =>
      sse([": keep-alive\n\n", "id: 3-0\n" + token("3-0", "lo"), "id: 4-0\n" + token("4-0", " you"),
        'id: 5-0\ndata: {"type":"end","message_id":"m1","tokens_used":7,"status":"complete","event_id":"5-0"}\n\n']),
  });
  const answer = askOverSse("hi", { rest: client, clock, sessionId: "s1" });
  const events = await drain(answer, clock);
  assert.deepEqual(events.map((e) => e.type), ["start", "token", "token", "token", "end"]);
  assert.equal(answer.text, "Hello you");
  assert.equal(answer.status, "complete");
  const post = fetch.calls[0];
  assert.equal(JSON.parse(String(post.init.body)).session_id, "s1");
  const resume = fetch.calls[1];
  assert.equal(/** @type {Record<string, string>} */ (resume.init.headers)["last-event-id"], "3-0");
  assert.equal(/** @type {Record<string, string>} */ (resume.init.headers).authorization, "Bearer jwt");
});

test("a refused question raises ApiError with the server's code", async () => {
  const { rest: client } = rest({
    "POST /api/v1/chat/stream": () =>
      Response.json({ error: { code: "CHAT_BUSY", message: "busy", details: { message_id: "m0" } } }, { status: 409 }),
  });
  await assert.rejects(askOverSse("hi", { rest: client }).done(), (error) => {
    assert.ok(error instanceof ApiError);
    assert.equal(error.code, "CHAT_BUSY");
    assert.equal(error.status, 409);
    assert.deepEqual(error.details, { message_id: "m0" });
    return true;
  });
});

test("resume after a reload continues from the saved event and text; 204 means finished", async () => {
  const clock = new FakeClock();
  const { rest: client } = rest({
    "GET /api/v1/chat/stream/m1": ({ init }) =>
      init.headers["last-event-id"] === "9-0"
        ? new Response(null, { status: 204 })
        : sse(["id: 9-0\n" + token("9-0", "!"), 'id: 10-0\ndata: {"type":"end","message_id":"m1","status":"complete","event_id":"10-0"}\n\n']),
  });
  const answer = resumeOverSse("m1", { rest: client, clock, lastEventId: "8-0", text: "Hi" });
  await drain(answer, clock);
  assert.equal(answer.text, "Hi!");
  const finished = resumeOverSse("m1", { rest: client, clock, lastEventId: "9-0" });
  assert.deepEqual(await drain(finished, clock), []);
});

test("an unknown answer is a final ApiError, not retried", async () => {
  const clock = new FakeClock();
  const { rest: client, fetch } = rest({});
  await assert.rejects(drain(resumeOverSse("gone", { rest: client, clock }), clock), { code: "NOT_FOUND" });
  assert.equal(fetch.calls.length, 1);
});

test("cancel waits for the answer's id, then posts the cancel", async () => {
  const { rest: client, fetch } = rest({
    "POST /api/v1/chat/stream": () => sse([start, 'data: {"type":"end","message_id":"m1","status":"cancelled","event_id":"2-0"}\n\n']),
    "POST /api/v1/chat/stream/m1/cancel": () => Response.json({ message_id: "m1", status: "cancelling" }, { status: 202 }),
  });
  const answer = askOverSse("hi", { rest: client });
  const cancelled = answer.cancel();
  await answer.done();
  await cancelled;
  assert.equal(answer.status, "cancelled");
  assert.equal(fetch.calls[1].url.pathname, "/api/v1/chat/stream/m1/cancel");
});

test("event ids compare as 64-bit stream ids", () => {
  assert.ok(eventIdAfter("1700000000001-0", "1700000000000-5"));
  assert.ok(eventIdAfter("18446744073709551615-1", "18446744073709551615-0"));
  assert.ok(!eventIdAfter("5-0", "5-0"));
});
