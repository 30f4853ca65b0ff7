import { test } from "node:test";
import assert from "node:assert/strict";
import { SeqTracker, webStorageSeqStore } from "../src/seq.js";

test("duplicates and older seqs are dropped; gaps are accepted", () => {
  const tracker = new SeqTracker();
  const delivered = [3, 4, 4, 2, 7, 5, 8, 8].filter((seq) => tracker.accept(seq));
  assert.deepEqual(delivered, [3, 4, 7, 8]);
  assert.equal(tracker.lastSeq, 8);
});

test("advance only moves forward", () => {
  const tracker = new SeqTracker();
  tracker.advance(10);
  tracker.advance(4);
  assert.equal(tracker.lastSeq, 10);
  assert.equal(tracker.accept(10), false);
  assert.equal(tracker.accept(11), true);
});

test("the web storage adapter persists lastSeq and ignores garbage", () => {
  /** @type {Map<string, string>} */
  const data = new Map();
  const storage = /** @type {Storage} */ (/** @type {unknown} */ ({
    getItem: (/** @type {string} */ key) => data.get(key) ?? null,
    setItem: (/** @type {string} */ key, /** @type {string} */ value) => void data.set(key, value),
  }));
  const first = new SeqTracker(webStorageSeqStore("seq:u1", storage));
  assert.equal(first.lastSeq, null);
  first.accept(5);
  const reloaded = new SeqTracker(webStorageSeqStore("seq:u1", storage));
  assert.equal(reloaded.lastSeq, 5);
  assert.equal(reloaded.accept(5), false, "a reload does not deliver seq 5 again");
  data.set("seq:u1", "not a number");
  assert.equal(new SeqTracker(webStorageSeqStore("seq:u1", storage)).lastSeq, null);
});
