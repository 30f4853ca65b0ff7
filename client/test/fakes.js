// Test doubles: a fake clock (timers run only when the test advances time) and a scripted
// WebSocket that records what the client did.

/** A settled event loop: lets pending promise callbacks (async token providers...) run. */
export function flush() {
  return new Promise((resolve) => setImmediate(resolve));
}

export class FakeClock {
  constructor(start = 1_700_000_000_000) {
    this.time = start;
    /** @type {Map<number, {at: number, fn: () => void}>} */
    this.timers = new Map();
    this.nextId = 1;
  }

  now() {
    return this.time;
  }

  /** @param {() => void} fn @param {number} ms */
  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.timers.set(id, { at: this.time + ms, fn });
    return id;
  }

  /** @param {unknown} id */
  clearTimeout(id) {
    this.timers.delete(/** @type {number} */ (id));
  }

  /** The delay until the next timer fires, or null. */
  nextDelay() {
    let best = null;
    for (const { at } of this.timers.values()) best = best === null ? at : Math.min(best, at);
    return best === null ? null : best - this.time;
  }

  /** Move time forward by `ms`, firing due timers in order (and letting promises settle). */
  async advance(ms) {
    const end = this.time + ms;
    for (;;) {
      await flush();
      let due = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (due === null || timer.at < due[1].at)) due = [id, timer];
      }
      if (due === null) break;
      this.timers.delete(due[0]);
      this.time = Math.max(this.time, due[1].at);
      due[1].fn();
    }
    this.time = end;
    await flush();
  }
}

/** A WebSocket double: every instance is recorded; the test plays the server. */
export class FakeSocket {
  /** @type {FakeSocket[]} */
  static instances = [];

  /** @param {string} url @param {string[]} protocols */
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    /** @type {string[]} */
    this.sent = [];
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    /** @type {{code?: number, reason?: string} | null} */
    this.closedByClient = null;
    FakeSocket.instances.push(this);
  }

  static reset() {
    FakeSocket.instances = [];
  }

  static last() {
    return FakeSocket.instances[FakeSocket.instances.length - 1];
  }

  /** @param {string} data */
  send(data) {
    this.sent.push(data);
  }

  /** @param {number} [code] @param {string} [reason] */
  close(code, reason) {
    this.closedByClient = { code, reason };
    this.readyState = 3;
  }

  // --- the server's side ---

  /** Accept and greet, as the gateway does. */
  open(userId = "u1") {
    this.readyState = 1;
    this.onopen?.({});
    this.frame({ type: "connection_established", data: { session_id: "s1", user_id: userId, connected_at: "" } });
  }

  /** @param {object} frame */
  frame(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** @param {number} seq */
  notification(seq) {
    this.frame({ type: "notification", data: { id: `n${seq}`, title: `t${seq}`, content: "", notification_type: "x", created_at: "", seq }, timestamp: "" });
  }

  /** @param {number} code @param {string} reason */
  serverClose(code, reason) {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  sentFrames() {
    return this.sent.map((raw) => JSON.parse(raw));
  }
}

/**
 * A JWT-shaped token (unsigned: the client never verifies) expiring at `exp` seconds.
 * @param {number} exp
 * @param {string} [sub]
 */
export function fakeJwt(exp, sub = "u1") {
  const part = (/** @type {object} */ value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${part({ alg: "HS256" })}.${part({ sub, exp })}.sig`;
}

/**
 * A fetch double answering from `routes` (method + path → handler), recording every call.
 * @param {Record<string, (request: {url: URL, init: RequestInit}) => Response | Promise<Response>>} routes
 */
export function fakeFetch(routes) {
  /** @type {{url: URL, init: RequestInit}[]} */
  const calls = [];
  /** @type {typeof fetch & {calls: typeof calls}} */
  const fn = Object.assign(
    async (/** @type {any} */ input, /** @type {RequestInit} */ init = {}) => {
      const url = new URL(String(input), "http://gateway.test");
      calls.push({ url, init });
      const key = `${init.method ?? "GET"} ${url.pathname}`;
      const handler = routes[key];
      if (!handler) return new Response(JSON.stringify({ error: { code: "NOT_FOUND", message: key } }), { status: 404 });
      return handler({ url, init });
    },
    { calls },
  );
  return fn;
}
