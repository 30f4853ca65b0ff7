// push.js without a browser: key conversion, and what happens where Web Push is missing.

import assert from "node:assert/strict";
import { test } from "node:test";

import { PushError, base64UrlToBytes, enablePush, pushSupported } from "../src/push.js";

test("base64url keys become the bytes applicationServerKey takes, with or without padding", () => {
  assert.deepEqual(Array.from(base64UrlToBytes("AQID_-8")), [1, 2, 3, 255, 239]);
  assert.deepEqual(Array.from(base64UrlToBytes("AQID_-8=")), [1, 2, 3, 255, 239]);
  assert.equal(base64UrlToBytes("BA" + "A".repeat(85)).length, 65);
});

test("without service workers and PushManager, push is unsupported and enablePush says so", async () => {
  assert.equal(pushSupported(), false);
  const rest = /** @type {any} */ ({});
  await assert.rejects(
    enablePush({ rest, serviceWorkerUrl: "/sw.js" }),
    (error) => error instanceof PushError && error.code === "unsupported",
  );
});
