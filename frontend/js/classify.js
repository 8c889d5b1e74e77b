// Classify: one text or many (typed, pasted, or read from a CSV or TXT file).

import { api } from "./api.js";
import { CONFIG, LABELS } from "./config.js";
import { $, clear, downloadFile, h, integer, messageOf, percent, plural } from "./dom.js";
import { canGiveFeedback, feedbackControl } from "./feedback.js";
import { labelChip } from "./jobview.js";
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
    this.busy = false;

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
    $("#classify-file-button").addEventListener("click", () => this.file.click());
    this.file.addEventListener("change", () => {
      if (this.file.files?.[0]) this.load(this.file.files[0]);
      this.file.value = "";
    });
    $("#classify-clear").addEventListener("click", () => {
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

  setStatus(text, kind = "") {
    this.status.className = `status-line ${kind}`;
    this.status.textContent = text;
  }

  async load(file) {
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
    if (texts.length > CONFIG.maxTexts) {
      this.setStatus(`${file.name} holds ${integer(texts.length)} texts; at most ${integer(CONFIG.maxTexts)} can be classified at once.`, "error");
      return;
    }
    this.text.value = texts.join("\n");
    this.updateCount();
    this.note.textContent = `Loaded ${plural(texts.length, "text")} from ${file.name} (${source}).`;
    this.setStatus("");
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
    this.busy = true;
    this.submitButton.disabled = true;
    this.submitButton.setAttribute("aria-busy", "true");
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
      this.busy = false;
      this.submitButton.disabled = false;
      this.submitButton.removeAttribute("aria-busy");
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
