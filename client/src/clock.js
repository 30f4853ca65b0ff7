// Time as an injectable dependency: the client's timing logic (backoff, heartbeats, token
// refresh) runs on a `Clock`, so unit tests drive it with a fake one instead of sleeping.

/**
 * @typedef {object} Clock
 * @property {() => number} now  milliseconds since the epoch
 * @property {(fn: () => void, ms: number) => unknown} setTimeout
 * @property {(handle: unknown) => void} clearTimeout
 */

/** @type {Clock} */
export const systemClock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (handle) =>
    globalThis.clearTimeout(/** @type {ReturnType<typeof setTimeout>} */ (handle)),
};
