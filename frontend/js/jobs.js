// Jobs: the recent jobs of every kind; any can be opened to replay its events.

import { api } from "./api.js";
import { CONFIG } from "./config.js";
import { $, clear, dateTime, duration, h, integer, messageOf, percent } from "./dom.js";
import { badge, JobView } from "./jobview.js";

const ACTIVE = new Set(["queued", "running"]);

function summary(job) {
  const params = job.params ?? {};
  if (job.error) return h("span", { class: "error-text" }, job.error.message ?? job.error.code ?? "failed");
  const parts = [];
  if (job.type === "predict") parts.push(`${integer(job.texts ?? params.texts?.length ?? 0)} texts`);
  const dataset = params.source?.key ?? params.dataset;
  if (dataset) parts.push(h("code", { title: dataset }, dataset.split("/").slice(-2).join("/")));
  if (params.with_feedback) parts.push(dataset ? "plus feedback" : "the dataset accepted last plus feedback");
  const result = job.result ?? {};
  if (result.version) parts.push(h("code", {}, result.version));
  if (job.type === "batch_predict" && typeof result.rows === "number") parts.push(`${integer(result.rows)} rows`);
  const accuracy = result.metrics?.accuracy ?? result.accuracy;
  if (typeof accuracy === "number") parts.push(`accuracy ${percent(accuracy)}`);
  if (result.promotion) parts.push(result.promotion.promoted ? "promoted" : "not promoted");
  if (job.progress?.stage && ACTIVE.has(job.status)) parts.push(`${job.progress.stage} ${percent(job.progress.fraction ?? 0, 0)}`);
  return parts.flatMap((part, i) => (i ? [" · ", part] : [part]));
}

function took(job) {
  if (!job.finished_at) return ACTIVE.has(job.status) ? "…" : "–";
  return duration((new Date(job.finished_at) - new Date(job.started_at ?? job.created_at)) / 1000);
}

export class JobsScreen {
  constructor(app) {
    this.app = app;
    this.listView = $("#jobs-list-view");
    this.detail = $("#jobs-detail");
    this.table = $("#jobs-table");
    this.status = $("#jobs-status-line");
    this.type = $("#jobs-type");
    this.statusFilter = $("#jobs-status");
    this.view = new JobView($("#jobs-job"));
    this.timer = null;
    $("#jobs-filters").addEventListener("submit", (event) => {
      event.preventDefault();
      this.refresh();
    });
    this.type.addEventListener("change", () => this.refresh());
    this.statusFilter.addEventListener("change", () => this.refresh());
  }

  enter(jobId) {
    this.listView.hidden = Boolean(jobId);
    this.detail.hidden = !jobId;
    if (jobId) {
      this.stopTimer();
      if (this.view.jobId !== jobId) this.view.open(jobId);
    } else {
      this.closeJob();
      this.refresh();
    }
  }

  leave() {
    this.stopTimer();
    this.closeJob();
  }

  closeJob() {
    this.view.close();
    this.view = new JobView(clear($("#jobs-job")));
  }

  stopTimer() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  async refresh() {
    this.stopTimer();
    let jobs;
    try {
      jobs = await api.jobs({ type: this.type.value, status: this.statusFilter.value, limit: 100 });
    } catch (error) {
      this.status.className = "status-line error";
      this.status.textContent = `The jobs cannot be listed: ${messageOf(error)}`;
      this.timer = setTimeout(() => this.refresh(), CONFIG.jobsRefreshMs);
      return;
    }
    this.status.className = "status-line";
    this.status.textContent = jobs.length ? "" : "No jobs match.";
    this.render(jobs);
    if (jobs.some((job) => ACTIVE.has(job.status)) && !this.listView.hidden) {
      this.timer = setTimeout(() => this.refresh(), CONFIG.jobsRefreshMs);
    }
  }

  render(jobs) {
    if (!jobs.length) {
      clear(this.table, h("p", { class: "placeholder pad" }, "No jobs yet. Classify a text or upload an archive to start one."));
      return;
    }
    clear(this.table, h("table", { class: "data jobs stack" },
      h("thead", {}, h("tr", {}, ["Created", "Type", "Status", "Details", "Took", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, jobs.map((job) => h("tr", { "data-job": job.id },
        h("td", { class: "nowrap", "data-label": "Created" }, dateTime(job.created_at)),
        h("td", { "data-label": "Type" }, job.type),
        h("td", { "data-label": "Status" }, badge(job.status)),
        h("td", { class: "details", "data-label": "Details" }, h("span", {}, summary(job))),
        h("td", { class: "nowrap", "data-label": "Took" }, took(job)),
        h("td", { class: "nowrap actions-cell" },
          h("a", { class: "btn small", href: `#/jobs/${encodeURIComponent(job.id)}`, "aria-label": `Open ${job.type} job ${job.id}` }, "Open"),
          ACTIVE.has(job.status) && h("button", { type: "button", class: "btn small ghost danger-text", onclick: () => this.cancel(job) }, "Cancel"),
        ),
      ))),
    ));
  }

  async cancel(job) {
    try {
      await api.cancel(job.id);
      this.status.className = "status-line";
      this.status.textContent = `Cancelled ${job.type} job ${job.id}.`;
    } catch (error) {
      this.status.className = "status-line error";
      this.status.textContent = `Could not cancel: ${messageOf(error)}`;
    }
    this.refresh();
  }
}
