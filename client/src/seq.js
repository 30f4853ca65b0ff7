// Exactly once, in order: the highest notification `seq` seen, used to drop duplicates and to
// resume after a reconnect with `?last_seq=`; optionally persisted so a reload resumes too.

/**
 * Where `lastSeq` is kept between page loads.
 * @typedef {object} SeqStore
 * @property {() => number | null} load
 * @property {(seq: number) => void} save
 */

export class SeqTracker {
  /** @param {SeqStore} [store] */
  constructor(store) {
    this.store = store ?? null;
    /** @type {number | null} the highest seq delivered; null before any is known */
    this.lastSeq = this.store?.load() ?? null;
  }

  /**
   * Whether a notification with this seq is new; if so it becomes the last one. Seqs increase
   * per user; one at or below the last delivered is a duplicate (a replay overlapping the live
   * stream, or a frame sent twice around a reconnect) and is dropped.
   * @param {number} seq
   * @returns {boolean}
   */
  accept(seq) {
    if (!Number.isSafeInteger(seq) || seq < 0) return false;
    if (this.lastSeq !== null && seq <= this.lastSeq) return false;
    this.advance(seq);
    return true;
  }

  /**
   * Move the resume point forward (never back), e.g. to the newest seq a REST listing showed.
   * @param {number} seq
   */
  advance(seq) {
    if (this.lastSeq !== null && seq <= this.lastSeq) return;
    this.lastSeq = seq;
    this.store?.save(seq);
  }
}

/**
 * A `SeqStore` in `localStorage` (or any Web Storage) under `key`. Use one key per user: seqs
 * are per user.
 * @param {string} key
 * @param {Storage} [storage]
 * @returns {SeqStore}
 */
export function webStorageSeqStore(key, storage = globalThis.localStorage) {
  return {
    load() {
      const raw = storage.getItem(key);
      const value = raw === null ? NaN : Number(raw);
      return Number.isSafeInteger(value) && value >= 0 ? value : null;
    },
    save(seq) {
      storage.setItem(key, String(seq));
    },
  };
}
