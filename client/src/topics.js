// Topic subscriptions over the client's WebSocket (docs/topics.md): subscribe, receive each
// publication once and in offset order, and after every reconnect resubscribe with the last
// position seen (`since`) so the gateway sends exactly what was missed — or says it could not
// (`recovered: false`: reload the state). Tokens for private topics come from a provider,
// refreshed in band before they expire.

import { Emitter } from "./emitter.js";

/**
 * @typedef {{offset: number, epoch: string}} Position
 * @typedef {{offset: number, data: unknown}} PublicationData
 * @typedef {{topic: string, user_id: string, session_id: string}} PresenceEvent
 * @typedef {{recovered: boolean, offset: number, epoch: string, resubscribed: boolean}} SubscribedInfo
 * @typedef {{status: "subscribing" | "subscribed" | "unsubscribed", code?: string | null, reason?: string | null}} SubscriptionState
 * @typedef {{code: string, message: string, details?: unknown}} TopicError
 * @typedef {{
 *   publication: PublicationData,
 *   subscribed: SubscribedInfo,
 *   join: PresenceEvent,
 *   leave: PresenceEvent,
 *   state: SubscriptionState,
 *   error: TopicError,
 * }} SubscriptionEvents
 * @typedef {{token?: string | (() => string | Promise<string>), since?: Position, refreshMargin?: number}} SubscribeOptions
 */

/** Codes after which subscribing again cannot help. */
const FINAL = new Set([
  "TOPIC_INVALID",
  "TOPIC_UNKNOWN_NAMESPACE",
  "SUBSCRIBE_FORBIDDEN",
  "TOPIC_TOKEN_REQUIRED",
  "TOPIC_TOKEN_INVALID",
  "TOO_MANY_TOPICS",
]);

/** One topic subscription; made by `RealtimeClient.subscribe`. */
export class Subscription {
  /**
   * @param {Topics} owner
   * @param {string} topic
   * @param {SubscribeOptions} options
   */
  constructor(owner, topic, options) {
    this.owner = owner;
    this.topic = topic;
    this.tokenSource = options.token ?? null;
    this.refreshMargin = options.refreshMargin ?? 30000;
    /** @type {Position | null} the last publication delivered (resubscribe `since`) */
    this.position = options.since ?? null;
    /** @type {Emitter<SubscriptionEvents>} */
    this.events = new Emitter();
    /** @type {SubscriptionState} */
    this.state = { status: "subscribing" };
    this.active = true;
    this.duplicatesDropped = 0;
    /** @type {unknown} */
    this.refreshTimer = null;
    /** @type {{type: string, resolve: (value: any) => void, reject: (error: Error) => void}[]} */
    this.requests = [];
  }

  /**
   * @template {keyof SubscriptionEvents} K
   * @param {K} type
   * @param {(value: SubscriptionEvents[K]) => void} listener
   */
  on(type, listener) {
    return this.events.on(type, listener);
  }

  /** Who is subscribed (namespaces with presence). */
  presence() {
    return this.#request("presence", "presence_result");
  }

  /** How many connections and users are subscribed. */
  presenceStats() {
    return this.#request("presence_stats", "presence_stats");
  }

  /**
   * Publish (namespaces that let clients publish); resolves with `{offset, epoch}`.
   * @param {unknown} data
   */
  publish(data) {
    return this.#request("publish", "published", { data });
  }

  /** Stop the subscription (and its resubscription after reconnects). Idempotent. */
  unsubscribe() {
    if (!this.active) return;
    this.active = false;
    this.owner.forget(this);
    this.owner.client.send({ type: "unsubscribe", topic: this.topic });
    this.#setState({ status: "unsubscribed", code: null, reason: "unsubscribed by the application" });
  }

  async token() {
    const source = this.tokenSource;
    if (source === null) return undefined;
    return typeof source === "function" ? await source() : source;
  }

  /** Send `subscribe` (with `since` once a position is known). */
  async send() {
    if (!this.active) return;
    let token;
    try {
      token = await this.token();
    } catch (error) {
      this.events.emit("error", { code: "TOKEN_PROVIDER", message: String(error) });
      return;
    }
    /** @type {Record<string, unknown> & {type: string}} */
    const frame = { type: "subscribe", topic: this.topic };
    if (token) frame.token = token;
    if (this.position) frame.since = this.position;
    this.#setState({ status: "subscribing" });
    this.owner.client.send(frame);
  }

  // --- frames from the owner ---

  /** @param {any} frame */
  subscribed(frame) {
    const resubscribed = this.position !== null;
    if (frame.recovered) {
      for (const publication of frame.publications ?? []) this.publication(publication);
    }
    this.position = { offset: frame.offset, epoch: frame.epoch };
    this.#setState({ status: "subscribed" });
    this.events.emit("subscribed", { recovered: frame.recovered, offset: frame.offset, epoch: frame.epoch, resubscribed });
    this.#scheduleRefresh(frame.expires_at);
  }

  /** @param {{expires_at: number}} frame */
  refreshed(frame) {
    this.#scheduleRefresh(frame.expires_at);
  }

  /** @param {{offset: number, data: unknown}} frame */
  publication(frame) {
    if (this.position && frame.offset <= this.position.offset) {
      this.duplicatesDropped += 1;
      return;
    }
    if (this.position) this.position = { offset: frame.offset, epoch: this.position.epoch };
    this.events.emit("publication", { offset: frame.offset, data: frame.data });
  }

  /** @param {any} frame */
  unsubscribed(frame) {
    this.#clearRefresh();
    if (!frame.code) return; // the answer to our own unsubscribe
    if (frame.code === "INSUFFICIENT_STATE" || (frame.code === "TOPIC_TOKEN_EXPIRED" && typeof this.tokenSource === "function")) {
      void this.send(); // from the last position: the answer says whether all was recovered
      return;
    }
    this.active = false;
    this.owner.forget(this);
    this.#setState({ status: "unsubscribed", code: frame.code, reason: frame.reason ?? null });
  }

  /** @param {TopicError} error */
  error(error) {
    const pending = this.requests.shift();
    if (pending && this.state.status === "subscribed") {
      pending.reject(Object.assign(new Error(error.message), { code: error.code }));
      return;
    }
    if (pending) this.requests.unshift(pending);
    this.events.emit("error", error);
    if (FINAL.has(error.code) && this.state.status === "subscribing") {
      this.active = false;
      this.owner.forget(this);
      this.#setState({ status: "unsubscribed", code: error.code, reason: error.message });
    }
  }

  /**
   * @param {string} type
   * @param {any} frame
   */
  answer(type, frame) {
    const index = this.requests.findIndex((request) => request.type === type);
    if (index < 0) return;
    const [request] = this.requests.splice(index, 1);
    request.resolve(frame);
  }

  /** The connection dropped: pending requests fail; the subscription waits to be resent. */
  disconnected() {
    this.#clearRefresh();
    for (const request of this.requests.splice(0)) request.reject(new Error("the connection closed"));
    if (this.active) this.#setState({ status: "subscribing" });
  }

  // --- internals ---

  /**
   * @param {string} type
   * @param {string} answerType
   * @param {Record<string, unknown>} [extra]
   */
  #request(type, answerType, extra = {}) {
    return new Promise((resolve, reject) => {
      if (!this.owner.client.send({ type, topic: this.topic, ...extra })) {
        reject(new Error("the connection is not open"));
        return;
      }
      this.requests.push({ type: answerType, resolve, reject });
    });
  }

  /** @param {number | null | undefined} expiresAt seconds */
  #scheduleRefresh(expiresAt) {
    this.#clearRefresh();
    if (typeof expiresAt !== "number" || typeof this.tokenSource !== "function") return;
    const clock = this.owner.client.clock;
    const delay = Math.max(0, expiresAt * 1000 - this.refreshMargin - clock.now());
    this.refreshTimer = clock.setTimeout(async () => {
      this.refreshTimer = null;
      try {
        const token = await this.token();
        this.owner.client.send({ type: "sub_refresh", topic: this.topic, token });
      } catch (error) {
        this.events.emit("error", { code: "TOKEN_PROVIDER", message: String(error) });
      }
    }, delay);
  }

  #clearRefresh() {
    if (this.refreshTimer !== null) this.owner.client.clock.clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
  }

  /** @param {SubscriptionState} state */
  #setState(state) {
    this.state = state;
    this.events.emit("state", state);
  }
}

/** The topic frames of one `RealtimeClient`. */
export class Topics {
  /** @param {import("./realtime.js").RealtimeClient} client */
  constructor(client) {
    this.client = client;
    /** @type {Map<string, Subscription>} */
    this.subscriptions = new Map();
    const route = (/** @type {string} */ type, /** @type {(sub: Subscription, frame: any) => void} */ fn) =>
      client.handle(/** @type {any} */ (type), (/** @type {any} */ frame) => {
        const sub = this.subscriptions.get(frame.topic);
        if (sub) fn(sub, frame);
      });
    route("subscribed", (sub, frame) => sub.subscribed(frame));
    route("publication", (sub, frame) => sub.publication(frame));
    route("unsubscribed", (sub, frame) => sub.unsubscribed(frame));
    route("join", (sub, frame) => sub.events.emit("join", frame));
    route("leave", (sub, frame) => sub.events.emit("leave", frame));
    route("sub_refreshed", (sub, frame) => sub.refreshed(frame));
    for (const [type, answer] of [["presence_result", "presence_result"], ["presence_stats", "presence_stats"], ["published", "published"]]) {
      route(type, (sub, frame) => sub.answer(answer, frame));
    }
    client.on("error", (error) => {
      if (error.kind !== "server") return;
      const topic = /** @type {any} */ (error.details)?.topic;
      const sub = typeof topic === "string" ? this.subscriptions.get(topic) : undefined;
      sub?.error({ code: error.code, message: error.message, details: error.details });
    });
    client.on("state", (state) => {
      if (state.status === "open") for (const sub of this.subscriptions.values()) void sub.send();
      else for (const sub of this.subscriptions.values()) sub.disconnected();
    });
  }

  /**
   * @param {string} topic
   * @param {SubscribeOptions} options
   */
  subscribe(topic, options) {
    if (this.subscriptions.has(topic)) throw new Error(`already subscribed to ${topic}`);
    const sub = new Subscription(this, topic, options);
    this.subscriptions.set(topic, sub);
    if (this.client.state.status === "open") void sub.send();
    return sub;
  }

  /** @param {Subscription} sub */
  forget(sub) {
    if (this.subscriptions.get(sub.topic) === sub) this.subscriptions.delete(sub.topic);
  }
}
