// The console's topic panel: subscribe to a topic, watch its publications live, see who is here.
// Everything from the wire is shown as text (dom.js).

import { asText, byId, el } from "./dom.js";

/** @typedef {import("../src/topics.js").Subscription} Subscription */

const MAX_SHOWN = 200; // publications kept on screen per panel

export class TopicPanel {
  /**
   * @param {import("../src/realtime.js").RealtimeClient} client
   * @param {(message: string) => void} report
   */
  constructor(client, report) {
    this.client = client;
    this.report = report;
    /** @type {Subscription | null} */
    this.sub = null;
    this.form = byId("topic-form", HTMLFormElement);
    this.input = byId("topic-name", HTMLInputElement);
    this.tokenInput = byId("topic-token", HTMLInputElement);
    this.button = byId("topic-subscribe", HTMLButtonElement);
    this.status = byId("topic-status", HTMLElement);
    this.list = byId("publications", HTMLOListElement);
    this.who = byId("who-is-here", HTMLUListElement);
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (this.sub) this.stop();
      else this.start(this.input.value.trim(), this.tokenInput.value.trim());
    });
  }

  /**
   * @param {string} topic
   * @param {string} token
   */
  start(topic, token) {
    if (!topic) return;
    this.list.replaceChildren();
    this.who.replaceChildren();
    const sub = this.client.subscribe(topic, token ? { token } : {});
    this.sub = sub;
    this.button.textContent = "Unsubscribe";
    this.input.disabled = this.tokenInput.disabled = true;
    sub.on("state", (state) => {
      this.status.dataset.status = state.status;
      this.status.textContent = state.status + (state.code ? ` (${state.code})` : "");
      if (state.status === "unsubscribed" && this.sub === sub && state.code) this.#reset();
    });
    sub.on("error", (error) => this.report(`${topic}: ${error.code} ${error.message}`));
    sub.on("subscribed", (info) => {
      if (info.resubscribed && !info.recovered) this.#note("some publications were missed: history lost");
      void this.#refreshPresence();
    });
    sub.on("publication", (p) => {
      this.list.prepend(el("li", { "data-offset": String(p.offset) }, el("span", { class: "offset" }, `#${p.offset} `), asText(p.data)));
      while (this.list.childElementCount > MAX_SHOWN) this.list.lastElementChild?.remove();
    });
    sub.on("join", () => void this.#refreshPresence());
    sub.on("leave", () => void this.#refreshPresence());
  }

  stop() {
    this.sub?.unsubscribe();
    this.#reset();
  }

  #reset() {
    this.sub = null;
    this.button.textContent = "Subscribe";
    this.input.disabled = this.tokenInput.disabled = false;
  }

  /** @param {string} text */
  #note(text) {
    this.list.prepend(el("li", { class: "note" }, text));
  }

  async #refreshPresence() {
    const sub = this.sub;
    if (!sub) return;
    try {
      const answer = await sub.presence();
      if (sub !== this.sub) return;
      this.who.replaceChildren(...answer.clients.map((/** @type {any} */ c) => el("li", { "data-user": c.user_id }, c.user_id)));
    } catch {
      // no presence in this namespace, or the connection dropped: the list stays as it was
    }
  }
}
