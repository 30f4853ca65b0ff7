import { test } from "node:test";
import assert from "node:assert/strict";
import { closeDecision } from "../src/close-policy.js";

test("1008 about the token asks for a new token and is an auth error", () => {
  for (const reason of ["token missing", "token malformed", "token expired", "token signature invalid", "token algorithm not allowed"]) {
    assert.deepEqual(closeDecision(1008, reason), { action: "new-token", auth: true }, reason);
  }
});

test("1008 for anything else stops: the request itself is wrong", () => {
  for (const reason of ["origin not allowed", "session belongs to another user", "session id is not a UUID", "rate limit exceeded"]) {
    assert.deepEqual(closeDecision(1008, reason), { action: "stop", auth: false }, reason);
  }
});

test("1012 reconnects promptly; 1013, 1011, 1006, 1000 and unknown codes back off", () => {
  assert.equal(closeDecision(1012, "server restarting: reconnect").action, "prompt");
  for (const code of [1000, 1001, 1006, 1009, 1011, 1013, 4999]) {
    assert.equal(closeDecision(code, "").action, "backoff", String(code));
  }
});
