// One job, live or replayed: its stages, progress, loss curve, validation report, evaluation,
// promotion decision, a batch job's predictions file and errors, all rebuilt from its event
// stream.

import { api } from "./api.js";
import { confusionMatrix, legend, lineChart } from "./charts.js";
import { CONFIG, LABELS, PHASE_NAMES, STAGE_NAMES, STAGES } from "./config.js";
import {
  clear, dateTime, decimal, duration, eventTime, h, integer, messageOf, percent, plural, shortHash, timeOfDay,
} from "./dom.js";
import { JobStream } from "./stream.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const SECTIONS = ["header", "stages", "progress", "error", "chart", "report", "evaluation", "promotion", "output", "log"];
const CONNECTION_TEXT = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Connection lost, reconnecting…",
  ended: "Complete",
  failed: "Stream unavailable",
};

function emptyState() {
  return {
    job: null,
    status: null,
    events: [],
    stages: new Map(),
    progress: null,
    trainTotal: null,
    loss: [],
    validationLoss: [],
    report: null,
    evaluations: [],
    result: null,
    error: null,
    logs: [],
    feedback: null, // a with_feedback pipeline's ingest log: feedback_rows, relabelled, confirmed, left_out
    connection: "connecting",
    connectionDetail: null,
  };
}

export class JobView {
  constructor(root) {
    this.root = root;
    this.stream = null;
    this.state = emptyState();
    this.dirty = new Set();
    this.frame = 0;
    this.parts = {};
    this.resized = () => this.touch("chart");
  }

  get jobId() {
    return this.state.job?.id ?? null;
  }

  // Shows the job (fetched unless given) and follows its events from the first.
  async open(jobId, job = null) {
    this.close();
    this.state = emptyState();
    this.build();
    try {
      this.state.job = job ?? (await api.job(jobId));
    } catch (error) {
      clear(this.root, h("div", { class: "callout danger", role: "alert" },
        h("strong", {}, "This job cannot be shown. "), messageOf(error)));
      return;
    }
    this.state.status = this.state.job.status;
    for (const stage of STAGES[this.state.job.type] ?? []) this.state.stages.set(stage, { state: "pending" });
    this.touch(...SECTIONS);
    window.addEventListener("resize", this.resized);
    this.stream = new JobStream(this.state.job.id, {
      onEvent: (event) => this.apply(event),
      onState: (state, detail) => {
        this.state.connection = state;
        this.state.connectionDetail = detail ?? null;
        if (state === "failed") this.state.error ??= { code: detail?.code ?? "stream", message: messageOf(detail) };
        this.touch("header", "error");
      },
    }).open();
  }

  close() {
    this.stream?.close();
    this.stream = null;
    window.removeEventListener("resize", this.resized);
  }

  // Charts are drawn at their panel's width; a view shown again after being hidden redraws.
  redraw() {
    if (this.state.job) this.touch("chart");
  }

  drop() {
    return this.stream?.drop() ?? false;
  }

  snapshot() {
    const s = this.state;
    return {
      jobId: this.jobId,
      status: s.status,
      connection: s.connection,
      connections: this.stream?.connections ?? 0,
      duplicatesSkipped: this.stream?.duplicates ?? 0,
      eventIds: s.events.map((e) => e.id),
      eventTypes: s.events.map((e) => e.type),
      stages: Object.fromEntries([...s.stages].map(([name, stage]) => [name, stage.state])),
      lossPoints: s.loss.length,
      feedbackRows: s.feedback?.feedback_rows ?? null,
      ended: Boolean(s.result || s.error),
      rendered: this.dirty.size === 0,
    };
  }

  // ---- events -> state

  apply(event) {
    const s = this.state;
    s.events.push(event);
    const { type, data } = event;
    if (type === "status") {
      s.status = data.status;
      this.touch("header");
      if (data.status !== "queued" && data.status !== "running") this.touch("stages");
    } else if (type === "progress") this.progress(data);
    else if (type === "metric") this.metric(data);
    else if (type === "log") this.log(event);
    else if (type === "result") this.finish(data, null);
    else if (type === "error") this.finish(null, data);
    if (type !== "progress") this.addLog(event);
    this.touch("log");
  }

  stage(name) {
    if (!this.state.stages.has(name)) this.state.stages.set(name, { state: "pending" });
    return this.state.stages.get(name);
  }

  progress(data) {
    const s = this.state;
    s.progress = data;
    if (data.stage) {
      const stage = this.stage(data.stage);
      if (stage.state === "pending") stage.state = "running";
    }
    // Adaptation's masked-LM steps, a distil run's teacher and its labelling come first with
    // steps of their own: not the chart's.
    if (data.stage === "train" && !data.phase) {
      s.trainTotal = data.total ?? s.trainTotal;
      if (typeof data.loss === "number" && s.loss.length < CONFIG.chartMaxPoints) s.loss.push([data.step, data.loss]);
      this.touch("chart");
    }
    this.touch("progress", "stages");
  }

  metric(data) {
    const s = this.state;
    if (data.name === "validation_report") {
      s.report = data.report ?? null;
      this.touch("report");
    } else if (data.name === "validation" && !data.phase) {
      if (typeof data.loss === "number") s.validationLoss.push([data.step, data.loss]);
      this.touch("chart");
    } else if (data.name === "evaluation") {
      s.evaluations.push(data);
      this.touch("evaluation");
    }
  }

  log(event) {
    const { data } = event;
    if (typeof data.feedback_rows === "number") {
      this.state.feedback = data;
      this.touch("stages");
    }
    if (!data.stage || !data.state) return;
    const stage = this.stage(data.stage);
    stage.state = data.state === "started" ? "running" : data.state === "finished" ? "done" : stage.state;
    if (data.state === "finished") stage.detail = data;
    if (data.state === "started" && this.state.progress?.stage !== data.stage) this.state.progress = { stage: data.stage };
    this.touch("stages", "progress");
  }

  addLog(event) {
    const { type, data } = event;
    let text;
    if (type === "log") {
      text = data.message ?? (data.stage ? `${STAGE_NAMES[data.stage] ?? data.stage} ${data.state}` : JSON.stringify(data));
    } else if (type === "status") text = `Status: ${data.status}`;
    else if (type === "metric") text = metricLine(data);
    else if (type === "result") text = "Result received";
    else if (type === "error") text = `Error: ${data.message ?? data.code ?? "unknown"}`;
    if (text) this.state.logs.push({ time: eventTime(event.id), type, text });
  }

  finish(result, error) {
    const s = this.state;
    s.result = result;
    s.error = error;
    for (const stage of s.stages.values()) {
      if (stage.state === "running") stage.state = error ? (error.code === "cancelled" ? "cancelled" : "failed") : "done";
    }
    if (error && ![...s.stages.values()].some((x) => x.state === "failed" || x.state === "cancelled")) {
      const next = [...s.stages.values()].find((x) => x.state === "pending");
      if (next) next.state = error.code === "cancelled" ? "cancelled" : "failed";
    }
    this.touch(...SECTIONS);
    if (result?.promotion?.promoted) window.dispatchEvent(new CustomEvent("agnews:production"));
    // The terminal event is in; the job's final record has its timings.
    api.job(s.job.id).then((job) => {
      s.job = job;
      s.status = job.status;
      this.touch("header", "progress");
    }, () => {});
  }

  // ---- rendering

  touch(...sections) {
    for (const section of sections) this.dirty.add(section);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  build() {
    const part = (name, attrs = {}) => (this.parts[name] = h("div", { class: `job-${name}`, ...attrs }));
    clear(this.root,
      h("article", { class: "job card", "aria-label": "Job" },
        part("header"),
        part("stages"),
        part("progress"),
        part("error"),
        h("div", { class: "job-grid" }, part("chart"), part("report")),
        part("evaluation"),
        part("promotion"),
        part("output"),
        part("log"),
      ),
    );
  }

  render() {
    this.frame = 0;
    if (!this.state.job) return;
    for (const section of this.dirty) this[`render_${section}`]?.(this.parts[section]);
    this.dirty.clear();
  }

  render_header(el) {
    const { job, status, connection } = this.state;
    const params = job.params ?? {};
    const source = params.dataset ?? params.source?.key;
    const ended = TERMINAL.has(status);
    const meta = [
      source && ["Dataset", h("code", {}, source)],
      job.type === "predict" && ["Texts", integer(job.texts ?? params.texts?.length ?? 0)],
      params.model_version && ["Model", h("code", {}, params.model_version)],
      params.with_feedback && ["Trains on", h("span", { class: "with-feedback" }, source ? "this dataset plus feedback" : "the dataset accepted last plus feedback")],
      ["Created", dateTime(job.created_at)],
      job.started_at && ["Started", dateTime(job.started_at)],
      ended && job.finished_at && ["Took", duration((new Date(job.finished_at) - new Date(job.started_at ?? job.created_at)) / 1000)],
    ].filter(Boolean);
    const cancel = !ended && h("button", {
      type: "button", class: "btn danger small", onclick: (event) => this.cancel(event.currentTarget),
    }, "Cancel job");
    const detail = this.state.connectionDetail;
    const waiting = connection === "reconnecting" && detail?.delay ? ` (in ${duration(detail.delay / 1000)})` : "";
    clear(el,
      h("div", { class: "row-between wrap" },
        h("div", {},
          h("h2", { class: "job-title" }, `${capitalize(job.type.replaceAll("_", " "))} job `, h("code", { class: "job-id" }, job.id)),
        ),
        h("div", { class: "job-head-side" },
          h("span", { class: `conn conn-${connection}`, role: "status", "aria-live": "polite" }, CONNECTION_TEXT[connection] + waiting),
          badge(status),
          cancel,
        ),
      ),
      h("dl", { class: "meta" }, meta.map(([term, value]) => h("div", {}, h("dt", {}, term), h("dd", {}, value)))),
    );
  }

  async cancel(button) {
    button.disabled = true;
    try {
      const job = await api.cancel(this.state.job.id);
      this.state.status = job.status;
    } catch (error) {
      this.state.logs.push({ time: new Date(), type: "error", text: `Cancel failed: ${messageOf(error)}` });
      this.touch("log");
      button.disabled = false;
    }
    this.touch("header");
  }

  render_stages(el) {
    const stages = [...this.state.stages];
    if (!stages.length) {
      clear(el);
      return;
    }
    clear(el, h("ol", { class: "stepper", "aria-label": "Stages" }, stages.map(([name, stage]) => {
      const [note, title] = stageNote(name, stage, this.state);
      return h("li", { class: `step ${stage.state}`, "data-stage": name, "data-state": stage.state },
        h("span", { class: "step-icon", "aria-hidden": "true" }, STEP_ICON[stage.state] ?? ""),
        h("span", { class: "step-text" },
          h("span", { class: "step-name" }, STAGE_NAMES[name] ?? name),
          h("span", { class: "step-state", title }, note),
        ),
      );
    })));
  }

  render_progress(el) {
    const { progress, status } = this.state;
    if (TERMINAL.has(status) || this.state.result || this.state.error) {
      clear(el);
      return;
    }
    if (!progress?.stage) {
      clear(el, h("p", { class: "muted" }, status === "queued" ? "Queued: waiting for a worker…" : "Starting…"));
      return;
    }
    const fraction = typeof progress.fraction === "number" ? progress.fraction : null;
    // A batch job's steps are the file's rows (pipeline/batch.py), with its rate in rows/s.
    const rows = progress.stage === "batch_predict";
    const figures = [
      progress.total != null && (rows
        ? `${integer(progress.step)} of ${plural(progress.total, "row")}`
        : `step ${integer(progress.step)} of ${integer(progress.total)}`),
      progress.rows_per_s != null && `${decimal(progress.rows_per_s, 1)} rows/s`,
      progress.eta_s != null && `ETA ${duration(progress.eta_s)}`,
      progress.loss != null && `loss ${decimal(progress.loss)}`,
      progress.lr != null && `lr ${progress.lr.toExponential(1)}`,
      progress.samples_per_s != null && `${decimal(progress.samples_per_s, 1)} samples/s`,
      progress.epoch != null && `epoch ${decimal(progress.epoch, 2)}`,
    ].filter(Boolean);
    const value = fraction == null ? null : Math.round(fraction * 100);
    clear(el,
      h("div", { class: "row-between" },
        h("strong", {}, (STAGE_NAMES[progress.stage] ?? progress.stage) + (PHASE_NAMES[progress.phase] ?? "")),
        h("span", { class: "muted" }, value == null ? "working…" : `${value}%`),
      ),
      h("div", {
        class: `bar${value == null ? " indeterminate" : ""}`, role: "progressbar",
        "aria-label": `${STAGE_NAMES[progress.stage] ?? progress.stage} progress`,
        "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": value ?? undefined,
        "data-stage": progress.stage,
      }, h("span", { style: { width: `${value ?? 100}%` } })),
      h("p", { class: "figures muted" }, figures.join(" · ") || "\u00a0"),
    );
  }

  render_error(el) {
    const { error } = this.state;
    if (!error) {
      clear(el);
      return;
    }
    const batch = this.state.job.type === "batch_predict";
    const withFeedback = Boolean(this.state.job.params?.with_feedback);
    const baseless = withFeedback && !this.state.job.params?.dataset && error.code === "dataset_not_found";
    const title = batch && ["dataset_invalid", "dataset_not_found", "payload_too_large"].includes(error.code) ? "The file cannot be classified"
      : error.code === "no_feedback" ? "There is no feedback to train on"
      : baseless ? "There is no dataset to add the feedback to"
      : error.code === "dataset_invalid" ? "The dataset was rejected"
      : error.code === "cancelled" ? "The job was cancelled"
        : error.code === "no_production_model" ? "No model is in production yet"
          : "The job failed";
    const hint = error.code === "no_feedback"
      ? "Correct or confirm answers in the Classify or Review view, then retrain. Feedback on texts of the promotion holdout or test.csv is never trained on."
      : baseless ? "Upload an archive.zip first: feedback is added to the dataset accepted last." : null;
    clear(el, h("div", { class: `callout ${error.code === "cancelled" ? "warn" : "danger"}`, role: "alert" },
      h("strong", { class: "callout-title" }, title),
      h("p", { class: "error-message" }, error.message || "No message was given."),
      hint && h("p", { class: "error-hint" }, hint),
      error.code && h("p", { class: "muted small" }, "Code: ", h("code", {}, error.code)),
    ));
  }

  render_chart(el) {
    const { loss, validationLoss, trainTotal, job } = this.state;
    if (!["pipeline", "train"].includes(job.type)) {
      clear(el);
      el.hidden = true;
      return;
    }
    // A job that ended before training shows no empty chart.
    el.hidden = !loss.length && Boolean(this.state.result || this.state.error);
    if (el.hidden) {
      clear(el);
      return;
    }
    const last = this.state.progress?.stage === "train" ? this.state.progress : null;
    const panel = h("section", { class: "panel", "aria-labelledby": "loss-title" }, h("h3", { id: "loss-title" }, "Training loss"));
    clear(el, panel);
    if (!loss.length) {
      panel.append(h("p", { class: "placeholder" }, "The loss curve appears when training starts."));
      return;
    }
    // Drawn at the panel's own width, so that its text keeps its size on any screen.
    const width = panel.clientWidth - 30;
    panel.append(
      lineChart({
        title: `Training loss over ${plural(loss.length, "report")}`,
        xLabel: "step", yLabel: "loss", xMax: trainTotal, width: width > 0 ? width : undefined,
        series: [
          { name: "training loss", points: loss, kind: "line", className: "loss-line" },
          { name: "validation loss", points: validationLoss, kind: "dots", className: "val-dots" },
        ],
      }),
      legend([["training loss", "loss-line"], ...(validationLoss.length ? [["validation loss", "val-dots"]] : [])]),
    );
    if (last) panel.append(h("p", { class: "muted small" }, `latest: loss ${decimal(last.loss)} at step ${integer(last.step)}`));
  }

  render_report(el) {
    const { report, job } = this.state;
    if (!["pipeline", "train"].includes(job.type)) {
      clear(el);
      el.hidden = true;
      return;
    }
    el.hidden = false;
    if (!report) {
      clear(el, h("section", { class: "panel" }, h("h3", {}, "Validation report"),
        h("p", { class: "placeholder" }, this.state.error ? "No report: the archive could not be read." : "The report appears once the archive is read.")));
      return;
    }
    const splits = Object.keys(report.rows_per_class ?? {});
    const facts = [
      ["Unreadable rows dropped", report.bad_rows],
      ["Empty texts dropped", report.empty_texts],
      ["Duplicate texts", report.duplicates],
      ["Duplicates with disagreeing labels", report.conflicting_duplicates],
      ["Over-long texts", report.over_long_texts],
    ];
    clear(el, h("section", { class: "panel report", "aria-labelledby": "report-title" },
      h("div", { class: "row-between" },
        h("h3", { id: "report-title" }, "Validation report"),
        h("span", { class: `badge ${report.accepted ? "ok" : "bad"}` }, report.accepted ? "Accepted" : "Rejected"),
      ),
      h("div", { class: "table-wrap" }, h("table", { class: "data compact rows-per-class" },
        h("caption", { class: "visually-hidden" }, "Rows per class in each file"),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Class"), splits.map((split) => h("th", { scope: "col", class: "num" }, split)))),
        h("tbody", {},
          LABELS.map((label, index) => h("tr", {},
            h("th", { scope: "row" }, h("span", { class: `dot c${index}`, "aria-hidden": "true" }), label),
            splits.map((split) => h("td", { class: "num" }, integer(report.rows_per_class[split]?.[label] ?? 0))),
          )),
          h("tr", { class: "total" }, h("th", { scope: "row" }, "Total"), splits.map((split) => h("td", { class: "num" }, integer(report.rows?.[split])))),
        ),
      )),
      h("dl", { class: "facts" },
        facts.map(([term, values]) => [h("dt", {}, term), h("dd", {}, splits.map((split) => `${split} ${integer(values?.[split] ?? 0)}`).join(" · "))]),
        h("dt", {}, "Test texts also in train"), h("dd", {}, integer(report.train_test_overlap)),
        h("dt", {}, "Dataset"), h("dd", {}, h("code", { title: report.dataset_sha256 }, shortHash(report.dataset_sha256)), ` · ${splits.map((split) => `${split}: ${report.dialect?.[split] ?? "?"}`).join(", ")}`),
      ),
      report.errors?.length ? h("div", { class: "issues errors" }, h("h4", {}, plural(report.errors.length, "error")), h("ul", {}, report.errors.map((text) => h("li", {}, text)))) : null,
      report.warnings?.length ? h("div", { class: "issues warnings" }, h("h4", {}, plural(report.warnings.length, "warning")), h("ul", {}, report.warnings.map((text) => h("li", {}, text)))) : null,
      !report.errors?.length && !report.warnings?.length ? h("p", { class: "ok-text" }, "No errors or warnings.") : null,
      report.problems?.length ? h("details", { class: "problems" },
        h("summary", {}, `${plural(report.problems_total ?? report.problems.length, "row problem")}`),
        h("ul", {}, report.problems.slice(0, 20).map((p) => h("li", {}, p.message ?? JSON.stringify(p)))),
      ) : null,
    ));
  }

  render_evaluation(el) {
    const { result, evaluations, job } = this.state;
    const metrics = result?.metrics;
    if (!metrics && !evaluations.length) {
      clear(el);
      return;
    }
    const candidate = evaluations[0];
    const headline = metrics ?? candidate;
    const perClass = metrics?.per_class;
    const labels = metrics?.labels ?? LABELS;
    clear(el, h("section", { class: "panel evaluation", "aria-labelledby": "eval-title" },
      h("h3", { id: "eval-title" }, job.type === "evaluate" ? "Evaluation" : "Evaluation on test.csv"),
      h("div", { class: "tiles" },
        tile("Accuracy", percent(headline.accuracy), "accuracy"),
        tile("Macro-F1", percent(headline.macro_f1), "macro-f1"),
        tile("Test rows", integer(headline.n)),
        tile("Model", h("code", {}, headline.model_version ?? result?.version ?? "–")),
      ),
      !metrics && h("p", { class: "muted small" }, "The per-class figures arrive with the result."),
      metrics?.members && h("p", { class: "muted small members" },
        `A blend of two members (a weighted ${metrics.members.mixing === "geometric" ? "geometric mean" : "mean"} of their probabilities, `
        + `the linear one's share ${metrics.members.weight}, fitted on validation rows): `
        + `transformer alone ${percent(metrics.members.transformer_accuracy)}, `
        + `TF-IDF linear alone ${percent(metrics.members.linear_accuracy)}, `
        + `blend ${percent(metrics.members.blend_accuracy)}.`),
      perClass && h("div", { class: "eval-grid" },
        h("div", { class: "table-wrap" }, h("table", { class: "data per-class" },
          h("caption", {}, "Per class"),
          h("thead", {}, h("tr", {}, ["Class", "Precision", "Recall", "F1", "Support"].map((t, i) => h("th", { scope: "col", class: i ? `num${i === 4 ? " support" : ""}` : "" }, t)))),
          h("tbody", {}, labels.map((label) => {
            const row = perClass[label] ?? {};
            return h("tr", {},
              h("th", { scope: "row" }, h("span", { class: `dot c${LABELS.indexOf(label)}`, "aria-hidden": "true" }), label),
              h("td", { class: "num" }, percent(row.precision)),
              h("td", { class: "num" }, percent(row.recall)),
              h("td", { class: "num" }, h("span", { class: "f1" }, h("span", { class: "f1-track", "aria-hidden": "true" }, h("span", { style: { width: `${(row.f1 ?? 0) * 100}%` } })), percent(row.f1))),
              h("td", { class: "num support" }, integer(row.support)),
            );
          })),
        )),
        Array.isArray(metrics.confusion_matrix) && h("div", { class: "table-wrap" }, confusionMatrix(metrics.confusion_matrix, labels)),
      ),
    ));
  }

  render_promotion(el) {
    const promotion = this.state.result?.promotion;
    if (!promotion) {
      clear(el);
      return;
    }
    const production = promotion.production_metrics;
    const candidate = promotion.candidate_metrics ?? {};
    clear(el, h("div", { class: `callout ${promotion.promoted ? "success" : "neutral"} promotion`, role: "status" },
      h("strong", { class: "callout-title" }, promotion.promoted
        ? ["Promoted: ", h("code", {}, promotion.version), " now serves in production"]
        : ["Not promoted: ", promotion.previous ? [h("code", {}, promotion.previous), " stays in production"] : "production is unchanged"]),
      h("p", {}, promotion.reason ?? ""),
      production && h("table", { class: "data compact compare" },
        h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", { scope: "col", class: "num" }, "Accuracy"), h("th", { scope: "col", class: "num" }, "Macro-F1"))),
        h("tbody", {},
          h("tr", {}, h("th", { scope: "row" }, "Candidate ", h("code", {}, promotion.version)), h("td", { class: "num" }, percent(candidate.accuracy)), h("td", { class: "num" }, percent(candidate.macro_f1))),
          h("tr", {}, h("th", { scope: "row" }, "Production ", h("code", {}, promotion.previous ?? "–")), h("td", { class: "num" }, percent(production.accuracy)), h("td", { class: "num" }, percent(production.macro_f1))),
        ),
      ),
    ));
  }

  render_output(el) {
    const { result, job } = this.state;
    if (job.type === "batch_predict") {
      this.batchOutput(el);
      return;
    }
    if (job.type !== "predict" || !result?.predictions) {
      clear(el);
      return;
    }
    const texts = job.params?.texts ?? [];
    clear(el, h("section", { class: "panel" },
      h("h3", {}, "Predictions ", h("span", { class: "muted small" }, "model ", h("code", {}, result.model_version))),
      h("div", { class: "table-wrap" }, h("table", { class: "data" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Text"), h("th", { scope: "col" }, "Label"), h("th", { scope: "col", class: "num" }, "Confidence"))),
        h("tbody", {}, result.predictions.map((p, i) => h("tr", {},
          h("td", { class: "text-cell", title: texts[i] ?? "" }, texts[i] ?? "–"),
          h("td", {}, labelChip(p.label)),
          h("td", { class: "num" }, percent(p.scores?.[p.label])),
        ))),
      )),
    ));
  }

  // A succeeded batch job: what it classified, how it scored where the file had labels, and its
  // predictions.csv (shared/contracts/results.py BatchPredictResult).
  batchOutput(el) {
    const { result } = this.state;
    if (typeof result?.rows !== "number") {
      clear(el);
      return;
    }
    const versions = Object.entries(result.model_versions ?? {});
    const scored = typeof result.accuracy === "number";
    const status = h("p", { class: "status-line download-status", role: "status", "aria-live": "polite" });
    const button = h("button", {
      type: "button", class: "btn primary download-predictions", onclick: (event) => this.download(event.currentTarget, status),
    }, "Download predictions.csv");
    clear(el, h("section", { class: "panel batch-output", "aria-label": "Batch predictions" },
      h("div", { class: "row-between wrap" }, h("h3", {}, "Predictions"), button),
      h("div", { class: "tiles" },
        tile("Rows", integer(result.rows), "rows"),
        tile(versions.length > 1 ? "Models" : "Model", versions.length
          ? versions.map(([version], i) => [i ? ", " : "", h("code", {}, version)])
          : "–", "model"),
        scored && tile("Accuracy", percent(result.accuracy), "accuracy"),
        tile("Rows/s", decimal(result.rows_per_s, 1), "rows-per-s"),
      ),
      versions.length > 1 && h("p", { class: "muted small" }, "A promotion during the job: ",
        versions.map(([version, count], i) => [i ? "; " : "", h("code", {}, version), ` answered ${plural(count, "row")}`]), "."),
      scored && h("p", { class: "muted small" },
        `Accuracy on the ${plural(result.labelled, "row")} of the file that carried a label, as the fleet answered them.`),
      Array.isArray(result.confusion) && h("div", { class: "table-wrap" }, confusionMatrix(result.confusion, LABELS)),
      status,
    ));
  }

  // GET /v1/jobs/{id}/output names a presigned GET of the file, good for a while: the browser
  // follows it (the store serves text/csv, which browsers save).
  async download(button, status) {
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    status.className = "status-line download-status busy";
    clear(status, "Asking the server for predictions.csv…");
    try {
      const output = await api.jobOutput(this.state.job.id);
      const until = timeOfDay(new Date(Date.now() + output.expires_in * 1000));
      status.className = "status-line download-status";
      clear(status, "Downloading predictions.csv. If it does not start, ",
        h("a", { href: output.url, download: "predictions.csv", class: "predictions-link" }, "open the file"),
        until ? ` (the link works until ${until}).` : ".");
      const link = h("a", { href: output.url, download: "predictions.csv", hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
    } catch (error) {
      status.className = "status-line download-status error";
      clear(status, error.status === 404
        ? `There is no file to download: ${messageOf(error)}`
        : `The download failed: ${messageOf(error)}`);
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  render_log(el) {
    const { logs, events } = this.state;
    const wasOpen = el.querySelector("details")?.open ?? false;
    clear(el, h("details", { class: "activity", open: wasOpen },
      h("summary", {}, "Activity ", h("span", { class: "muted", "data-events": events.length }, `(${plural(events.length, "event")})`)),
      h("ol", { class: "log" }, logs.map((entry) => h("li", { class: `log-${entry.type}` },
        h("time", {}, entry.time ? timeOfDay(entry.time) : ""), " ", entry.text))),
    ));
  }
}

const STEP_ICON = { done: "✓", running: "", failed: "✕", cancelled: "–", pending: "" };

// [the stage's note, and its whole text where the note is cut short (a title), or null].
function stageNote(name, stage, state) {
  const detail = stage.detail ?? {};
  // A with_feedback pipeline's ingest: how many feedback rows it added (its log, or the detail).
  const feedback = name === "ingest" && state.job?.params?.with_feedback;
  const rows = feedback ? detail.feedback_rows ?? state.feedback?.feedback_rows : undefined;
  const added = typeof rows === "number" ? plural(rows, "feedback row") : null;
  if (stage.state === "done") {
    const took = typeof detail.seconds === "number" ? ` · ${duration(detail.seconds)}` : "";
    const done = `${doneNote(name, detail)}${took}`;
    // The stepper's cell is narrow: the rows added, the dataset in the title.
    return added ? [`${added}${took}`, `${doneNote(name, detail)} · ${added}${took}`] : [done, null];
  }
  if (feedback && stage.state === "running") return [added ? `${added}, validating…` : "adding feedback…", null];
  if (feedback && stage.state === "pending") return ["waiting · with feedback", null];
  return [{ running: "running…", failed: "failed", cancelled: "cancelled", pending: "waiting" }[stage.state] ?? stage.state, null];
}

function doneNote(name, detail) {
  if (name === "ingest" && detail.dataset_sha256) return `dataset ${shortHash(detail.dataset_sha256, 8)}`;
  if (name === "train" && typeof detail.accuracy === "number") return `validation ${percent(detail.accuracy)}`;
  if (name === "evaluate" && detail.version) return detail.version;
  if (name === "promote" && "promoted" in detail) return detail.promoted ? "promoted" : "not promoted";
  if (name === "batch_predict" && typeof detail.rows === "number") return plural(detail.rows, "row");
  return "done";
}

function metricLine(data) {
  if (data.name === "validation_report") {
    const report = data.report ?? {};
    return `Validation report: ${report.accepted ? "accepted" : "rejected"} (${plural(report.errors?.length ?? 0, "error")}, ${plural(report.warnings?.length ?? 0, "warning")})`;
  }
  if (data.name === "validation") return `Validation at step ${integer(data.step)}: accuracy ${percent(data.accuracy)}, loss ${decimal(data.loss)}`;
  if (data.name === "evaluation") return `Evaluated ${data.model_version ?? "model"}: accuracy ${percent(data.accuracy)}, macro-F1 ${percent(data.macro_f1)} on ${integer(data.n)} rows`;
  return `Metric ${data.name ?? ""}`;
}

function tile(label, value, name) {
  return h("div", { class: "tile", "data-metric": name }, h("span", { class: "tile-label" }, label), h("span", { class: "tile-value" }, value));
}

function capitalize(text) {
  return text ? text[0].toUpperCase() + text.slice(1) : "";
}

export function badge(status) {
  return h("span", { class: `badge status-${status}` }, status ?? "unknown");
}

export function labelChip(label) {
  const index = LABELS.indexOf(label);
  return h("span", { class: `chip c${index}` }, label ?? "–");
}
