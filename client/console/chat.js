// The chat panel: sessions and their history, a question's answer streamed token by token with
// its tool calls and results, cancel, and an answer that continues after a page reload.

import { asText, byId, el } from "./dom.js";

/** @typedef {import("../src/realtime.js").RealtimeClient} RealtimeClient */
/** @typedef {import("../src/chat.js").ChatAnswer} ChatAnswer */
/** @typedef {import("../src/wire.js").ChatEvent} ChatEvent */
/** @typedef {import("../src/wire.js").HistoryMessage} HistoryMessage */
/** @typedef {import("../src/types.js").ToolCallEvent} ToolCallEvent */
/** @typedef {import("../src/types.js").ToolResultEvent} ToolResultEvent */
/** @typedef {{kind: "call", event: ToolCallEvent} | {kind: "result", event: ToolResultEvent}} ToolStep */

/**
 * What survives a reload while an answer streams (sessionStorage: this tab only).
 * @typedef {{messageId: string, sessionId: string, question: string, lastEventId: string | null,
 *   text: string, tools: ToolStep[]}} Pending
 */
const PENDING_KEY = "console.pending-answer";

/** A message element: the role, its text (a text node that grows) and its tool calls. */
class MessageView {
  /** @param {string} role @param {string} text */
  constructor(role, text) {
    this.text = el("div", { class: "text" }, text);
    this.tools = el("div", { class: "tools" });
    this.element = el("li", { class: `message ${role}` }, el("div", { class: "role" }, role), this.text, this.tools);
  }

  /** @param {string} content */
  append(content) {
    this.text.append(document.createTextNode(content));
  }

  /** @param {ToolCallEvent} event */
  toolCall(event) {
    this.tools.append(
      el("div", { class: "tool call", "data-tool-id": String(event.id) },
        el("strong", {}, `tool call: ${event.name}`), el("pre", {}, asText(event.input))),
    );
  }

  /** @param {ToolResultEvent} event */
  toolResult(event) {
    this.tools.append(
      el("div", { class: event.is_error ? "tool result error" : "tool result", "data-tool-id": String(event.id) },
        el("strong", {}, `tool result: ${event.name}${event.is_error ? " (error)" : ""}`), el("pre", {}, asText(event.content))),
    );
  }
}

export class ChatPanel {
  /**
   * @param {RealtimeClient} client
   * @param {(message: string) => void} report
   */
  constructor(client, report) {
    this.client = client;
    this.report = report;
    this.sessions = byId("sessions", HTMLSelectElement);
    this.messages = byId("messages", HTMLOListElement);
    this.form = byId("ask-form", HTMLFormElement);
    this.question = byId("question", HTMLTextAreaElement);
    this.send = byId("send", HTMLButtonElement);
    this.cancel = byId("cancel", HTMLButtonElement);
    this.overWs = byId("over-ws", HTMLInputElement);
    /** @type {ChatAnswer | null} */
    this.answer = null;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.ask(this.question.value.trim());
    });
    this.question.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) this.form.requestSubmit();
    });
    this.cancel.addEventListener("click", () => void this.answer?.cancel().catch((e) => this.report(`Cancel failed: ${e}`)));
    this.sessions.addEventListener("change", () => void this.showHistory(this.sessions.value));
    byId("refresh-sessions", HTMLButtonElement).addEventListener("click", () => void this.loadSessions(this.sessions.value));
  }

  /** Sessions, then the answer a reload interrupted (if any) continues. */
  async start() {
    const pending = this.loadPending();
    await this.loadSessions(pending?.sessionId ?? "");
    if (pending) await this.continuePending(pending);
  }

  /** @param {string} selected */
  async loadSessions(selected) {
    try {
      const page = await this.client.rest.listSessions({ pageSize: 50 });
      const options = page.items.map((session) =>
        el("option", { value: session.id }, session.title || `${session.id.slice(0, 8)} · ${new Date(session.updated_at).toLocaleString()}`));
      this.sessions.replaceChildren(el("option", { value: "" }, "New session"), ...options);
      this.sessions.value = page.items.some((s) => s.id === selected) ? selected : "";
      if (this.sessions.value && !this.answer) await this.showHistory(this.sessions.value);
    } catch (error) {
      this.report(`Could not load sessions: ${error}`);
    }
  }

  /** @param {string} sessionId @returns {Promise<HistoryMessage[]>} */
  async showHistory(sessionId) {
    this.messages.replaceChildren();
    if (!sessionId) return [];
    try {
      const history = await this.client.rest.history(sessionId);
      for (const message of history.items) {
        const view = new MessageView(message.role, message.content);
        view.element.dataset.messageId = message.id;
        if (message.status) view.element.dataset.status = message.status;
        for (const call of /** @type {any[]} */ (message.tool_calls ?? [])) {
          view.toolCall({ type: "tool_call", id: call.id, name: call.name, input: call.input, event_id: "" });
          if ("result" in call) {
            view.toolResult({ type: "tool_result", id: call.id, name: call.name, content: call.result, is_error: call.is_error, event_id: "" });
          }
        }
        if (message.status && message.status !== "complete") view.tools.append(el("div", { class: "hint" }, `(${message.status})`));
        this.messages.append(view.element);
      }
      this.messages.scrollTop = this.messages.scrollHeight;
      return history.items;
    } catch (error) {
      this.report(`Could not load the history: ${error}`);
      return [];
    }
  }

  /** @param {string} question */
  async ask(question) {
    if (!question || this.answer) return;
    const overWs = this.overWs.checked;
    const sessionId = overWs ? this.client.sessionId : this.sessions.value || null;
    if (overWs && this.sessions.value !== this.client.sessionId) this.messages.replaceChildren();
    this.messages.append(new MessageView("user", question).element);
    this.question.value = "";
    let answer;
    try {
      answer = this.client.ask(question, { sessionId, transport: overWs ? "ws" : "sse" });
    } catch (error) {
      this.report(`Could not ask: ${error}`);
      return;
    }
    await this.stream(answer, new MessageView("assistant", ""), { question, tools: [] });
  }

  /**
   * @param {ChatAnswer} answer
   * @param {MessageView} view
   * @param {{question: string, tools: Pending["tools"]}} saved
   */
  async stream(answer, view, saved) {
    this.answer = answer;
    this.send.disabled = true;
    this.cancel.disabled = false;
    view.element.classList.add("streaming");
    this.messages.append(view.element);
    try {
      for await (const event of answer) {
        if (event.type === "token") view.append(event.content);
        else if (event.type === "tool_call") {
          view.toolCall(event);
          saved.tools.push({ kind: "call", event });
        } else if (event.type === "tool_result") {
          view.toolResult(event);
          saved.tools.push({ kind: "result", event });
        } else if (event.type === "error") {
          view.tools.append(el("div", { class: "tool error" }, `error ${event.error?.code}: ${event.error?.message}`));
        } else if (event.type === "end" && event.status === "cancelled") {
          view.tools.append(el("div", { class: "hint" }, "(cancelled)"));
        }
        if (answer.messageId && !answer.final) this.savePending(answer, saved);
        this.messages.scrollTop = this.messages.scrollHeight;
      }
      view.element.dataset.status = answer.status;
    } catch (error) {
      view.tools.append(el("div", { class: "tool error" }, `stream failed: ${error}`));
      view.element.dataset.status = "failed";
    } finally {
      view.element.classList.remove("streaming");
      sessionStorage.removeItem(PENDING_KEY);
      this.answer = null;
      this.send.disabled = false;
      this.cancel.disabled = true;
    }
    if (answer.sessionId && this.sessions.value !== answer.sessionId) await this.loadSessions(answer.sessionId);
  }

  /** @param {ChatAnswer} answer @param {{question: string, tools: Pending["tools"]}} saved */
  savePending(answer, saved) {
    /** @type {Pending} */
    const pending = {
      messageId: String(answer.messageId), sessionId: String(answer.sessionId ?? this.sessions.value),
      question: saved.question, lastEventId: answer.lastEventId, text: answer.text, tools: saved.tools,
    };
    sessionStorage.setItem(PENDING_KEY, JSON.stringify(pending));
  }

  /** @returns {Pending | null} */
  loadPending() {
    try {
      return JSON.parse(sessionStorage.getItem(PENDING_KEY) ?? "null");
    } catch {
      return null;
    }
  }

  /** Show what had arrived before the reload, then resume from the event after it. @param {Pending} pending */
  async continuePending(pending) {
    const history = this.sessions.value === pending.sessionId ? await this.showHistory(pending.sessionId) : [];
    if (history.some((message) => message.id === pending.messageId)) {
      sessionStorage.removeItem(PENDING_KEY); // it finished meanwhile: the history has it
      return;
    }
    const last = history[history.length - 1];
    if (!last || last.role !== "user" || last.content !== pending.question) {
      this.messages.append(new MessageView("user", pending.question).element);
    }
    const view = new MessageView("assistant", pending.text);
    for (const step of pending.tools) step.kind === "call" ? view.toolCall(step.event) : view.toolResult(step.event);
    const answer = this.client.resume(pending.messageId, { lastEventId: pending.lastEventId, text: pending.text });
    answer.sessionId = pending.sessionId;
    await this.stream(answer, view, { question: pending.question, tools: pending.tools });
  }
}
