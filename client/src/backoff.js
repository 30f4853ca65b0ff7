// Reconnect delays: exponential backoff with full jitter above a floor, capped, and reset once a
// connection has stayed up for a while. One place decides every retry delay of the client.

/**
 * @typedef {object} BackoffOptions
 * @property {number} [minDelay]  floor of every delay, ms (never a tight loop) — 500
 * @property {number} [baseDelay]  ceiling of the first delay, ms — 1000
 * @property {number} [maxDelay]  cap of every delay, ms — 20000
 * @property {number} [factor]  growth of the ceiling per attempt — 2
 * @property {number} [stableAfter]  a connection open this long resets the attempts, ms — 10000
 * @property {number} [promptDelay]  ceiling of a prompt reconnect (after 1012), ms — 1000
 * @property {() => number} [random]  uniform in [0, 1) — Math.random
 */

export class Backoff {
  /** @param {BackoffOptions} [options] */
  constructor(options = {}) {
    this.minDelay = options.minDelay ?? 500;
    this.baseDelay = options.baseDelay ?? 1000;
    this.maxDelay = options.maxDelay ?? 20000;
    this.factor = options.factor ?? 2;
    this.stableAfter = options.stableAfter ?? 10000;
    this.promptDelay = options.promptDelay ?? 1000;
    this.random = options.random ?? Math.random;
    if (!(this.minDelay > 0 && this.minDelay <= this.baseDelay && this.baseDelay <= this.maxDelay)) {
      throw new RangeError(
        `backoff needs 0 < minDelay <= baseDelay <= maxDelay, got ${this.minDelay}, ${this.baseDelay}, ${this.maxDelay}`,
      );
    }
    /** Retries since the last stable connection. */
    this.attempt = 0;
  }

  /** The largest delay the next `next()` may return, ms. */
  ceiling() {
    return Math.min(this.maxDelay, this.baseDelay * this.factor ** this.attempt);
  }

  /**
   * The delay before the next retry (uniform between the floor and the current ceiling), and one
   * more attempt counted.
   * @returns {number}
   */
  next() {
    const ceiling = this.ceiling();
    this.attempt += 1;
    return this.minDelay + this.random() * (ceiling - this.minDelay);
  }

  /**
   * A prompt retry (the server is restarting and another instance serves us): jittered within
   * `promptDelay` so a deploy does not bring every client back in the same millisecond. Only the
   * first retry after a stable connection is prompt; one that follows a failed attempt backs off.
   * @returns {number}
   */
  prompt() {
    if (this.attempt > 0) return this.next();
    this.attempt += 1;
    return this.random() * this.promptDelay;
  }

  /**
   * Called when a connection closes after having been open for `openFor` ms: a stable one resets
   * the attempts, so the next outage starts again with short delays.
   * @param {number} openFor
   */
  connectionLasted(openFor) {
    if (openFor >= this.stableAfter) this.attempt = 0;
  }

  reset() {
    this.attempt = 0;
  }
}
