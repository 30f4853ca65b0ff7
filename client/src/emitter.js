// Typed events: listeners (`on`) and async iterators (`iterate`) over the same emissions.

/**
 * An async iterator fed by pushes; bounded: a consumer that falls `limit` events behind gets an
 * error instead of the page growing without bound.
 * @template T
 */
export class Channel {
  /** @param {number} limit */
  constructor(limit) {
    this.limit = limit;
    /** @type {T[]} */
    this.queue = [];
    /** @type {((result: IteratorResult<T>) => void) | null} */
    this.waiting = null;
    /** @type {((error: Error) => void) | null} */
    this.waitingFail = null;
    this.closed = false;
    /** @type {Error | null} */
    this.error = null;
  }

  /** @param {T} value */
  push(value) {
    if (this.closed) return;
    if (this.waiting) {
      const resolve = this.waiting;
      this.waiting = this.waitingFail = null;
      resolve({ value, done: false });
    } else if (this.queue.length >= this.limit) {
      this.fail(new Error(`iterator fell ${this.limit} events behind; read faster or use on()`));
    } else {
      this.queue.push(value);
    }
  }

  /** Ends the iteration once the queued values are read. Idempotent. */
  close() {
    if (this.closed) return;
    this.closed = true;
    if (this.waiting) {
      const resolve = this.waiting;
      this.waiting = this.waitingFail = null;
      resolve({ value: undefined, done: true });
    }
  }

  /** @param {Error} error */
  fail(error) {
    if (this.closed) return;
    this.error = error;
    this.queue = [];
    this.closed = true;
    if (this.waitingFail) {
      const reject = this.waitingFail;
      this.waiting = this.waitingFail = null;
      reject(error);
    }
  }

  /** @returns {Promise<IteratorResult<T>>} */
  next() {
    if (this.queue.length > 0) {
      return Promise.resolve({ value: /** @type {T} */ (this.queue.shift()), done: false });
    }
    if (this.error) return Promise.reject(this.error);
    if (this.closed) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => {
      this.waiting = resolve;
      this.waitingFail = reject;
    });
  }
}

/**
 * @template {Record<string, unknown>} Events
 */
export class Emitter {
  constructor() {
    /** @type {Map<keyof Events, Set<(value: any) => void>>} */
    this.listeners = new Map();
  }

  /**
   * Call `listener` for every `type` event; returns a function that removes it.
   * @template {keyof Events} K
   * @param {K} type
   * @param {(value: Events[K]) => void} listener
   * @returns {() => void}
   */
  on(type, listener) {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => set.delete(listener);
  }

  /**
   * @template {keyof Events} K
   * @param {K} type
   * @param {Events[K]} value
   */
  emit(type, value) {
    for (const listener of [...(this.listeners.get(type) ?? [])]) {
      try {
        listener(value);
      } catch (error) {
        // A failing listener must not break delivery to the others nor the connection.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  /**
   * The `type` events from now on as an async iterator; `break` out of the loop to stop, or
   * pass a signal.
   * @template {keyof Events} K
   * @param {K} type
   * @param {{signal?: AbortSignal, limit?: number}} [options]
   * @returns {AsyncIterableIterator<Events[K]>}
   */
  iterate(type, options = {}) {
    /** @type {Channel<Events[K]>} */
    const channel = new Channel(options.limit ?? 10000);
    const off = this.on(type, (value) => channel.push(value));
    const stop = () => {
      off();
      channel.close();
    };
    options.signal?.addEventListener("abort", stop, { once: true });
    return {
      next: () => channel.next(),
      return: async () => {
        stop();
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }
}
