// The inbox: notifications newest first with cursor paging, the unread badge, live arrivals
// (announced to screen readers), mark read, mark all read, delete.

import { byId, el, time } from "./dom.js";

/** @typedef {import("../src/realtime.js").RealtimeClient} RealtimeClient */
/** @typedef {import("../src/wire.js").NotificationItem} NotificationItem */
/** @typedef {import("../src/wire.js").NotificationData} NotificationData */

/**
 * @typedef {{id: string, seq: number, title: string, content: string, type: string,
 *   created_at: string, is_read: boolean}} Row
 */

/** @param {NotificationItem} item @returns {Row} */
const fromItem = (item) => ({
  id: item.id, seq: item.seq, title: item.title, content: item.content, type: item.type,
  created_at: item.created_at, is_read: item.is_read,
});

/** @param {NotificationData} data @returns {Row} */
const fromFrame = (data) => ({
  id: data.id, seq: data.seq ?? 0, title: data.title, content: data.content,
  type: data.notification_type, created_at: data.created_at, is_read: Boolean(data.is_read),
});

export class Inbox {
  /**
   * @param {RealtimeClient} client
   * @param {(message: string) => void} report  shows a failure to the user
   */
  constructor(client, report) {
    this.client = client;
    this.report = report;
    /** @type {Map<string, {row: Row, element: HTMLLIElement}>} */
    this.rows = new Map();
    /** @type {string | null} */
    this.cursor = null;
    this.unread = 0;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.recountTimer = undefined;
    this.list = byId("notifications", HTMLUListElement);
    this.badge = byId("badge", HTMLSpanElement);
    this.more = byId("more", HTMLButtonElement);
    this.empty = byId("inbox-empty", HTMLParagraphElement);
    this.announcer = byId("announce", HTMLDivElement);
    this.more.addEventListener("click", () => void this.loadMore());
    byId("read-all", HTMLButtonElement).addEventListener("click", () => void this.markAllRead());
    client.on("notification", (data) => this.arrived(fromFrame(data)));
    // Changes made anywhere (another tab or device, the REST API, the agent) arrive live.
    client.on("changed", (change) => this.applyChange(change));
    // A reconnect may have missed changes (they are not replayed): bring the list up to date.
    let wasOpen = false;
    client.on("state", (state) => {
      if (state.status === "open" && wasOpen) void this.refresh();
      if (state.status === "open") wasOpen = true;
    });
  }

  /**
   * The first page and the unread count, afresh. Rows newer than the page (they arrived live
   * while it was being read) stay. With `resumePoint`, before the socket connects, the page's
   * newest seq becomes where the socket resumes (those are shown already); never while it is
   * open, where it would drop notifications still on their way as duplicates.
   * @param {{resumePoint?: boolean}} [options]
   */
  async reload(options = {}) {
    try {
      const [page, unread] = await Promise.all([
        this.client.rest.listNotifications({ pageSize: 20 }),
        this.client.rest.unreadCount(),
      ]);
      const newest = page.items[0]?.seq ?? 0;
      const live = [...this.rows.values()].filter((entry) => entry.row.seq > newest);
      this.rows.clear();
      this.list.replaceChildren();
      for (const item of page.items) this.insert(fromItem(item));
      for (const entry of live) this.insert(entry.row);
      if (options.resumePoint) this.client.seq.advance(newest);
      this.cursor = page.has_more ? page.next_cursor : null;
      this.setUnread(unread);
      if (live.length > 0) this.scheduleRecount();
      this.refreshChrome();
    } catch (error) {
      this.report(`Could not load notifications: ${error}`);
    }
  }

  /**
   * After a reconnect: read the first page again and merge it in (new ones added, read state
   * updated, ones deleted meanwhile removed) without dropping older pages already shown or
   * notifications that arrived live while it was being read.
   */
  async refresh() {
    const known = this.client.lastSeq ?? 0;
    try {
      const [page, unread] = await Promise.all([
        this.client.rest.listNotifications({ pageSize: 20 }),
        this.client.rest.unreadCount(),
      ]);
      const listed = new Set(page.items.map((item) => item.id));
      // The page covers seqs from its oldest (everything, if it is the only page) up to what
      // had been delivered when it was asked for.
      const lowest = page.has_more ? (page.items[page.items.length - 1]?.seq ?? 0) : 0;
      for (const entry of [...this.rows.values()]) {
        const seq = entry.row.seq;
        if (seq >= lowest && seq <= known && !listed.has(entry.row.id)) {
          entry.element.remove();
          this.rows.delete(entry.row.id);
        }
      }
      for (const item of page.items) {
        const entry = this.rows.get(item.id);
        if (!entry) this.insert(fromItem(item));
        else if (item.is_read && !entry.row.is_read) this.showRead(entry);
      }
      this.setUnread(unread);
      this.scheduleRecount();
      this.refreshChrome();
    } catch (error) {
      this.report(`Could not refresh notifications: ${error}`);
    }
  }

  async loadMore() {
    if (!this.cursor) return;
    try {
      const page = await this.client.rest.listNotifications({ pageSize: 20, cursor: this.cursor });
      for (const item of page.items) this.insert(fromItem(item));
      this.cursor = page.has_more ? page.next_cursor : null;
      this.refreshChrome();
    } catch (error) {
      this.report(`Could not load older notifications: ${error}`);
    }
  }

  /** @param {import("../src/wire.js").NotificationsChangedData} change */
  applyChange(change) {
    const entries = change.change === "all_read" ? [...this.rows.values()] : change.ids.map((id) => this.rows.get(id));
    for (const entry of entries) {
      if (!entry) continue;
      if (change.change === "deleted") {
        entry.element.remove();
        this.rows.delete(entry.row.id);
      } else {
        this.showRead(entry);
      }
    }
    this.setUnread(change.unread_count);
    this.refreshChrome();
  }

  /** @param {{row: Row, element: HTMLLIElement}} entry */
  showRead(entry) {
    entry.row.is_read = true;
    entry.element.classList.remove("unread");
    /** @type {HTMLButtonElement} */ (entry.element.querySelector(".mark-read")).hidden = true;
  }

  /** @param {Row} row */
  arrived(row) {
    if (this.rows.has(row.id)) return;
    this.insert(row);
    if (!row.is_read) this.setUnread(this.unread + 1);
    this.announcer.textContent = `New notification: ${row.title}`;
    this.refreshChrome();
    this.scheduleRecount();
  }

  /** The badge counts optimistically; the server's count corrects any drift shortly after. */
  scheduleRecount() {
    clearTimeout(this.recountTimer);
    this.recountTimer = setTimeout(async () => {
      try {
        this.setUnread(await this.client.rest.unreadCount());
      } catch {
        // the next change recounts
      }
    }, 300);
  }

  /** @param {Row} row */
  insert(row) {
    const element = this.render(row);
    this.rows.set(row.id, { row, element });
    // Newest (highest seq) first, wherever a late or replayed one belongs.
    const after = [...this.list.children].find(
      (child) => Number(/** @type {HTMLElement} */ (child).dataset.seq) < row.seq,
    );
    this.list.insertBefore(element, after ?? null);
  }

  /** @param {Row} row */
  render(row) {
    const read = el("button", { type: "button", class: "mark-read" }, "Mark read");
    const remove = el("button", { type: "button", class: "delete" }, "Delete");
    read.hidden = row.is_read;
    read.setAttribute("aria-label", `Mark "${row.title}" read`);
    remove.setAttribute("aria-label", `Delete "${row.title}"`);
    const element = el(
      "li",
      { class: row.is_read ? "notification" : "notification unread", "data-id": row.id, "data-seq": String(row.seq) },
      el("span", { class: "title" }, row.title),
      row.content ? el("span", { class: "content" }, row.content) : null,
      el("span", { class: "meta" }, `${row.type} · #${row.seq} · ${time(row.created_at)}`),
      el("span", { class: "actions" }, read, remove),
    );
    read.addEventListener("click", () => void this.markRead(row.id));
    remove.addEventListener("click", () => void this.remove(row.id));
    return element;
  }

  /** @param {string} id */
  async markRead(id) {
    const entry = this.rows.get(id);
    if (!entry || entry.row.is_read) return;
    try {
      await this.client.rest.markRead(id);
      this.showRead(entry);
      this.setUnread(Math.max(0, this.unread - 1));
      this.scheduleRecount();
    } catch (error) {
      this.report(`Could not mark read: ${error}`);
    }
  }

  async markAllRead() {
    try {
      await this.client.rest.markAllRead();
      for (const entry of this.rows.values()) this.showRead(entry);
      this.setUnread(0);
      this.scheduleRecount();
    } catch (error) {
      this.report(`Could not mark all read: ${error}`);
    }
  }

  /** @param {string} id */
  async remove(id) {
    const entry = this.rows.get(id);
    if (!entry) return;
    try {
      await this.client.rest.deleteNotification(id);
      entry.element.remove();
      this.rows.delete(id);
      if (!entry.row.is_read) this.setUnread(Math.max(0, this.unread - 1));
      this.refreshChrome();
      this.scheduleRecount();
    } catch (error) {
      this.report(`Could not delete: ${error}`);
    }
  }

  /** @param {number} count */
  setUnread(count) {
    this.unread = count;
    this.badge.textContent = String(count);
    this.badge.classList.toggle("zero", count === 0);
    this.badge.setAttribute("aria-label", `${count} unread`);
  }

  refreshChrome() {
    this.more.hidden = !this.cursor;
    this.empty.hidden = this.rows.size > 0;
  }
}
