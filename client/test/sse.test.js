import { test } from "node:test";
import assert from "node:assert/strict";
import { SseParser } from "../src/sse.js";

/** @param {string[]} chunks */
function parse(chunks) {
  const parser = new SseParser();
  const out = chunks.flatMap((chunk) => parser.feed(chunk));
  return { events: [...out, ...parser.end()], parser };
}

test("an event split across chunks at every position is parsed once, whole", () => {
  const body = 'id: 1-0\ndata: {"type":"token","content":"héllo"}\n\n';
  for (let cut = 0; cut <= body.length; cut++) {
    const { events } = parse([body.slice(0, cut), body.slice(cut)]);
    assert.equal(events.length, 1, `cut at ${cut}`);
    assert.equal(events[0].data, '{"type":"token","content":"héllo"}');
    assert.equal(events[0].id, "1-0");
  }
});

test("several events in one chunk come out in order", () => {
  const { events } = parse(['data: {"n":1}\n\ndata: {"n":2}\n\nid: 5-1\ndata: {"n":3}\n\n']);
  assert.deepEqual(events.map((e) => JSON.parse(e.data).n), [1, 2, 3]);
  assert.deepEqual(events.map((e) => e.id), [null, null, "5-1"]);
});

test("keep-alive comments are skipped and counted", () => {
  const { events, parser } = parse([": keep-alive\n\n", 'data: {"n":1}\n', ": keep-alive\n", "\n"]);
  assert.equal(events.length, 1);
  assert.equal(parser.comments, 2);
});

test("CRLF and CR line endings, including a CRLF split between chunks", () => {
  const { events } = parse(["data: a\r", "\n\r\ndata: b\r\rdata: c\r\n", "\r\n"]);
  assert.deepEqual(events.map((e) => e.data), ["a", "b", "c"]);
});

test("multi-line data, event names, no space after the colon, retry", () => {
  const { events, parser } = parse(["event: update\ndata:one\ndata: two\nretry: 3000\n\n"]);
  assert.deepEqual(events, [{ data: "one\ntwo", event: "update", id: null }]);
  assert.equal(parser.retry, 3000);
});

test("an event without its closing blank line at the end of the stream is dropped", () => {
  const { events } = parse(["data: complete\n\ndata: cut"]);
  assert.deepEqual(events.map((e) => e.data), ["complete"]);
});
