// Monitor: how a version answers live traffic beside what it answered on its holdout (label mix,
// confidence, drift), its forward passes and throughput, and the challenger scored beside
// production, which an admin can promote or dismiss from here.

import { api } from "./api.js";
import { histogram, legend, minuteChart } from "./charts.js";
import { CONFIG, LABELS, MONITOR_EDGES } from "./config.js";
import { $, clear, dateTime, decimal, h, integer, messageOf, percent, plural, timeOfDay } from "./dom.js";
import { labelChip } from "./jobview.js";

const SIGNALS = {
  labels: { name: "Label mix", what: "the share of each label" },
  confidence: { name: "Confidence", what: "the top score of each answer", x: "confidence (top score)" },
  margin: { name: "Margin", what: "the top score less the second", x: "margin (top score less the second)" },
  tokens: { name: "Length", what: "each text's length in tokens", x: "length in tokens" },
};
const HISTOGRAMS = ["confidence", "margin", "tokens"];

// Seconds as a person reads a forward pass: milliseconds under a second.
function seconds(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  if (value < 1) return `${(value * 1000).toFixed(value < 0.01 ? 2 : 1)} ms`;
  return `${value.toFixed(2)} s`;
}

function shareOf(profile, label) {
  return profile?.n ? (profile.labels?.[label] ?? 0) / profile.n : null;
}

function tile(label, value, name, note) {
  return h("div", { class: "tile", "data-metric": name },
    h("span", { class: "tile-label" }, label),
    h("span", { class: "tile-value" }, value),
    note && h("span", { class: "tile-note muted small" }, note));
}

function section(title, id, ...children) {
  return h("section", { class: "card monitor-card", "aria-labelledby": id },
    h("h2", { id, class: "card-title" }, title), ...children);
}

// The mean forward pass over every form and pass size, weighted by passes.
function meanPass(forward) {
  const passes = forward.reduce((sum, f) => sum + f.passes, 0);
  return passes ? forward.reduce((sum, f) => sum + f.mean_seconds * f.passes, 0) / passes : null;
}

export class MonitorScreen {
  constructor(app) {
    this.app = app;
    this.picker = $("#monitor-version");
    this.status = $("#monitor-status");
    this.updated = $("#monitor-updated");
    this.body = $("#monitor-body");
    this.dialog = $("#challenger-dialog");
    this.reason = $("#challenger-reason");
    this.dialogError = $("#challenger-error");
    this.chosen = null; // the version picked; null: production's
    this.signal = "confidence";
    this.state = null;
    this.drawn = "";
    this.renders = 0;
    this.refreshes = 0;
    this.timer = null;
    this.active = false;
    this.generation = 0;
    this.pending = null;
    this.picker.addEventListener("change", () => {
      this.chosen = this.picker.value || null;
      this.refresh();
    });
    $("#monitor-controls").addEventListener("submit", (event) => {
      event.preventDefault();
      this.refresh();
    });
    document.addEventListener("visibilitychange", () => {
      if (!this.active) return;
      if (document.hidden) this.stopTimer();
      else this.refresh();
    });
    $("#challenger-cancel").addEventListener("click", () => this.dialog.close());
    $("#challenger-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.confirm();
    });
  }

  enter(version) {
    this.active = true;
    if (version) this.chosen = version;
    this.refresh();
  }

  leave() {
    this.active = false;
    this.stopTimer();
  }

  // Admin buttons come and go with the session.
  sessionChanged() {
    if (this.active && this.state) this.render(true);
  }

  stopTimer() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  schedule() {
    this.stopTimer();
    if (this.active && !document.hidden) this.timer = setTimeout(() => this.refresh(), CONFIG.monitorRefreshMs);
  }

  setStatus(text, kind = "") {
    this.status.className = `status-line ${kind}`;
    this.status.textContent = text;
  }

  async refresh() {
    this.stopTimer();
    const generation = ++this.generation;
    let registry, challenger, report = null;
    try {
      [registry, challenger] = await Promise.all([api.models({ limit: 25 }), api.challenger()]);
      const version = this.chosen ?? registry?.production?.version ?? null;
      if (version) report = await api.monitor(version);
    } catch (error) {
      if (generation !== this.generation) return;
      this.setStatus(`The monitor cannot be read: ${messageOf(error)}`, "error");
      this.schedule();
      return;
    }
    if (generation !== this.generation || !this.active) return;
    this.refreshes += 1;
    this.setStatus("");
    this.state = { models: registry?.models ?? [], production: registry?.production ?? null, challenger, report };
    this.app.setServing(this.state.production);
    this.renderPicker();
    this.render(false);
    this.updated.textContent = `Updated ${timeOfDay(new Date())} · refreshes every ${Math.round(CONFIG.monitorRefreshMs / 1000)} s`;
    this.schedule();
  }

  renderPicker() {
    const { models, production, challenger, report } = this.state;
    const versions = models.map((m) => m.version);
    for (const extra of [production?.version, challenger?.version, report?.version]) {
      if (extra && !versions.includes(extra)) versions.push(extra);
    }
    const selected = report?.version ?? "";
    const options = versions.map((version) => {
      const roles = [version === production?.version && "production", version === challenger?.version && "challenger"].filter(Boolean);
      return h("option", { value: version, selected: version === selected }, roles.length ? `${version} (${roles.join(", ")})` : version);
    });
    if (!versions.length) options.push(h("option", { value: "" }, "No versions registered"));
    const focused = document.activeElement === this.picker;
    if (!focused) clear(this.picker, options);
    this.picker.disabled = !versions.length;
  }

  // Drawn again only when what it shows changed, so that a refresh keeps focus and scroll.
  render(force) {
    const key = JSON.stringify([this.state, this.signal, this.app.canAdmin(), this.body.clientWidth > 860]);
    if (!force && key === this.drawn) return;
    this.drawn = key;
    this.renders += 1;
    const { report, production } = this.state;
    if (!report) {
      clear(this.body, h("div", { class: "callout info" },
        h("strong", {}, "No model is in production. "),
        "Once a version serves, its live traffic is shown here. Train one on the ", h("a", { href: "#/retrain" }, "Retrain"), " page."));
      return;
    }
    const full = this.body.clientWidth || 1000;
    const wide = full > 860;
    const inner = Math.max(260, (wide ? (full - 16) / 2 : full) - 38);
    const role = report.version === production?.version ? "production" : report.version === this.state.challenger?.version ? "challenger" : null;
    clear(this.body,
      h("div", { class: "monitor-head" },
        h("h2", { class: "monitor-version" }, "Version ", h("code", {}, report.version), role && h("span", { class: `badge ${role === "production" ? "ok" : "status-running"}` }, role)),
        this.summary(report),
      ),
      report.live.n === 0 && h("div", { class: "callout neutral", id: "monitor-empty" },
        h("strong", {}, "No traffic in the window yet. "),
        `${report.version} answered nothing in the last ${plural(report.window_minutes, "minute")}. `,
        role === "production" ? ["Classify some texts on the ", h("a", { href: "#/classify" }, "Classify"), " page and they appear here within seconds."] : "Only the version in production answers live traffic."),
      this.labelMix(report, full - 38),
      h("div", { class: "monitor-grid" },
        this.throughput(report, inner),
        this.distribution(report, inner),
      ),
      h("div", { class: "monitor-grid" },
        this.drift(report),
        this.forward(report),
      ),
      this.challenge(report, role),
    );
  }

  summary(report) {
    const drifted = report.drift.filter((d) => d.drifted).length;
    const scored = report.drift.some((d) => d.psi !== null);
    return h("div", { class: "tiles monitor-tiles" },
      tile(`Texts, last ${report.window_minutes} min`, integer(report.live.n), "window-texts"),
      tile("Since it served", integer(report.total_texts), "total-texts"),
      tile("Cut to length", integer(report.live.truncated), "truncated", report.live.n ? percent(report.live.truncated / report.live.n) : null),
      tile("Drifted signals", scored ? `${drifted} of ${report.drift.length}` : "–", "drifted", scored ? null : "too few texts to score"),
    );
  }

  labelMix(report, width) {
    const { live, reference, timeline } = report;
    const series = LABELS.map((label, i) => ({
      name: label,
      kind: "line",
      className: `mix c${i}`,
      values: timeline.map((m) => (m.n ? (m.labels?.[label] ?? 0) / m.n : null)),
    }));
    const rules = reference?.n ? LABELS.map((label, i) => ({ name: `${label} on the holdout`, value: shareOf(reference, label), className: `c${i}` })) : [];
    const table = h("table", { class: "data compact mix-table" },
      h("caption", { class: "visually-hidden" }, "The label mix of the window beside the holdout's"),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Label"),
        h("th", { scope: "col", class: "num" }, "Texts"),
        h("th", { scope: "col", class: "num" }, "Window"),
        h("th", { scope: "col", class: "num" }, "Holdout"),
        h("th", { scope: "col", class: "num" }, "Change"))),
      h("tbody", {}, LABELS.map((label) => {
        const now = shareOf(live, label);
        const then = shareOf(reference, label);
        const change = now !== null && then !== null ? now - then : null;
        return h("tr", { "data-label": label },
          h("th", { scope: "row" }, labelChip(label)),
          h("td", { class: "num", "data-field": "count" }, integer(live.labels?.[label] ?? 0)),
          h("td", { class: "num", "data-field": "share" }, percent(now)),
          h("td", { class: "num", "data-field": "holdout" }, percent(then)),
          h("td", { class: "num muted", "data-field": "change" }, change === null ? "–" : `${change >= 0 ? "+" : "−"}${(Math.abs(change) * 100).toFixed(1)} pt`),
        );
      })),
    );
    return section("Label mix over time", "monitor-h-mix",
      h("p", { class: "muted small" }, `Each label's share of the texts answered in each minute of the last ${report.window_minutes}; dashed lines: its share on the holdout.`),
      h("div", { class: "mix-layout" },
        h("div", { class: "mix-chart" },
          live.n
            ? minuteChart({ minutes: timeline.map((m) => m.minute), series, rules, yMax: 1, yFormat: (v) => percent(v, 0), yLabel: "share of texts", title: "Each label's share of the texts per minute, against the holdout's", width: Math.max(260, width * (width > 700 ? 0.62 : 1)) })
            : h("p", { class: "placeholder" }, "No traffic in the window yet."),
          legend([...LABELS.map((label, i) => [label, `mix c${i}`]), ...(rules.length ? [["holdout", "rule-swatch"]] : [])]),
        ),
        h("div", { class: "table-wrap" }, table),
      ),
      !reference && h("p", { class: "muted small" }, "This version kept no holdout profile, so there is nothing to compare the window with."),
    );
  }

  throughput(report, width) {
    const counts = report.timeline.map((m) => m.n);
    const last = counts.length > 1 ? counts.at(-2) : counts.at(-1) ?? 0;
    const peak = Math.max(0, ...counts);
    return section("Throughput", "monitor-h-throughput",
      h("div", { class: "tiles compact" },
        tile("Last full minute", `${integer(last)}/min`, "last-minute"),
        tile("Mean", `${decimal(report.live.n / Math.max(report.window_minutes, 1), 1)}/min`, "mean-rate"),
        tile("Busiest minute", `${integer(peak)}/min`, "peak-minute"),
      ),
      peak
        ? minuteChart({ minutes: report.timeline.map((m) => m.minute), series: [{ name: "texts", kind: "bars", className: "throughput", values: counts }], yFormat: (v) => integer(v), yLabel: "texts / min", title: `Texts answered per minute by ${report.version}`, width })
        : h("p", { class: "placeholder" }, "No texts answered in the window."),
    );
  }

  distribution(report, width) {
    const signal = this.signal;
    const about = SIGNALS[signal];
    const select = h("select", { id: "monitor-signal", "aria-label": "Signal shown" },
      HISTOGRAMS.map((name) => h("option", { value: name, selected: name === signal }, SIGNALS[name].name)));
    select.addEventListener("change", () => {
      this.signal = select.value;
      this.render(true);
      $("#monitor-signal").focus();
    });
    const series = [{ name: `live window (${integer(report.live.n)})`, counts: report.live[signal], className: "live" }];
    if (report.reference?.n) series.push({ name: `holdout (${integer(report.reference.n)})`, counts: report.reference[signal], className: "holdout" });
    return h("section", { class: "card monitor-card", "aria-labelledby": "monitor-h-dist" },
      h("div", { class: "row-between" },
        h("h2", { id: "monitor-h-dist", class: "card-title" }, `${about.name} histogram`),
        select),
      h("p", { class: "muted small" }, `The share of texts in each bucket of ${about.what}, live against the holdout. Buckets are drawn equally wide.`),
      report.live.n || report.reference?.n
        ? [histogram({ edges: MONITOR_EDGES[signal], series, xLabel: about.x, title: `${about.name}: the live window against the holdout`, width }),
          legend(series.map((s) => [s.name, `bar-swatch ${s.className}`]))]
        : h("p", { class: "placeholder" }, "Nothing answered yet."),
    );
  }

  drift(report) {
    return section("Drift", "monitor-h-drift",
      h("p", { class: "muted small" }, "Population stability index of each signal, the window against the holdout. Above its threshold a signal has drifted."),
      h("div", { class: "table-wrap" }, h("table", { class: "data compact drift" },
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Signal"),
          h("th", { scope: "col", class: "num" }, "PSI"),
          h("th", { scope: "col", class: "num" }, "Threshold"),
          h("th", { scope: "col", class: "meter-head" }, h("span", { class: "visually-hidden" }, "Against the threshold")),
          h("th", { scope: "col" }, "State"))),
        h("tbody", {}, report.drift.map((score) => {
          const scale = Math.max(score.threshold * 2, (score.psi ?? 0) * 1.1) || 1;
          return h("tr", { "data-signal": score.signal, "data-drifted": String(score.drifted), class: score.drifted ? "is-drifted" : "" },
            h("th", { scope: "row" }, SIGNALS[score.signal]?.name ?? score.signal, h("span", { class: "muted small block" }, SIGNALS[score.signal]?.what ?? "")),
            h("td", { class: "num", "data-field": "psi" }, decimal(score.psi, 3)),
            h("td", { class: "num", "data-field": "threshold" }, decimal(score.threshold, 3)),
            h("td", { class: "meter-cell" }, h("span", { class: "meter", "aria-hidden": "true" },
              h("span", { class: "meter-fill", style: { width: `${Math.min(100, ((score.psi ?? 0) / scale) * 100).toFixed(1)}%` } }),
              h("span", { class: "meter-mark", style: { left: `${((score.threshold / scale) * 100).toFixed(1)}%` } }))),
            h("td", { "data-field": "state" }, score.psi === null
              ? h("span", { class: "muted small" }, "too few texts")
              : h("span", { class: `badge ${score.drifted ? "bad" : "ok"}` }, score.drifted ? "drifted" : "stable")),
          );
        })),
      )),
    );
  }

  forward(report) {
    const rows = report.forward;
    return section("Forward passes", "monitor-h-forward",
      h("p", { class: "muted small" }, "Time per forward pass by form and texts per pass, since the version served; p50 and p99 are read from the histogram's buckets."),
      rows.length
        ? h("div", { class: "table-wrap" }, h("table", { class: "data compact forward" },
          h("thead", {}, h("tr", {}, ["Form", "Per pass", "Passes", "Texts", "Mean", "p50", "p99"].map((t, i) => h("th", { scope: "col", class: i >= 2 ? "num" : "" }, t)))),
          h("tbody", {}, rows.map((f) => h("tr", { "data-form": f.form, "data-size": f.texts_per_pass },
            h("td", {}, h("code", {}, f.form)),
            h("td", { class: "nowrap" }, f.texts_per_pass === "1" ? "1 text" : `${f.texts_per_pass.replace("-", "–")} texts`),
            h("td", { class: "num", "data-field": "passes" }, integer(f.passes)),
            h("td", { class: "num", "data-field": "texts" }, integer(f.texts)),
            h("td", { class: "num", "data-field": "mean" }, seconds(f.mean_seconds)),
            h("td", { class: "num", "data-field": "p50" }, seconds(f.p50_seconds)),
            h("td", { class: "num", "data-field": "p99" }, seconds(f.p99_seconds)),
          ))),
        ))
        : h("p", { class: "placeholder" }, "No forward passes counted yet."),
    );
  }

  challenge(report, role) {
    const challenge = report.challenge;
    const pointer = this.state.challenger;
    if (!challenge) {
      const text = pointer && role !== "production"
        ? ["The challenger ", h("code", {}, pointer.version), " is scored beside production: choose the production version to see it."]
        : ["No challenger is named. Name one from the ", h("a", { href: "#/models" }, "Models"), " view to score it on a share of live traffic beside production."];
      return section("Challenger", "monitor-h-challenger", h("p", { class: "placeholder", id: "monitor-no-challenger" }, text));
    }
    const admin = this.app.canAdmin();
    const productionMean = meanPass(report.version === challenge.production ? report.forward : []);
    return h("section", { class: "card monitor-card challenger", "aria-labelledby": "monitor-h-challenger", "data-version": challenge.challenger },
      h("div", { class: "row-between wrap" },
        h("div", {},
          h("p", { class: "eyebrow" }, "Challenger"),
          h("h2", { id: "monitor-h-challenger", class: "prod-version" }, h("code", {}, challenge.challenger)),
          h("p", { class: "muted small" }, `Scores ${percent(challenge.share, 0)} of the texts `, h("code", {}, challenge.production), ` answers · named ${dateTime(challenge.named_at)}`,
            pointer?.reason ? `: ${pointer.reason}` : ""),
        ),
        admin
          ? h("div", { class: "actions" },
            h("button", { type: "button", class: "btn primary", id: "challenger-promote", onclick: () => this.ask("promote", challenge.challenger) }, "Promote challenger"),
            h("button", { type: "button", class: "btn danger", id: "challenger-dismiss", onclick: () => this.ask("dismiss", challenge.challenger) }, "Dismiss"))
          : h("p", { class: "muted small", id: "challenger-admin-note" }, "Promoting or dismissing it needs an admin key."),
      ),
      h("div", { class: "tiles" },
        tile("Texts scored", integer(challenge.scored), "scored"),
        tile("Agreement", percent(challenge.agreement), "agreement", challenge.scored ? `${integer(challenge.agreed)} of ${integer(challenge.scored)} labelled alike` : null),
        tile("Mean pass", seconds(challenge.mean_seconds), "challenger-mean", productionMean !== null ? `production: ${seconds(productionMean)}` : null),
        tile("Failed", integer(challenge.failed), "failed"),
      ),
      challenge.scored === 0 && h("p", { class: "placeholder" }, "No sampled texts scored yet: the predict workers score the challenger on its share of the texts production answers."),
      h("div", { class: "challenger-grid" },
        h("div", { class: "table-wrap" }, h("table", { class: "data compact agreement" },
          h("caption", {}, "Agreement by production's label"),
          h("thead", {}, h("tr", {},
            h("th", { scope: "col" }, "Label"),
            h("th", { scope: "col", class: "num" }, "Scored"),
            h("th", { scope: "col", class: "num" }, "Agreed"),
            h("th", { scope: "col", class: "num" }, "Rate"))),
          h("tbody", {}, challenge.by_label.map((row) => h("tr", { "data-label": row.label },
            h("th", { scope: "row" }, labelChip(row.label)),
            h("td", { class: "num", "data-field": "scored" }, integer(row.scored)),
            h("td", { class: "num", "data-field": "agreed" }, integer(row.agreed)),
            h("td", { class: "num", "data-field": "rate" }, h("span", { class: "f1" },
              h("span", { class: "f1-track", "aria-hidden": "true" }, h("span", { style: { width: `${((row.rate ?? 0) * 100).toFixed(1)}%` } })),
              percent(row.rate))),
          ))),
        )),
        h("div", { class: "table-wrap" }, h("table", { class: "data compact disagreements" },
          h("caption", {}, "Disagreements, the surest first"),
          h("thead", {}, h("tr", {},
            h("th", { scope: "col" }, "Text"),
            h("th", { scope: "col" }, "Production"),
            h("th", { scope: "col" }, "Challenger"))),
          h("tbody", {}, challenge.disagreements.length
            ? challenge.disagreements.map((d) => h("tr", {},
              h("td", { class: "text-cell", title: d.text }, d.text),
              h("td", { class: "nowrap", "data-field": "production" }, labelChip(d.production_label), " ", h("span", { class: "muted small" }, percent(d.production_confidence, 0))),
              h("td", { class: "nowrap", "data-field": "challenger" }, labelChip(d.challenger_label), " ", h("span", { class: "muted small" }, percent(d.challenger_confidence, 0))),
            ))
            : h("tr", {}, h("td", { colspan: 3, class: "placeholder" }, "No disagreements yet."))),
        )),
      ),
    );
  }

  ask(action, version) {
    this.pending = { action, version };
    const promote = action === "promote";
    $("#challenger-title").textContent = promote ? "Promote the challenger" : "Dismiss the challenger";
    clear($("#challenger-text"), promote
      ? ["Serve ", h("code", {}, version), " in production? Predictions switch to it within seconds, and it stops being the challenger."]
      : ["Stop scoring ", h("code", {}, version), " on live traffic? Production is unchanged."]);
    $("#challenger-reason-field").hidden = !promote;
    this.reason.required = promote;
    this.reason.value = promote ? "challenger promoted from the monitor" : "";
    this.dialogError.textContent = "";
    const confirm = $("#challenger-confirm");
    confirm.textContent = promote ? "Promote" : "Dismiss";
    confirm.className = promote ? "btn primary" : "btn danger";
    this.dialog.showModal();
    if (promote) this.reason.select();
    else confirm.focus();
  }

  async confirm() {
    const { action, version } = this.pending ?? {};
    if (!version) return;
    const reason = this.reason.value.trim();
    if (action === "promote" && !reason) {
      this.dialogError.textContent = "Give a reason: it is kept with the production record.";
      return;
    }
    const button = $("#challenger-confirm");
    button.disabled = true;
    try {
      if (action === "promote") {
        await api.promote(version, reason);
        this.chosen = null;
        window.dispatchEvent(new CustomEvent("agnews:production"));
      } else {
        await api.dismissChallenger();
      }
      this.dialog.close();
      this.pending = null;
      await this.refresh();
      this.setStatus(action === "promote" ? `${version} now serves in production.` : `${version} is no longer the challenger.`);
    } catch (error) {
      this.dialogError.textContent = `${action === "promote" ? "Promotion" : "Dismissal"} failed: ${messageOf(error)}`;
    } finally {
      button.disabled = false;
    }
  }

  // For the browser tests.
  snapshot() {
    return {
      version: this.state?.report?.version ?? null,
      texts: this.state?.report?.live?.n ?? null,
      challenger: this.state?.challenger?.version ?? null,
      refreshes: this.refreshes,
      renders: this.renders,
    };
  }
}
