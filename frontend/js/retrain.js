// Retrain: drop an archive.zip, upload it straight to the object store, then follow the pipeline
// job its arrival starts; or (admin keys) start a pipeline on the dataset accepted last plus
// people's feedback, and follow it in the same job view.

import { api, uploadToStore } from "./api.js";
import { CONFIG } from "./config.js";
import { $, bytes, clear, duration, h, integer, messageOf } from "./dom.js";
import { JobView } from "./jobview.js";

const ZIP_MAGIC = [0x50, 0x4b, 0x03, 0x04];
const EMPTY_ZIP_MAGIC = [0x50, 0x4b, 0x05, 0x06];
const FEEDBACK_LIMIT = 500; // the most texts GET /v1/feedback lists: a full list says "500+"

// Why the file cannot be a dataset archive, or null.
export async function archiveProblem(file, maxBytes = null) {
  if (!/\.zip$/i.test(file.name)) return `${file.name} is not a .zip archive: upload an archive.zip holding train.csv and test.csv.`;
  if (file.size === 0) return `${file.name} is empty.`;
  if (maxBytes && file.size > maxBytes) return `${file.name} is ${bytes(file.size)}; the limit is ${bytes(maxBytes)}.`;
  const head = new Uint8Array(await file.slice(0, 4).arrayBuffer());
  if (EMPTY_ZIP_MAGIC.every((b, i) => head[i] === b)) return `${file.name} is an empty zip archive: it holds no train.csv or test.csv.`;
  if (!ZIP_MAGIC.every((b, i) => head[i] === b)) return `${file.name} is not a zip archive (its first bytes are not a zip header).`;
  return null;
}

// How many texts have feedback, fit to show: "500+" when the list came back full.
export function feedbackCount(count, full) {
  if (count === 0) return "No text has feedback yet: correct or confirm answers in the Classify or Review view first.";
  const figure = full ? `${integer(FEEDBACK_LIMIT)}+` : integer(count);
  return `${figure} ${count === 1 && !full ? "text has" : "texts have"} feedback.`;
}

// Why POST /v1/jobs refused a with_feedback pipeline, fit to show.
export function pipelineRefusal(error) {
  const message = messageOf(error).replace(/\.$/, "");
  const wait = error.retryAfter ?? error.details?.retry_after_s;
  const again = wait ? ` Try again in ${duration(wait)}.` : " Try again later.";
  if (error.status === 403) return `This key may not start pipelines (they need an admin key): ${message}.`;
  if (error.status === 503) return `The server is busy and takes no training now: ${message}.${again}`;
  if (error.status === 429) return `Too many requests from this key: ${message}.${again}`;
  if (error.status === 422) return `The server did not accept a pipeline with feedback: ${message}.`;
  return `The pipeline was refused: ${message}.`;
}

export function startedBy(job, key) {
  const params = job.params ?? {};
  return params.source?.key === key || (typeof params.dataset === "string" && params.dataset.endsWith(key));
}

export class RetrainScreen {
  constructor(app) {
    this.app = app;
    this.dropzone = $("#dropzone");
    this.input = $("#upload-file");
    this.button = $("#upload-button");
    this.progress = $("#upload-progress");
    this.bar = $("#upload-bar");
    this.name = $("#upload-name");
    this.figures = $("#upload-figures");
    this.status = $("#upload-status");
    this.againRow = $("#upload-again-row");
    this.view = new JobView($("#retrain-job"));
    this.upload = null;
    this.busy = false;
    this.search = null;
    this.maxBytes = null;
    this.feedback = { count: null, full: false, error: null, loading: false, starting: false };
    this.feedbackButton = $("#feedback-retrain-button");
    this.feedbackCount = $("#feedback-count");
    this.feedbackAdmin = $("#feedback-retrain-admin");
    this.feedbackStatus = $("#feedback-retrain-status");

    this.feedbackButton.addEventListener("click", () => this.retrainWithFeedback());
    this.button.addEventListener("click", () => this.input.click());
    this.input.addEventListener("change", () => {
      const file = this.input.files?.[0];
      this.input.value = "";
      if (file) this.start(file);
    });
    $("#upload-again").addEventListener("click", () => this.reset(true));
    for (const name of ["dragenter", "dragover"]) {
      this.dropzone.addEventListener(name, (event) => {
        event.preventDefault();
        if (!this.busy) this.dropzone.classList.add("over");
      });
    }
    this.dropzone.addEventListener("dragleave", (event) => {
      if (!this.dropzone.contains(event.relatedTarget)) this.dropzone.classList.remove("over");
    });
    this.dropzone.addEventListener("drop", (event) => {
      event.preventDefault();
      this.dropzone.classList.remove("over");
      const files = [...(event.dataTransfer?.files ?? [])];
      if (files.length > 1) this.setStatus("Drop one archive.zip at a time.", "error");
      else if (files.length === 1) this.start(files[0]);
    });
    // A file dropped beside the zone would otherwise make the browser leave the page.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());
  }

  enter() {
    this.view.redraw();
    this.countFeedback();
  }

  // The feedback control comes and goes with the session's scopes.
  sessionChanged() {
    if (this.feedback.count === null && !this.feedback.loading) this.countFeedback();
    else this.renderFeedback();
  }

  setStatus(content, kind = "") {
    this.status.className = `status-line ${kind}`;
    clear(this.status, content);
  }

  setFeedbackStatus(content, kind = "") {
    this.feedbackStatus.className = `status-line ${kind}`;
    clear(this.feedbackStatus, content);
  }

  setBusy(busy) {
    this.busy = busy;
    this.button.disabled = busy;
    this.dropzone.classList.toggle("disabled", busy);
    this.renderFeedback();
  }

  // Whether the session may list feedback: unknown yet (a 401 then asks for a key), an open
  // server, or a key with the read or admin scope.
  mayReadFeedback() {
    const session = this.app.session;
    return !session || session.open || ["read", "admin"].some((scope) => session.scopes?.includes(scope));
  }

  async countFeedback() {
    if (this.feedback.loading || !this.mayReadFeedback()) {
      this.renderFeedback();
      return;
    }
    this.feedback.loading = true;
    this.renderFeedback();
    try {
      const listed = await api.feedback({ limit: FEEDBACK_LIMIT });
      Object.assign(this.feedback, { count: listed.length, full: listed.length >= FEEDBACK_LIMIT, error: null });
    } catch (error) {
      Object.assign(this.feedback, {
        count: null,
        error: error.status === 403 ? "This key may not list feedback." : `The feedback cannot be counted: ${messageOf(error)}`,
      });
    } finally {
      this.feedback.loading = false;
      this.renderFeedback();
    }
  }

  renderFeedback() {
    const { count, full, error, loading, starting } = this.feedback;
    const admin = this.app.canAdmin();
    this.feedbackCount.dataset.count = count ?? "";
    this.feedbackCount.dataset.full = String(full);
    this.feedbackCount.textContent = count !== null ? feedbackCount(count, full)
      : loading ? "Counting the texts given feedback…" : error ?? "";
    // Only admin keys start pipelines: others get no button, and a note that says why.
    this.feedbackButton.hidden = !admin;
    this.feedbackButton.disabled = !admin || starting || this.busy || count === 0;
    this.feedbackButton.title = count === 0 ? "No text has feedback yet" : "";
    this.feedbackButton.setAttribute("aria-busy", String(starting));
    this.feedbackAdmin.hidden = admin;
    this.feedbackAdmin.textContent = this.app.session?.signed_in
      ? `Retraining needs an admin key: ${this.app.session.name ?? "this key"} may give feedback but not start a pipeline.`
      : "Retraining needs an admin key: sign in with one to start a pipeline with feedback.";
  }

  // POST /v1/jobs {type: pipeline, with_feedback: true}, then follow the job below.
  async retrainWithFeedback() {
    if (this.busy || this.feedback.starting || !this.app.canAdmin()) return;
    this.reset();
    this.feedback.starting = true;
    this.setBusy(true);
    this.setFeedbackStatus("Starting a pipeline on the dataset accepted last and its feedback…", "busy");
    let job;
    try {
      job = await api.createJob({ type: "pipeline", with_feedback: true });
    } catch (error) {
      this.setFeedbackStatus(pipelineRefusal(error), "error");
      return;
    } finally {
      this.feedback.starting = false;
      this.setBusy(false);
    }
    this.setFeedbackStatus(["Pipeline job ", h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, h("code", {}, job.id)),
      " started with feedback: follow it below or on the Jobs page."]);
    await this.view.open(job.id, job);
  }

  reset(focus = false) {
    this.upload?.abort();
    this.search?.stop();
    this.view.close();
    clear($("#retrain-job"));
    this.progress.hidden = true;
    this.againRow.hidden = true;
    this.dropzone.hidden = false;
    this.setStatus("");
    this.setFeedbackStatus("");
    this.setBusy(false);
    if (focus) this.button.focus();
  }

  async start(file) {
    if (this.busy) return;
    this.reset();
    const problem = await archiveProblem(file, this.maxBytes);
    if (problem) {
      this.setStatus(problem, "error");
      return;
    }
    this.setBusy(true);
    this.setStatus("Asking the server where to upload…", "busy");
    let ticket;
    try {
      ticket = await api.createUpload(file);
      this.maxBytes = ticket.max_bytes ?? null;
    } catch (error) {
      this.setStatus(`The upload was refused: ${messageOf(error)}`, "error");
      this.setBusy(false);
      return;
    }
    this.dropzone.hidden = true;
    this.progress.hidden = false;
    this.name.textContent = file.name;
    this.showProgress(0, file.size, performance.now());
    const cancel = h("button", { type: "button", class: "btn ghost small", onclick: () => this.upload?.abort() }, "Cancel upload");
    this.setStatus(["Uploading… ", cancel], "busy");
    const began = performance.now();
    this.upload = uploadToStore(ticket, file, (loaded, total) => this.showProgress(loaded, total, began));
    try {
      await this.upload.promise;
    } catch (error) {
      this.upload = null;
      this.setStatus(messageOf(error), "error");
      this.againRow.hidden = false;
      this.setBusy(false);
      return;
    }
    this.upload = null;
    this.bar.classList.add("complete");
    this.setStatus(`Uploaded ${bytes(file.size)}. Waiting for the pipeline to pick it up…`, "busy");
    this.search = this.findJob(ticket.key);
    const job = await this.search.promise;
    if (!job) return;
    this.setStatus(["Pipeline job started: ", h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id)]);
    this.againRow.hidden = false;
    this.setBusy(false);
    await this.view.open(job.id, job);
  }

  showProgress(loaded, total, began) {
    const fraction = total ? loaded / total : 0;
    const value = Math.round(fraction * 100);
    this.bar.setAttribute("aria-valuenow", String(value));
    this.bar.firstElementChild.style.width = `${value}%`;
    const seconds = (performance.now() - began) / 1000;
    const rate = seconds > 0.2 ? loaded / seconds : null;
    const left = rate && loaded < total ? ` · ${duration((total - loaded) / rate)} left` : "";
    this.figures.textContent = `${bytes(loaded)} of ${bytes(total)} (${value}%)${rate ? ` · ${bytes(rate)}/s` : ""}${left}`;
  }

  // Polls the job list until the pipeline job for `key` shows up.
  findJob(key) {
    let stopped = false;
    const began = performance.now();
    const promise = (async () => {
      let warned = false;
      while (!stopped) {
        try {
          const jobs = await api.jobs({ type: "pipeline", limit: 50 });
          const job = jobs.find((j) => startedBy(j, key));
          if (job) return job;
          if (!warned && performance.now() - began > CONFIG.jobWaitWarnMs) {
            warned = true;
            this.setStatus(["The archive is uploaded but no pipeline job has started for it yet. Is the storage-event listener running? Still waiting for ",
              h("code", {}, key), "…"], "warn");
          }
        } catch (error) {
          this.setStatus(`Uploaded, but the job list cannot be read: ${messageOf(error)}. Retrying…`, "error");
        }
        await new Promise((resolve) => setTimeout(resolve, CONFIG.jobPollMs));
      }
      return null;
    })();
    return { promise, stop: () => (stopped = true) };
  }
}
