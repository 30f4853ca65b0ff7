import { test } from "node:test";
import assert from "node:assert/strict";
import { Backoff } from "../src/backoff.js";

test("delays stay between the floor and an exponentially growing ceiling, capped", () => {
  const low = new Backoff({ random: () => 0 });
  const high = new Backoff({ random: () => 0.999999 });
  const ceilings = [1000, 2000, 4000, 8000, 16000, 20000, 20000, 20000];
  for (const ceiling of ceilings) {
    assert.equal(low.next(), 500);
    const delay = high.next();
    assert.ok(delay <= ceiling && delay > ceiling - 1, `${delay} near ${ceiling}`);
  }
});

test("full jitter: delays spread over the whole range, not clustered at the ceiling", () => {
  let i = 0;
  const samples = [0.1, 0.5, 0.9];
  const backoff = new Backoff({ random: () => samples[i++ % 3] });
  backoff.attempt = 5; // ceiling at the 20 s cap
  const delays = [backoff.next(), backoff.next(), backoff.next()];
  assert.deepEqual(delays.map(Math.round), [2450, 10250, 18050]);
});

test("the attempts reset only after a connection that stayed up for stableAfter", () => {
  const backoff = new Backoff({ random: () => 0.999999, stableAfter: 10000 });
  backoff.next();
  backoff.next();
  backoff.next();
  backoff.connectionLasted(9999);
  assert.equal(backoff.attempt, 3, "a short-lived connection keeps the backoff growing");
  backoff.connectionLasted(10000);
  assert.equal(backoff.attempt, 0);
  assert.ok(backoff.next() <= 1000);
});

test("a prompt retry is jittered within promptDelay, and only the first one is prompt", () => {
  const backoff = new Backoff({ random: () => 0.5 });
  assert.equal(backoff.prompt(), 500);
  assert.ok(backoff.prompt() >= 500, "a restart loop falls back to backoff");
  const zero = new Backoff({ random: () => 0 });
  assert.equal(zero.prompt(), 0);
  assert.equal(zero.prompt(), 500, "the second one is floored: never a tight loop");
});

test("inconsistent bounds are refused", () => {
  assert.throws(() => new Backoff({ minDelay: 0 }), RangeError);
  assert.throws(() => new Backoff({ baseDelay: 30000 }), RangeError);
});
