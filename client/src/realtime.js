// The WebSocket side of the gateway: one connection per client, authenticated with the
// `bearer, <jwt>` subprotocol, reconnected with backoff and jitter according to the close code,
// resumed with `?last_seq=` so every notification arrives exactly once and in order, kept alive
// with pings, and its token refreshed in band before it expires.

import { Backoff } from "./backoff.js";
import { Channel, Emitter } from "./emitter.js";
import { ChatAnswer, askOverSse, resumeOverSse } from "./chat.js";
import { ApiError, RestClient } from "./rest.js";
import { SeqTracker } from "./seq.js";
import { closeDecision } from "./close-policy.js";
import { jwtClaims, refreshTime } from "./jwt.js";
import { systemClock } from "./clock.js";
import { Topics } from "./topics.js";

/** @typedef {import("./wire.js").ServerFrame} ServerFrame */
/** @typedef {import("./wire.js").AnyFrame} AnyFrame */
/** @typedef {import("./wire.js").MessageData} MessageData */
/** @typedef {import("./wire.js").NotificationsChangedData} NotificationsChangedData */
/** @typedef {{[K in ServerFrame["type"]]: Extract<ServerFrame, {type: K}>}} FrameByType */
/** @typedef {import("./wire.js").NotificationData} NotificationData */
/** @typedef {import("./wire.js").ChatEvent} ChatEvent */
/** @typedef {import("./clock.js").Clock} Clock */
/** @typedef {import("./seq.js").SeqStore} SeqStore */
/** @typedef {import("./backoff.js").BackoffOptions} BackoffOptions */

/**
 * @typedef {{code: number, reason: string, at: number}} CloseInfo
 * @typedef {{status: "idle"}
 *   | {status: "connecting", attempt: number}
 *   | {status: "open", sessionId: string, userId: string}
 *   | {status: "reconnecting", attempt: number, retryInMs: number, retryAt: number, lastClose: CloseInfo | null}
 *   | {status: "closed", why: string, code: number | null, reason: string, auth: boolean}} ConnectionState
 *
 * @typedef {{kind: "auth", message: string, code?: number, reason?: string}
 *   | {kind: "server", code: string, message: string, details?: unknown}
 *   | {kind: "token", message: string}
 *   | {kind: "resume", message: string}} ClientError
 *
 * @typedef {{
 *   notification: NotificationData,
 *   changed: NotificationsChangedData,
 *   message: MessageData,
 *   state: ConnectionState,
 *   error: ClientError,
 *   frame: AnyFrame,
 * }} ClientEvents
 */

/**
 * The minimal WebSocket the client needs (the browser's, Node's global one, or a test double).
 * @typedef {{
 *   readyState: number,
 *   send(data: string): void,
 *   close(code?: number, reason?: string): void,
 *   onopen: ((event: any) => void) | null,
 *   onmessage: ((event: {data: any}) => void) | null,
 *   onclose: ((event: {code: number, reason: string}) => void) | null,
 *   onerror: ((event: any) => void) | null,
 * }} WebSocketLike
 * @typedef {new (url: string, protocols: string[]) => WebSocketLike} WebSocketConstructor
 */

/**
 * @typedef {object} RealtimeOptions
 * @property {string} [url]  the gateway's base URL ("https://api.example.com"); default: the page's origin
 * @property {() => string | Promise<string>} getToken  called at every connect and before expiry
 * @property {string} [sessionId]  the WebSocket's session (a UUID); default: a new random one
 * @property {SeqStore} [seqStore]  where `lastSeq` survives a reload (see webStorageSeqStore)
 * @property {boolean} [resumeFromLatest]  with no known `lastSeq`, ask the REST API for the newest
 *   seq before the first connect, so nothing created meanwhile is missed — true
 * @property {BackoffOptions} [backoff]
 * @property {number} [pingInterval]  ms between `ping` frames (keeps the idle timeout away) — 25000
 * @property {number} [pongTimeout]  ms without any frame after a ping before the link is declared dead — 10000
 * @property {number} [openTimeout]  ms for `connection_established` to arrive — 15000
 * @property {number} [refreshMargin]  refresh the token this long before `exp`, ms — 60000
 * @property {Clock} [clock]
 * @property {WebSocketConstructor} [WebSocket]
 * @property {typeof fetch} [fetch]
 */

const OPEN = 1;

export class RealtimeClient {
  /** @param {RealtimeOptions} options */
  constructor(options) {
    const origin = globalThis.location?.origin;
    const url = options.url ?? origin;
    if (!url) throw new Error("options.url is required outside a browser page");
    this.baseUrl = url.replace(/\/$/, "");
    this.getToken = options.getToken;
    this.sessionId = options.sessionId ?? globalThis.crypto.randomUUID();
    this.clock = options.clock ?? systemClock;
    this.backoff = new Backoff(options.backoff);
    this.pingInterval = options.pingInterval ?? 25000;
    this.pongTimeout = options.pongTimeout ?? 10000;
    this.openTimeout = options.openTimeout ?? 15000;
    this.refreshMargin = options.refreshMargin ?? 60000;
    this.resumeFromLatest = options.resumeFromLatest ?? true;
    const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    if (!WebSocketImpl) {
      // Node 20 has no global WebSocket (22 has): pass one, e.g. the `ws` package's.
      throw new Error("no WebSocket implementation: pass options.WebSocket");
    }
    /** @type {WebSocketConstructor} */
    this.WebSocket = /** @type {WebSocketConstructor} */ (/** @type {unknown} */ (WebSocketImpl));
    this.rest = new RestClient({
      baseUrl: this.baseUrl,
      getToken: this.getToken,
      ...(options.fetch ? { fetch: options.fetch } : {}),
    });
    this.seq = new SeqTracker(options.seqStore);
    /** @type {Emitter<ClientEvents>} */
    this.events = new Emitter();
    /** @type {ConnectionState} */
    this.state = { status: "idle" };
    /** Counters for a status display. */
    this.stats = {
      connects: 0,
      reconnects: 0,
      duplicatesDropped: 0,
      /** @type {CloseInfo | null} */
      lastClose: null,
    };
    /** @type {Map<string, (frame: any) => void>} frame handlers by type (see `handle`) */
    this.frameHandlers = new Map();
    /** @type {WebSocketLike | null} */
    this.ws = null;
    /** @type {string | null} the token of the current connection */
    this.token = null;
    /** @type {string | null} a token the server refused: the provider must give another */
    this.refusedToken = null;
    this.openedAt = 0;
    this.stopped = true;
    this.refreshing = false;
    /** @type {{answer: ChatAnswer, events: Channel<ChatEvent>} | null} */
    this.wsAnswer = null;
    /** @type {Topics | null} created by the first `subscribe` */
    this.topics = null;
    /** @type {Record<string, unknown>} */
    this.timers = {};
    this.#installHandlers();
  }

  /** The highest notification seq delivered (persist it to resume after a reload). */
  get lastSeq() {
    return this.seq.lastSeq;
  }

  /**
   * @template {keyof ClientEvents} K
   * @param {K} type
   * @param {(value: ClientEvents[K]) => void} listener
   * @returns {() => void} removes the listener
   */
  on(type, listener) {
    return this.events.on(type, listener);
  }

  /**
   * @template {keyof ClientEvents} K
   * @param {K} type
   * @param {{signal?: AbortSignal}} [options]
   */
  iterate(type, options) {
    return this.events.iterate(type, options);
  }

  /**
   * Handle the server's `type` frames (one handler per type; the last one set wins). The
   * client's own handlers are set here; extensions (topics, push) add theirs the same way.
   * @template {keyof FrameByType} K
   * @param {K} type
   * @param {(frame: FrameByType[K]) => void} handler
   */
  handle(type, handler) {
    this.frameHandlers.set(type, handler);
  }

  /**
   * Subscribe to a topic (docs/topics.md). Publications arrive once, in offset order; after a
   * reconnect the subscription is sent again with the last position, and the gateway sends
   * what was missed (`subscribed` event: `recovered` false means some were lost).
   * @param {string} topic  namespace:name
   * @param {import("./topics.js").SubscribeOptions} [options]  `token`: a subscription token,
   *   or a provider called at every (re)subscribe and before the token expires
   * @returns {import("./topics.js").Subscription}
   */
  subscribe(topic, options = {}) {
    this.topics ??= new Topics(this);
    return this.topics.subscribe(topic, options);
  }

  /** Notifications as an async iterator, each once, in seq order. */
  notifications(options = {}) {
    return this.events.iterate("notification", options);
  }

  /** Start connecting (and keep reconnecting) until `close()`. Idempotent. */
  connect() {
    if (!this.stopped) return;
    this.stopped = false;
    this.refusedToken = null;
    this.backoff.reset();
    void this.#attempt();
  }

  /** Close the connection and stop reconnecting. Idempotent. */
  close() {
    this.stopped = true;
    this.#clearTimers();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onclose = ws.onmessage = ws.onerror = ws.onopen = null;
      ws.close(1000, "client closed");
    }
    this.wsAnswer?.events.fail(new ApiError(0, "CLOSED", "the client was closed"));
    this.wsAnswer = null;
    this.#setState({ status: "closed", why: "closed by the application", code: 1000, reason: "client closed", auth: false });
  }

  /**
   * Send a frame when the connection is open; false otherwise (nothing is queued: frames are
   * requests whose answers only make sense on the connection that asked).
   * @param {Record<string, unknown> & {type: string}} frame
   */
  send(frame) {
    if (!this.ws || this.ws.readyState !== OPEN || this.state.status !== "open") return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /**
   * Ask the agent. Over SSE (default) any session may be named (none: a new one); over the
   * WebSocket (`transport: "ws"`, the connection must be open) the question goes to this
   * connection's session, and if the socket drops the answer continues over SSE.
   * @param {string} message
   * @param {{sessionId?: string | null, transport?: "sse" | "ws", signal?: AbortSignal}} [options]
   * @returns {ChatAnswer}
   */
  ask(message, options = {}) {
    if (options.transport === "ws") return this.#askOverWebSocket(message, options);
    return askOverSse(message, {
      rest: this.rest,
      clock: this.clock,
      sessionId: options.sessionId ?? null,
      ...(options.signal ? { signal: options.signal } : {}),
    });
  }

  /**
   * Continue an answer by its id after the event `lastEventId` (e.g. after a page reload).
   * @param {string} messageId
   * @param {{lastEventId?: string | null, text?: string, signal?: AbortSignal}} [options]
   */
  resume(messageId, options = {}) {
    return resumeOverSse(messageId, { rest: this.rest, clock: this.clock, ...options });
  }

  // --- connection lifecycle -------------------------------------------------------------

  async #attempt() {
    if (this.stopped) return;
    this.#setState({ status: "connecting", attempt: this.backoff.attempt });
    let token;
    try {
      token = await this.getToken();
    } catch (error) {
      this.events.emit("error", { kind: "token", message: `token provider failed: ${error}` });
      this.#retry(this.backoff.next(), null);
      return;
    }
    if (this.stopped) return;
    if (token === this.refusedToken) {
      this.#stop("the server refused the token and the token provider has no other", this.stats.lastClose, true);
      return;
    }
    if (this.seq.lastSeq === null && this.resumeFromLatest) await this.#resumePoint();
    if (this.stopped) return;
    const url = new URL(`${this.baseUrl}/api/v1/ws/${encodeURIComponent(this.sessionId)}`, globalThis.location?.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (this.seq.lastSeq !== null) url.searchParams.set("last_seq", String(this.seq.lastSeq));
    this.token = token;
    this.stats.connects += 1;
    let ws;
    try {
      // The token travels as a subprotocol, never in the URL (proxies log URLs).
      ws = new this.WebSocket(url.href, ["bearer", token]);
    } catch (error) {
      this.#closed(1006, String(error));
      return;
    }
    this.ws = ws;
    ws.onmessage = (event) => this.#frame(event.data);
    ws.onclose = (event) => {
      if (this.ws === ws) this.#closed(event.code, event.reason);
    };
    ws.onerror = () => {}; // a close event with the code follows
    this.#timer("open", this.openTimeout, () => this.#abandon(ws, 4001, "no connection_established in time"));
  }

  /** With no known lastSeq: the newest seq the user has, so a reconnect misses nothing. */
  async #resumePoint() {
    try {
      const page = await this.rest.listNotifications({ pageSize: 1 });
      this.seq.advance(page.items[0]?.seq ?? 0);
    } catch (error) {
      this.events.emit("error", {
        kind: "resume",
        message: `could not read the newest notification; connecting without last_seq: ${error}`,
      });
    }
  }

  /**
   * Give up on a connection the client considers dead (no frame arrived in time).
   * @param {WebSocketLike} ws
   * @param {number} code
   * @param {string} reason
   */
  #abandon(ws, code, reason) {
    if (this.ws !== ws) return;
    ws.onclose = ws.onmessage = ws.onerror = ws.onopen = null;
    try {
      ws.close(code, reason);
    } catch {
      // already closing
    }
    this.#closed(code, reason);
  }

  /**
   * @param {number} code
   * @param {string} reason
   */
  #closed(code, reason) {
    const wasOpen = this.state.status === "open";
    this.ws = null;
    this.#clearTimers();
    const lastClose = { code, reason, at: this.clock.now() };
    this.stats.lastClose = lastClose;
    if (this.wsAnswer) this.#detachWsAnswer();
    if (this.stopped) return;
    this.backoff.connectionLasted(wasOpen ? this.clock.now() - this.openedAt : 0);
    const decision = closeDecision(code, reason);
    if (decision.auth) {
      this.events.emit("error", { kind: "auth", message: `the server refused the token: ${reason}`, code, reason });
    }
    switch (decision.action) {
      case "stop":
        this.#stop(`the server closed the connection: ${code} ${reason}`, lastClose, false);
        return;
      case "new-token":
        if (this.refusedToken !== null) {
          this.#stop(`the server refused a new token too: ${reason}`, lastClose, true);
          return;
        }
        // Ask the provider once; the next attempt stops if it hands back the same token.
        this.refusedToken = this.token;
        this.#retry(this.backoff.next(), lastClose);
        return;
      case "prompt":
        this.#retry(this.backoff.prompt(), lastClose);
        return;
      default:
        this.#retry(this.backoff.next(), lastClose);
    }
  }

  /**
   * @param {number} delay
   * @param {CloseInfo | null} lastClose
   */
  #retry(delay, lastClose) {
    this.stats.reconnects += 1;
    this.#setState({
      status: "reconnecting",
      attempt: this.backoff.attempt,
      retryInMs: Math.round(delay),
      retryAt: this.clock.now() + delay,
      lastClose,
    });
    this.#timer("retry", delay, () => void this.#attempt());
  }

  /**
   * @param {string} why
   * @param {CloseInfo | null} lastClose
   * @param {boolean} auth
   */
  #stop(why, lastClose, auth) {
    this.stopped = true;
    this.#clearTimers();
    this.#setState({ status: "closed", why, code: lastClose?.code ?? null, reason: lastClose?.reason ?? "", auth });
  }

  /** @param {ConnectionState} state */
  #setState(state) {
    this.state = state;
    this.events.emit("state", state);
  }

  // --- frames ------------------------------------------------------------------------------

  /** @param {unknown} raw */
  #frame(raw) {
    if (typeof raw !== "string") return;
    /** @type {AnyFrame} */
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    if (!frame || typeof frame.type !== "string") return;
    // Any frame proves the link alive: the answer to the last ping need not be its pong.
    this.#clearTimer("pong");
    this.frameHandlers.get(frame.type)?.(frame);
    this.events.emit("frame", frame);
  }

  #installHandlers() {
    this.handle("connection_established", (frame) => {
      this.openedAt = this.clock.now();
      this.refusedToken = null;
      this.#clearTimer("open");
      this.#setState({ status: "open", sessionId: frame.data.session_id, userId: frame.data.user_id });
      this.#schedulePing();
      this.#scheduleRefresh();
    });
    this.handle("notification", (frame) => {
      const seq = frame.data.seq;
      if (typeof seq === "number" && !this.seq.accept(seq)) {
        this.stats.duplicatesDropped += 1;
        return;
      }
      this.events.emit("notification", frame.data);
    });
    this.handle("notifications_changed", (frame) => this.events.emit("changed", frame.data));
    this.handle("message", (frame) => {
      if (this.wsAnswer && frame.data.id === this.wsAnswer.answer.messageId) this.wsAnswer = null;
      this.events.emit("message", frame.data);
    });
    this.handle("chat_event", (frame) => {
      if (this.wsAnswer && frame.event && typeof frame.event.type === "string") this.wsAnswer.events.push(frame.event);
    });
    this.handle("token_expiring", () => void this.#refresh());
    this.handle("token_refreshed", () => {
      this.refreshing = false;
      this.#scheduleRefresh();
    });
    this.handle("error", (frame) => {
      const error = frame.error ?? { code: "ERROR", message: "" };
      const code = String(error.code);
      if (code === "TOKEN_INVALID") {
        this.refreshing = false;
        this.events.emit("error", { kind: "auth", message: `token refresh refused: ${error.message}` });
        return;
      }
      const pending = this.wsAnswer;
      if (pending && !pending.answer.messageId && WS_CHAT_REFUSALS.has(code)) {
        this.wsAnswer = null;
        pending.events.fail(new ApiError(0, code, String(error.message ?? ""), error.details));
        return;
      }
      this.events.emit("error", { kind: "server", code, message: String(error.message ?? ""), details: error.details });
    });
  }

  #schedulePing() {
    this.#timer("ping", this.pingInterval, () => {
      if (!("pong" in this.timers)) this.#timer("pong", this.pongTimeout, () => this.#deadLink());
      this.send({ type: "ping" });
      this.#schedulePing();
    });
  }

  #deadLink() {
    if (this.ws) this.#abandon(this.ws, 4000, "no frame from the server after a ping");
  }

  #scheduleRefresh() {
    const exp = this.token ? jwtClaims(this.token)?.exp : undefined;
    const at = refreshTime(exp, this.clock.now(), this.refreshMargin);
    if (at === null) return;
    this.#timer("refresh", at - this.clock.now(), () => void this.#refresh());
  }

  /** Send the provider's new token before the current one expires (once per expiry). */
  async #refresh() {
    if (this.refreshing || this.state.status !== "open") return;
    this.refreshing = true;
    this.#clearTimer("refresh");
    let token;
    try {
      token = await this.getToken();
    } catch (error) {
      this.refreshing = false;
      this.events.emit("error", { kind: "token", message: `token provider failed: ${error}` });
      return;
    }
    if (token === this.token) {
      this.refreshing = false;
      this.events.emit("error", { kind: "auth", message: "the token expires soon and the provider has no new one" });
      return;
    }
    if (this.send({ type: "refresh_token", token })) {
      this.token = token;
    } else {
      this.refreshing = false;
    }
  }

  // --- chat over the WebSocket -------------------------------------------------------------

  /**
   * @param {string} message
   * @param {{sessionId?: string | null, signal?: AbortSignal}} options
   */
  #askOverWebSocket(message, options) {
    if (options.sessionId && options.sessionId !== this.sessionId) {
      throw new Error(`over the WebSocket the session is the connection's (${this.sessionId}), not ${options.sessionId}`);
    }
    if (this.wsAnswer) throw new ApiError(0, "CHAT_BUSY", "an answer is already streaming on this connection");
    /** @type {Channel<ChatEvent>} */
    const events = new Channel(100000);
    const client = this;
    const answer = new ChatAnswer(
      async function* (self) {
        try {
          for (;;) {
            const { value, done } = await events.next();
            if (done) return;
            yield value;
          }
        } catch (error) {
          if (!(error instanceof ApiError) || error.code !== "DISCONNECTED") throw error;
        } finally {
          if (client.wsAnswer?.answer === self) client.wsAnswer = null;
        }
        // The socket dropped mid-answer: continue it over SSE from the last event delivered.
        if (!self.final) {
          const rest = resumeOverSse(String(self.messageId), {
            rest: client.rest,
            clock: client.clock,
            lastEventId: self.lastEventId,
            ...(options.signal ? { signal: options.signal } : {}),
          });
          yield* rest.source(self);
        }
      },
      async (self) => {
        if (!this.send({ type: "cancel", message_id: self.messageId })) {
          await this.rest.request("POST", `/api/v1/chat/stream/${encodeURIComponent(String(self.messageId))}/cancel`);
        }
      },
    );
    this.wsAnswer = { answer, events };
    if (!this.send({ type: "message", message, stream: true })) {
      this.wsAnswer = null;
      events.fail(new ApiError(0, "NOT_CONNECTED", "the WebSocket is not open"));
    }
    return answer;
  }

  /** The socket closed while an answer streamed over it: resume over SSE, or fail before start. */
  #detachWsAnswer() {
    const pending = this.wsAnswer;
    this.wsAnswer = null;
    if (!pending) return;
    pending.events.fail(
      pending.answer.messageId
        ? new ApiError(0, "DISCONNECTED", "the WebSocket closed mid-answer")
        : new ApiError(0, "NETWORK_ERROR", "the WebSocket closed before the answer started"),
    );
  }

  // --- timers --------------------------------------------------------------------------------

  /**
   * @param {string} name
   * @param {number} ms
   * @param {() => void} fn
   */
  #timer(name, ms, fn) {
    this.#clearTimer(name);
    this.timers[name] = this.clock.setTimeout(() => {
      delete this.timers[name];
      fn();
    }, Math.max(0, ms));
  }

  /** @param {string} name */
  #clearTimer(name) {
    if (name in this.timers) {
      this.clock.clearTimeout(this.timers[name]);
      delete this.timers[name];
    }
  }

  #clearTimers() {
    for (const name of Object.keys(this.timers)) this.#clearTimer(name);
  }
}

/** Error codes with which the server refuses a question sent over the WebSocket. */
const WS_CHAT_REFUSALS = new Set(["CHAT_BUSY", "CHAT_UNAVAILABLE", "INVALID_MESSAGE", "TOO_MANY_IN_FLIGHT", "RATE_LIMITED", "SESSION_NOT_FOUND"]);
