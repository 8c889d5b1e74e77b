// Review: the answers the model in production was least sure of (GET /v1/feedback/review), each
// to confirm or correct with one click; an answer given feedback leaves the list when it reloads.

import { api } from "./api.js";
import { CONFIG } from "./config.js";
import { $, clear, dateTime, h, messageOf, percent, plural } from "./dom.js";
import { canGiveFeedback, feedbackControl } from "./feedback.js";
import { labelChip } from "./jobview.js";

export class ReviewScreen {
  constructor(app) {
    this.app = app;
    this.status = $("#review-status");
    this.body = $("#review-body");
    this.listing = null;
    this.saved = 0;
    this.loading = false;
    $("#review-refresh").addEventListener("click", () => this.load());
  }

  enter() {
    this.load();
  }

  sessionChanged() {
    if (this.listing) this.render(this.listing);
  }

  setStatus(text, kind = "") {
    this.status.className = `status-line ${kind}`;
    this.status.textContent = text;
  }

  async load() {
    if (this.loading) return;
    this.loading = true;
    this.setStatus("Loading the uncertain answers…", "busy");
    try {
      this.listing = await api.review({ limit: CONFIG.reviewLimit });
      this.saved = 0;
      this.render(this.listing);
    } catch (error) {
      clear(this.body);
      this.setStatus(`Could not load the answers to review: ${messageOf(error)}`, "error");
    } finally {
      this.loading = false;
    }
  }

  render(listing) {
    const items = listing.uncertain ?? [];
    if (!listing.version) {
      this.setStatus("");
      clear(this.body, h("div", { class: "callout info" },
        h("strong", {}, "No model is serving yet. "), "Answers to review appear once one answers texts."));
      return;
    }
    const threshold = percent(listing.threshold, 0);
    if (!items.length) {
      this.setStatus("");
      clear(this.body, h("div", { class: "callout neutral", id: "review-empty" },
        `Nothing to review: every recent answer of ${listing.version} below ${threshold} confidence has feedback, or there is none.`));
      return;
    }
    this.setStatus(`${plural(items.length, "answer")} of ${listing.version} below ${threshold} confidence, newest first.`);
    const editable = canGiveFeedback(this.app.session);
    clear(this.body, h("div", { class: "table-wrap card flush" }, h("table", { class: "data review", id: "review-table" },
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Text"),
        h("th", { scope: "col" }, "Answer"),
        h("th", { scope: "col", class: "num" }, "Confidence"),
        h("th", { scope: "col" }, "Answered"),
        editable ? h("th", { scope: "col" }, "Right topic?") : null)),
      h("tbody", {}, items.map((item) => {
        const row = h("tr", {});
        const control = editable && feedbackControl(
          { text: item.text, predicted: item.label, model_version: listing.version },
          { onSaved: () => this.done(row) },
        );
        row.append(
          h("td", { class: "text-cell review-text", title: item.text }, item.text),
          h("td", {}, labelChip(item.label)),
          h("td", { class: "num" }, percent(item.confidence)),
          h("td", { class: "muted small" }, dateTime(item.at)),
        );
        if (control) row.append(h("td", {}, control));
        return row;
      })),
    )));
  }

  done(row) {
    if (row.classList.contains("reviewed")) return;
    row.classList.add("reviewed");
    this.saved += 1;
    this.setStatus(`${plural(this.saved, "answer")} reviewed; Refresh to list the rest.`);
  }

  // For the browser tests.
  snapshot() {
    return {
      version: this.listing?.version ?? null,
      texts: (this.listing?.uncertain ?? []).map((item) => item.text),
      reviewed: this.saved,
      loading: this.loading,
    };
  }
}
