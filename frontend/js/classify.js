// Classify: one text or many (typed, pasted, or read from a CSV or TXT file). A file of more
// than CONFIG.batchAboveRows texts is not classified here: it goes up to the object store and a
// batch_predict job classifies it on the server, into a predictions.csv to download.

import { api, uploadToStore } from "./api.js";
import { CONFIG, LABELS } from "./config.js";
import { $, bytes, clear, downloadFile, h, integer, messageOf, percent, plural } from "./dom.js";
import { canGiveFeedback, feedbackControl } from "./feedback.js";
import { JobView, labelChip } from "./jobview.js";
import { jobOutcome } from "./stream.js";
import { textsFromCsv, textsFromPlain, toCsv } from "./csv.js";

const TABLE_ROWS_SHOWN = 500;

function textsOf(value) {
  return value.split(/\r?\n/).map((line) => line.trim()).filter(Boolean);
}

// Classifies in chunks; a chunk the server could not answer in time is followed to its end.
// `sources` name, for each text, the predict job that answered it and the text's index there.
export async function predictAll(texts, onChunk = () => {}) {
  const predictions = [];
  const sources = [];
  const versions = new Set();
  const forms = new Set();
  for (let start = 0; start < texts.length; start += CONFIG.predictChunk) {
    const chunk = texts.slice(start, start + CONFIG.predictChunk);
    const answer = await api.predict(chunk);
    const body = answer.status === 202 ? await jobOutcome(answer.body.id) : answer.body;
    if (!Array.isArray(body?.predictions)) throw new Error("The server's answer holds no predictions.");
    const jobId = answer.status === 202 ? answer.body.id : body.job_id;
    body.predictions.forEach((_, index) => sources.push({ job_id: jobId, index, model_version: body.model_version }));
    predictions.push(...body.predictions);
    versions.add(body.model_version);
    if (body.form) forms.add(body.form);
    onChunk(predictions.length);
  }
  return { predictions, sources, versions: [...versions], forms: [...forms] };
}

// The file a batch job reads, named .csv as uploads of texts must be: a CSV as it is (its label
// column, if any, scores the job), else the texts one a row under a `text` header.
export function batchFile(file, csv, texts) {
  const base = file.name.replace(/\.[^.]*$/, "") || "texts";
  if (csv) return /\.csv$/i.test(file.name) ? file : new File([file], `${base}.csv`, { type: "text/csv" });
  return new File([toCsv([["text"], ...texts.map((text) => [text])])], `${base}.csv`, { type: "text/csv" });
}

// Why POST /v1/uploads refused the file, fit to show.
function uploadRefusal(file, error) {
  if (error.status === 413) {
    const limit = error.details?.max_bytes;
    return `${file.name} is ${bytes(file.size)}; the server takes files of at most ${limit ? bytes(limit) : "its upload limit"}.`;
  }
  if (error.status === 403) return `This key may not upload files to classify: ${messageOf(error)}`;
  return `The upload of ${file.name} was refused: ${messageOf(error)}`;
}

// The form the predict workers served the model in (each worker times them at load).
function servedAs(forms) {
  return forms.length ? h("span", { class: "served-as" }, " · served as ", forms.map((form, i) => [i ? ", " : "", h("code", {}, form)])) : "";
}

export class ClassifyScreen {
  constructor(app) {
    this.app = app;
    this.form = $("#classify-form");
    this.text = $("#classify-text");
    this.file = $("#classify-file");
    this.note = $("#classify-file-note");
    this.count = $("#classify-count");
    this.status = $("#classify-status");
    this.result = $("#classify-result");
    this.submitButton = $("#classify-submit");
    this.noModel = $("#classify-nomodel");
    this.fileButton = $("#classify-file-button");
    $("#classify-batch-rows").textContent = integer(CONFIG.batchAboveRows);
    this.busy = false;
    this.batching = false;
    this.upload = null; // a batch file on its way to the object store: {promise, abort}
    this.view = null; // the batch job a file started

    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.text.addEventListener("input", () => this.updateCount());
    this.text.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.submit();
      }
    });
    this.fileButton.addEventListener("click", () => this.file.click());
    this.file.addEventListener("change", () => {
      if (this.file.files?.[0]) this.load(this.file.files[0]);
      this.file.value = "";
    });
    $("#classify-clear").addEventListener("click", () => {
      this.upload?.abort();
      this.closeJob();
      this.text.value = "";
      this.note.textContent = "";
      this.setStatus("");
      clear(this.result);
      this.updateCount();
      this.text.focus();
    });
    this.updateCount();
  }

  enter() {
    this.checkModel();
  }

  async checkModel() {
    try {
      const production = await api.production();
      this.showNoModel(!production);
    } catch {
      // The banner says the server is down; nothing to add here.
    }
  }

  showNoModel(show) {
    this.noModel.hidden = !show;
    if (show) {
      clear(this.noModel,
        h("strong", {}, "No model is serving yet. "),
        "Upload an archive.zip on the ", h("a", { href: "#/retrain" }, "Retrain"), " page to train the first one; it is promoted when training ends.");
    }
  }

  updateCount() {
    const n = textsOf(this.text.value).length;
    this.count.textContent = n ? plural(n, "text") : "";
  }

  setStatus(content, kind = "") {
    this.status.className = `status-line ${kind}`;
    clear(this.status, content);
  }

  // `batching`: a file is on its way to a batch job, and no other file is taken meanwhile.
  setBusy(busy, batching = false) {
    this.busy = busy;
    this.batching = batching;
    this.submitButton.disabled = busy;
    this.fileButton.disabled = batching;
    if (busy) this.submitButton.setAttribute("aria-busy", "true");
    else this.submitButton.removeAttribute("aria-busy");
  }

  closeJob() {
    this.view?.close();
    this.view = null;
  }

  async load(file) {
    if (this.batching) return;
    this.note.textContent = "";
    let content;
    try {
      content = await file.text();
    } catch (error) {
      this.setStatus(`Could not read ${file.name}: ${messageOf(error)}`, "error");
      return;
    }
    if (content.includes("\u0000")) {
      this.setStatus(`${file.name} is not a text file: choose a CSV or a plain-text file with one text per line.`, "error");
      return;
    }
    const csv = /\.csv$/i.test(file.name) || file.type === "text/csv";
    const { texts, source } = csv ? textsFromCsv(content) : { texts: textsFromPlain(content), source: "one text per line" };
    if (!texts.length) {
      this.setStatus(`No texts found in ${file.name} (${source}).`, "error");
      return;
    }
    if (texts.length > CONFIG.batchAboveRows || texts.length > CONFIG.maxTexts) {
      if (this.busy) this.setStatus(`${file.name} holds ${plural(texts.length, "text")}: choose it again once this classification has ended, to send it to a batch job.`, "error");
      else await this.batch(file, csv, texts);
      return;
    }
    this.text.value = texts.join("\n");
    this.updateCount();
    this.note.textContent = `Loaded ${plural(texts.length, "text")} from ${file.name} (${source}).`;
    this.setStatus("");
  }

  // Uploads the file (as POST /v1/uploads says where) and starts a batch_predict job on it; the
  // job is followed below, and its predictions.csv offered for download when it ends.
  async batch(file, csv, texts) {
    this.closeJob();
    clear(this.result);
    const upload = batchFile(file, csv, texts);
    this.note.textContent = `${file.name} holds ${plural(texts.length, "text")}, more than the ${integer(CONFIG.batchAboveRows)} this page classifies itself: `
      + "a batch job on the server classifies it instead, into a predictions.csv to download.";
    this.setBusy(true, true);
    try {
      this.setStatus(`Asking the server where to upload ${upload.name}…`, "busy");
      let ticket;
      try {
        ticket = await api.createUpload(upload);
      } catch (error) {
        this.setStatus(uploadRefusal(upload, error), "error");
        return;
      }
      const cancel = h("button", { type: "button", class: "btn ghost small", onclick: () => this.upload?.abort() }, "Cancel upload");
      // The figures change as the bytes go: not read out each time (the status line is live).
      const figures = h("span", { class: "muted", "aria-live": "off" }, "0%");
      this.setStatus([`Uploading ${upload.name} (${bytes(upload.size)})…`, figures, cancel], "busy");
      this.upload = uploadToStore(ticket, upload, (loaded, total) => {
        figures.textContent = `${bytes(loaded)} of ${bytes(total)} (${total ? Math.round((loaded / total) * 100) : 0}%)`;
      }, "text/csv");
      try {
        await this.upload.promise;
      } catch (error) {
        this.setStatus(error.code === "aborted" ? "The upload was cancelled; nothing was classified." : `The upload of ${upload.name} failed: ${messageOf(error)}`, "error");
        return;
      } finally {
        this.upload = null;
      }
      this.setStatus(`Uploaded ${bytes(upload.size)}. Starting the batch job…`, "busy");
      let job;
      try {
        job = await api.createJob({ type: "batch_predict", dataset: ticket.key });
      } catch (error) {
        this.setStatus(error.status === 403
          ? `This key may not start batch jobs: ${messageOf(error)}`
          : `The server refused the batch job: ${messageOf(error)}`, "error");
        return;
      }
      this.setStatus(["Batch job ", h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, h("code", {}, job.id)),
        ` started for ${plural(texts.length, "text")}: follow it below or on the Jobs page.`]);
      const holder = h("div", { class: "classify-job" });
      clear(this.result, holder);
      this.view = new JobView(holder);
      await this.view.open(job.id, job);
    } finally {
      this.setBusy(false);
    }
  }

  async submit() {
    if (this.busy) return;
    const texts = textsOf(this.text.value);
    if (!texts.length) {
      this.setStatus("Type or paste a text to classify first.", "error");
      this.text.focus();
      return;
    }
    if (texts.length > CONFIG.maxTexts) {
      this.setStatus(`${integer(texts.length)} texts: at most ${integer(CONFIG.maxTexts)} can be classified at once.`, "error");
      return;
    }
    this.closeJob();
    this.setBusy(true);
    this.setStatus(texts.length === 1 ? "Classifying…" : `Classifying ${plural(texts.length, "text")}…`, "busy");
    try {
      const { predictions, sources, versions, forms } = await predictAll(texts, (done) => {
        if (texts.length > CONFIG.predictChunk) this.setStatus(`Classified ${integer(done)} of ${integer(texts.length)}…`, "busy");
      });
      this.showNoModel(false);
      this.setStatus(texts.length === 1 ? "Done." : `Classified ${plural(texts.length, "text")}.`);
      this.sources = sources;
      if (texts.length === 1) this.showOne(texts[0], predictions[0], versions[0], forms);
      else this.showMany(texts, predictions, versions, forms);
    } catch (error) {
      clear(this.result);
      if (error.code === "no_production_model") {
        this.showNoModel(true);
        this.setStatus("No model is serving yet: train one on the Retrain page first.", "error");
      } else if (error.status === 422 || error.status === 413) {
        this.setStatus(`The server refused the texts: ${messageOf(error)}`, "error");
      } else {
        this.setStatus(`Classification failed: ${messageOf(error)}`, "error");
      }
    } finally {
      this.setBusy(false);
    }
  }

  showOne(text, prediction, version, forms) {
    const best = prediction.scores?.[prediction.label];
    clear(this.result, h("section", { class: "card result-one", "aria-label": "Result" },
      h("div", { class: "result-head" },
        h("div", {},
          h("p", { class: "eyebrow" }, "Topic"),
          h("p", { class: `result-label c${LABELS.indexOf(prediction.label)}`, "data-label": prediction.label }, prediction.label),
        ),
        h("div", { class: "result-confidence" }, h("span", { class: "big" }, percent(best)), h("span", { class: "muted" }, "confidence")),
      ),
      h("ul", { class: "bars", "aria-label": "Probability of each topic" }, LABELS.map((label, index) => {
        const p = prediction.scores?.[label] ?? 0;
        return h("li", { class: label === prediction.label ? "top" : "" },
          h("span", { class: "bar-name" }, label),
          h("span", { class: "bar-track" }, h("span", { class: `bar-fill c${index}`, style: { width: `${(p * 100).toFixed(2)}%` } })),
          h("span", { class: "bar-value" }, percent(p)));
      })),
      h("p", { class: "muted small result-foot" },
        "Model ", h("code", {}, version ?? "–"),
        servedAs(forms),
        prediction.truncated ? " · the text was longer than the model reads; only its beginning counted" : "",
      ),
      h("blockquote", { class: "quoted" }, text),
      this.correction(text, prediction, 0),
    ));
  }

  // One click on the right topic stores it as feedback (feedback.js); none for a key that may
  // not give it.
  correction(text, prediction, index) {
    if (!canGiveFeedback(this.app.session)) return null;
    return feedbackControl({ ...this.sources?.[index], text, predicted: prediction.label });
  }

  showMany(texts, predictions, versions, forms) {
    const counts = Object.fromEntries(LABELS.map((l) => [l, 0]));
    for (const p of predictions) counts[p.label] = (counts[p.label] ?? 0) + 1;
    const download = () => {
      const rows = [["text", "label", "label_id", ...LABELS, "truncated", "model_version"]];
      predictions.forEach((p, i) => rows.push([texts[i], p.label, p.label_id, ...LABELS.map((l) => p.scores?.[l]), p.truncated, versions.join(" ")]));
      downloadFile("predictions.csv", toCsv(rows), "text/csv;charset=utf-8");
    };
    const shown = predictions.slice(0, TABLE_ROWS_SHOWN);
    clear(this.result, h("section", { class: "card result-many", "aria-label": "Results" },
      h("div", { class: "row-between wrap" },
        h("ul", { class: "counts" }, LABELS.map((l, i) => h("li", {}, h("span", { class: `dot c${i}`, "aria-hidden": "true" }), `${l} `, h("strong", {}, integer(counts[l]))))),
        h("button", { type: "button", class: "btn", id: "classify-download", onclick: download }, "Download CSV"),
      ),
      h("div", { class: "table-wrap" }, h("table", { class: "data results" },
        h("thead", {}, h("tr", {},
          h("th", { scope: "col", class: "num" }, "#"), h("th", { scope: "col" }, "Text"), h("th", { scope: "col" }, "Topic"),
          h("th", { scope: "col", class: "num" }, "Confidence"),
          canGiveFeedback(this.app.session) && h("th", { scope: "col" }, "Right topic?"))),
        h("tbody", {}, shown.map((p, i) => h("tr", {},
          h("td", { class: "num muted" }, i + 1),
          h("td", { class: "text-cell", title: texts[i] }, texts[i]),
          h("td", {}, labelChip(p.label)),
          h("td", { class: "num" }, percent(p.scores?.[p.label])),
          canGiveFeedback(this.app.session) && h("td", {}, this.correction(texts[i], p, i)),
        ))),
      )),
      predictions.length > shown.length && h("p", { class: "muted small" }, `The first ${integer(shown.length)} are shown; the CSV holds all ${integer(predictions.length)}.`),
      h("p", { class: "muted small" }, `Model ${versions.join(", ")}`, servedAs(forms)),
    ));
  }
}
