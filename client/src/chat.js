// Chat answers as async iterators of events: over SSE (`fetch` + stream parsing, since
// EventSource cannot POST nor send headers), resumed with `Last-Event-ID` when the network
// drops, cancellable; or fed by the WebSocket's `chat_event` frames (see realtime.js).

import { ApiError, apiError } from "./rest.js";
import { Backoff } from "./backoff.js";
import { SseParser } from "./sse.js";
import { systemClock } from "./clock.js";

/** @typedef {import("./wire.js").ChatEvent} ChatEvent */
/** @typedef {import("./rest.js").RestClient} RestClient */
/** @typedef {import("./clock.js").Clock} Clock */

/**
 * Whether stream entry id `a` comes after `b` (`<ms>-<seq>`, each up to 64 bits).
 * @param {string} a
 * @param {string} b
 */
export function eventIdAfter(a, b) {
  const [am, as] = a.split("-").map((part) => BigInt(part));
  const [bm, bs] = b.split("-").map((part) => BigInt(part));
  return am > bm || (am === bm && as > bs);
}

/**
 * One answer of the agent. Iterate it (once) for its events in order, each exactly once, until
 * `end` or `error`; `text` holds the answer so far, `messageId` names it once `start` arrived.
 */
export class ChatAnswer {
  /**
   * @param {(answer: ChatAnswer) => AsyncGenerator<ChatEvent>} source
   * @param {(answer: ChatAnswer) => Promise<void>} cancel
   * @param {{messageId?: string | null, lastEventId?: string | null, text?: string}} [resumeFrom]
   */
  constructor(source, cancel, resumeFrom = {}) {
    this.source = source;
    this.cancelRequest = cancel;
    /** @type {string | null} */
    this.messageId = resumeFrom.messageId ?? null;
    /** @type {string | null} */
    this.sessionId = null;
    /** @type {string | null} the last event id delivered: where a resume starts */
    this.lastEventId = resumeFrom.lastEventId ?? null;
    /** The answer's text so far (the `token` contents joined). */
    this.text = resumeFrom.text ?? "";
    /** @type {"streaming" | "complete" | "cancelled" | "error"} */
    this.status = "streaming";
    /** @type {ChatEvent | null} the `end` or `error` event */
    this.final = null;
    this.iterated = false;
    /** @type {Array<() => void>} */
    this.startWaiters = [];
  }

  /**
   * Record an event; false when it is a repeat of one already delivered.
   * @param {ChatEvent} event
   */
  observe(event) {
    if (event.event_id && this.lastEventId && !eventIdAfter(event.event_id, this.lastEventId)) {
      return false;
    }
    if (event.event_id) this.lastEventId = event.event_id;
    if (event.type === "start") {
      this.messageId = event.message_id;
      this.sessionId = event.session_id;
      for (const wake of this.startWaiters.splice(0)) wake();
    } else if (event.type === "token") {
      this.text += event.content;
    } else if (event.type === "end") {
      this.status = event.status === "cancelled" ? "cancelled" : "complete";
      this.final = event;
    } else if (event.type === "error") {
      this.status = "error";
      this.final = event;
    }
    return true;
  }

  /** @returns {AsyncGenerator<ChatEvent>} */
  async *[Symbol.asyncIterator]() {
    if (this.iterated) throw new Error("a ChatAnswer can be iterated once");
    this.iterated = true;
    for await (const event of this.source(this)) {
      if (!this.observe(event)) continue;
      yield event;
      if (this.final) return;
    }
  }

  /**
   * Read the whole answer; resolves with it once `end` or `error` arrived.
   * @returns {Promise<ChatAnswer>}
   */
  async done() {
    for await (const _event of this) {
      // observe() keeps the state
    }
    return this;
  }

  /**
   * Ask the server to stop the answer; the stream then ends with `end` (`status: "cancelled"`).
   * Waits for `start` if the answer has no id yet. Idempotent.
   * @returns {Promise<void>}
   */
  async cancel() {
    if (this.final) return;
    if (!this.messageId) await new Promise((resolve) => this.startWaiters.push(() => resolve(null)));
    await this.cancelRequest(this);
  }
}

/**
 * The chat events of an SSE response body, in order.
 * @param {Response} response
 * @returns {AsyncGenerator<ChatEvent>}
 */
export async function* sseEvents(response) {
  if (!response.body) return;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const parser = new SseParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      const messages = done ? parser.end() : parser.feed(decoder.decode(value, { stream: true }));
      for (const message of messages) {
        let event;
        try {
          event = JSON.parse(message.data);
        } catch {
          continue; // not ours: a proxy's injection; the stream itself stays usable
        }
        if (event && typeof event.type === "string") {
          if (!event.event_id && message.id) event.event_id = message.id;
          yield event;
        }
      }
      if (done) return;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/**
 * @typedef {object} SseChatOptions
 * @property {RestClient} rest
 * @property {Clock} [clock]
 * @property {Backoff} [backoff]  resume delays (default 0.5–20 s)
 * @property {number} [maxResumeAttempts]  consecutive failed resumes before giving up — 8
 * @property {AbortSignal} [signal]
 */

/**
 * Sleep on `clock`, woken early (rejecting) by `signal`.
 * @param {Clock} clock
 * @param {number} ms
 * @param {AbortSignal} [signal]
 */
function sleep(clock, ms, signal) {
  return new Promise((resolve, reject) => {
    const handle = clock.setTimeout(() => resolve(null), ms);
    signal?.addEventListener(
      "abort",
      () => {
        clock.clearTimeout(handle);
        reject(signal.reason);
      },
      { once: true },
    );
  });
}

/**
 * A network failure or a server/proxy failure worth a resume (5xx, 0); a 4xx is final.
 * @param {unknown} error
 */
function resumable(error) {
  return !(error instanceof ApiError) || error.status === 0 || error.status >= 500;
}

/**
 * The events of an answer over SSE: the POST that asks (when `question` is given), then, after
 * any drop, `GET /api/v1/chat/stream/{message_id}` with `Last-Event-ID` until `end` or `error`.
 * @param {ChatAnswer} answer
 * @param {{message: string, session_id?: string} | null} question
 * @param {SseChatOptions} options
 * @returns {AsyncGenerator<ChatEvent>}
 */
async function* sseSource(answer, question, options) {
  const { rest, signal } = options;
  const clock = options.clock ?? systemClock;
  const backoff = options.backoff ?? new Backoff();
  const maxAttempts = options.maxResumeAttempts ?? 8;
  let failures = 0;
  let first = question !== null;
  for (;;) {
    const controller = new AbortController();
    const abort = () => controller.abort(signal?.reason);
    signal?.addEventListener("abort", abort, { once: true });
    try {
      /** @type {Record<string, string>} */
      const headers = { authorization: `Bearer ${await rest.getToken()}` };
      let response;
      if (first) {
        headers["content-type"] = "application/json";
        response = await rest.fetch(`${rest.baseUrl}/api/v1/chat/stream`, {
          method: "POST",
          headers,
          body: JSON.stringify(question),
          signal: controller.signal,
        });
      } else {
        if (!answer.messageId) throw new ApiError(0, "STREAM_LOST", "the answer was lost before it started");
        if (answer.lastEventId) headers["last-event-id"] = answer.lastEventId;
        response = await rest.fetch(
          `${rest.baseUrl}/api/v1/chat/stream/${encodeURIComponent(answer.messageId)}`,
          { headers, signal: controller.signal },
        );
      }
      if (response.status === 204) return; // everything was delivered already
      if (!response.ok) throw await apiError(response);
      for await (const event of sseEvents(response)) {
        failures = 0;
        yield event;
        if (event.type === "end" || event.type === "error") return;
      }
      // The body ended without `end`: the connection was cut (a proxy, a dying gateway).
    } catch (error) {
      if (signal?.aborted) throw error;
      // Before `start` nothing identifies the answer, so it cannot be resumed.
      if (!resumable(error) || (first && !answer.messageId)) {
        throw error instanceof ApiError
          ? error
          : new ApiError(0, "NETWORK_ERROR", error instanceof Error ? error.message : String(error));
      }
    } finally {
      signal?.removeEventListener("abort", abort);
      controller.abort();
    }
    first = false;
    failures += 1;
    if (failures > maxAttempts) {
      throw new ApiError(0, "STREAM_LOST", `the answer could not be resumed after ${maxAttempts} attempts`);
    }
    await sleep(clock, backoff.next(), signal);
  }
}

/**
 * @param {RestClient} rest
 * @param {ChatAnswer} answer
 */
export async function cancelOverHttp(rest, answer) {
  await rest.request("POST", `/api/v1/chat/stream/${encodeURIComponent(String(answer.messageId))}/cancel`);
}

/**
 * Ask a question over SSE. `sessionId` continues a session; without it the answer starts one.
 * @param {string} message
 * @param {SseChatOptions & {sessionId?: string | null}} options
 * @returns {ChatAnswer}
 */
export function askOverSse(message, options) {
  /** @type {{message: string, session_id?: string}} */
  const question = { message };
  if (options.sessionId) question.session_id = options.sessionId;
  return new ChatAnswer(
    (answer) => sseSource(answer, question, options),
    (answer) => cancelOverHttp(options.rest, answer),
  );
}

/**
 * Continue an answer (after a page reload, for instance) from the event after `lastEventId`
 * (from its beginning without one).
 * @param {string} messageId
 * @param {SseChatOptions & {lastEventId?: string | null, text?: string}} options
 * @returns {ChatAnswer}
 */
export function resumeOverSse(messageId, options) {
  return new ChatAnswer(
    (answer) => sseSource(answer, null, options),
    (answer) => cancelOverHttp(options.rest, answer),
    { messageId, lastEventId: options.lastEventId ?? null, text: options.text ?? "" },
  );
}
