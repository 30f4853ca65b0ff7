// A Server-Sent Events parser (the WHATWG event-stream format), incremental and free of I/O:
// feed it text as it arrives, in chunks cut anywhere, and it returns the complete events.

/**
 * @typedef {object} SseMessage
 * @property {string} data  the `data:` lines joined with "\n"
 * @property {string} event  the `event:` field, "message" by default
 * @property {string | null} id  the last event id seen on the stream so far (`id:` lines)
 */

export class SseParser {
  constructor() {
    this.buffer = "";
    /** @type {string[]} */
    this.data = [];
    this.event = "";
    /** @type {string | null} */
    this.lastEventId = null;
    /** @type {number | null} the server's `retry:` advice, ms */
    this.retry = null;
    /** Comment lines seen (`: keep-alive`), for observers. */
    this.comments = 0;
  }

  /**
   * Parse a chunk of text; returns the events it completed, in order.
   * @param {string} chunk
   * @returns {SseMessage[]}
   */
  feed(chunk) {
    this.buffer += chunk;
    /** @type {SseMessage[]} */
    const out = [];
    let start = 0;
    for (;;) {
      const cr = this.buffer.indexOf("\r", start);
      const lf = this.buffer.indexOf("\n", start);
      if (cr === -1 && lf === -1) break;
      let end;
      let next;
      if (cr !== -1 && (lf === -1 || cr < lf)) {
        // A CR at the very end may be the first half of a CRLF split across chunks.
        if (cr === this.buffer.length - 1) break;
        end = cr;
        next = this.buffer[cr + 1] === "\n" ? cr + 2 : cr + 1;
      } else {
        end = lf;
        next = lf + 1;
      }
      const message = this.#line(this.buffer.slice(start, end));
      if (message) out.push(message);
      start = next;
    }
    this.buffer = this.buffer.slice(start);
    return out;
  }

  /**
   * The stream ended: a trailing CR completes its line; an event without its blank line is
   * dropped, as the standard says.
   * @returns {SseMessage[]}
   */
  end() {
    /** @type {SseMessage[]} */
    const out = [];
    if (this.buffer.endsWith("\r")) {
      const message = this.#line(this.buffer.slice(0, -1));
      if (message) out.push(message);
    }
    this.buffer = "";
    this.data = [];
    this.event = "";
    return out;
  }

  /**
   * @param {string} line
   * @returns {SseMessage | null}
   */
  #line(line) {
    if (line === "") {
      if (this.data.length === 0) {
        this.event = "";
        return null;
      }
      const message = {
        data: this.data.join("\n"),
        event: this.event || "message",
        id: this.lastEventId,
      };
      this.data = [];
      this.event = "";
      return message;
    }
    if (line.startsWith(":")) {
      this.comments += 1;
      return null;
    }
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
    return null;
  }
}
