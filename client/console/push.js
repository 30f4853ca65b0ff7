// The "notify me when I am away" switch: Web Push through the console's service worker (sw.js).
// On: `enablePush()` (permission, worker, subscription, registration with the API). Off:
// `disablePush()`. A click on a push notification focuses this page and highlights the
// notification in the inbox (the worker posts its id).

import { disablePush, enablePush, pushStatus, pushSupported } from "../src/index.js";
import { byId } from "./dom.js";

/** @typedef {import("../src/rest.js").RestClient} RestClient */

export const SERVICE_WORKER_URL = "/console/app/sw.js";
export const SCOPE = "/console";

export class PushSwitch {
  /**
   * @param {RestClient} rest
   * @param {(message: string) => void} report  shows a failure to the user
   */
  constructor(rest, report) {
    this.rest = rest;
    this.report = report;
    this.input = byId("push-switch", HTMLInputElement);
    this.status = byId("push-status", HTMLSpanElement);
    this.input.addEventListener("change", () => void this.toggle());
    if (pushSupported()) {
      navigator.serviceWorker.addEventListener("message", (event) => this.clicked(event.data));
    }
  }

  async start() {
    if (!pushSupported()) {
      this.input.disabled = true;
      this.show("not supported by this browser");
      return;
    }
    try {
      const { enabled } = await pushStatus({ rest: this.rest, scope: SCOPE });
      this.input.checked = enabled;
      this.show(enabled ? "on" : "off");
    } catch (error) {
      this.show("unknown");
      this.report(`Push status: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  async toggle() {
    const wanted = this.input.checked;
    this.input.disabled = true;
    try {
      if (wanted) {
        await enablePush({ rest: this.rest, serviceWorkerUrl: SERVICE_WORKER_URL, scope: SCOPE });
      } else {
        await disablePush({ rest: this.rest, scope: SCOPE });
      }
      this.show(wanted ? "on" : "off");
    } catch (error) {
      this.input.checked = !wanted;
      this.show(wanted ? "off" : "on");
      this.report(`Push: ${error instanceof Error ? error.message : String(error)}`);
    } finally {
      this.input.disabled = false;
    }
  }

  /** @param {string} text */
  show(text) {
    this.status.textContent = text;
    this.input.dataset.state = text;
  }

  /** @param {unknown} message */
  clicked(message) {
    const data = /** @type {{type?: unknown, id?: unknown} | null} */ (message);
    if (!data || data.type !== "push-notification-clicked" || typeof data.id !== "string") return;
    document.body.dataset.pushOpened = data.id;
    const item = document.querySelector(`[data-id="${CSS.escape(data.id)}"]`);
    if (item instanceof HTMLElement) {
      item.scrollIntoView({ block: "center" });
      item.classList.add("highlight");
    }
  }
}
