// Models: the registry, which version serves, promotion and roll-back, naming a challenger.

import { api } from "./api.js";
import { legend, lineChart } from "./charts.js";
import { $, clear, dateTime, h, integer, messageOf, percent, shortHash } from "./dom.js";

// The model card is Markdown; these lines of it become elements (never HTML from the text).
function renderCard(markdown) {
  const out = [];
  const lines = markdown.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.startsWith("```")) {
      const code = [];
      while (++i < lines.length && !lines[i].startsWith("```")) code.push(lines[i]);
      out.push(h("pre", { class: "card-code" }, code.join("\n")));
    } else if (line.startsWith("|")) {
      const rows = [];
      for (; i < lines.length && lines[i].startsWith("|"); i++) {
        if (!/^\|(-+\|)+$/.test(lines[i])) rows.push(lines[i].slice(1, -1).split("|").map((c) => c.trim()));
      }
      i--;
      const [head, ...body] = rows;
      out.push(h("div", { class: "table-wrap" }, h("table", { class: "data" },
        h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, body.map((row) => h("tr", {}, row.map((c) => h("td", {}, c))))))));
    } else if (line.startsWith("## ")) out.push(h("h4", {}, line.slice(3)));
    else if (line.startsWith("# ")) out.push(h("h3", {}, line.slice(2)));
    else if (line.startsWith("- ")) out.push(h("li", {}, line.slice(2).replaceAll("`", "")));
    else if (line.trim()) out.push(h("p", {}, line.replaceAll("`", "")));
  }
  return out;
}

export class ModelsScreen {
  constructor(app) {
    this.app = app;
    this.production = $("#models-production");
    this.table = $("#models-table");
    this.status = $("#models-status");
    this.dialog = $("#promote-dialog");
    this.reason = $("#promote-reason");
    this.dialogError = $("#promote-error");
    this.pending = null;
    this.more = $("#models-more");
    this.detail = $("#models-detail");
    this.shown = null;
    this.challenger = null;
    this.challengeDialog = $("#challenge-dialog");
    this.challenging = null;
    $("#challenge-cancel").addEventListener("click", () => this.challengeDialog.close());
    $("#challenge-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.confirmChallenge();
    });
    $("#promote-cancel").addEventListener("click", () => this.dialog.close());
    $("#promote-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.confirm();
    });
  }

  enter() {
    this.refresh();
  }

  sessionChanged() {
    if (this.models) this.renderTable(this.models, this.pointer);
  }

  setStatus(text, kind = "") {
    this.status.className = `status-line ${kind}`;
    this.status.textContent = text;
  }

  async refresh() {
    let registry;
    try {
      [registry, this.challenger] = await Promise.all([api.models({ limit: 25 }), api.challenger()]);
    } catch (error) {
      this.setStatus(`The registry cannot be read: ${messageOf(error)}`, "error");
      return;
    }
    this.models = registry?.models ?? [];
    this.pointer = registry?.production ?? null;
    this.app.setServing(this.pointer);
    this.renderProduction(this.pointer, this.models);
    this.renderTable(this.models, this.pointer);
    this.renderMore(registry?.next ?? null);
    if (this.shown) this.show(this.shown);
  }

  renderMore(next) {
    clear(this.more, next && h("button", { type: "button", class: "btn", id: "models-older", onclick: () => this.older(next) }, "Show older versions"));
  }

  async older(before) {
    try {
      const page = await api.models({ limit: 25, before });
      this.models = [...this.models, ...(page?.models ?? [])];
      this.renderTable(this.models, this.pointer);
      this.renderMore(page?.next ?? null);
    } catch (error) {
      this.setStatus(`Older versions cannot be read: ${messageOf(error)}`, "error");
    }
  }

  async show(version) {
    this.shown = version;
    let record;
    try {
      record = await api.model(version);
    } catch (error) {
      clear(this.detail, h("p", { class: "callout danger" }, `${version} cannot be read: ${messageOf(error)}`));
      return;
    }
    const history = record.history;
    const width = this.detail.clientWidth - 32;
    const charts = [];
    if (history && (history.train.length || history.validation.length)) {
      charts.push(
        lineChart({
          title: `Loss of ${version} while it trained`, xLabel: "step", yLabel: "loss", width: width > 0 ? width : undefined,
          series: [
            { name: "training loss", points: history.train.map((p) => [p.step, p.loss]), kind: "line", className: "loss-line" },
            { name: "validation loss", points: history.validation.map((p) => [p.step, p.loss]), kind: "dots", className: "val-dots" },
          ],
        }),
        legend([["training loss", "loss-line"], ["validation loss", "val-dots"]]),
      );
    } else {
      charts.push(h("p", { class: "muted" }, "No training curves were kept for this version."));
    }
    if (history && history.adapt && history.adapt.length) {
      charts.push(
        lineChart({
          title: `Masked-LM loss of ${version} while it adapted to the texts`, xLabel: "step", yLabel: "loss", width: width > 0 ? width : undefined,
          series: [{ name: "masked-LM loss", points: history.adapt.map((p) => [p.step, p.loss]), kind: "line", className: "loss-line" }],
        }),
      );
    }
    clear(this.detail, h("article", { class: "card model-card", "data-version": version },
      h("div", { class: "row-between wrap" },
        h("h2", {}, "Version ", h("code", {}, version)),
        h("button", { type: "button", class: "btn small", onclick: () => { this.shown = null; clear(this.detail); } }, "Close"),
      ),
      ...charts,
      record.card ? h("div", { class: "card-text" }, renderCard(record.card)) : h("p", { class: "muted" }, "This version has no model card."),
    ));
    this.detail.scrollIntoView({ block: "nearest" });
  }

  renderProduction(production, models) {
    if (!production) {
      clear(this.production, h("div", { class: "callout info" },
        h("strong", {}, "No model is in production. "),
        models.length ? "Promote a version below to serve it." : ["Upload an archive.zip on the ", h("a", { href: "#/retrain" }, "Retrain"), " page to train the first one."]));
      return;
    }
    const info = models.find((m) => m.version === production.version);
    clear(this.production, h("section", { class: "card production", "aria-label": "Production model" },
      h("div", { class: "row-between wrap" },
        h("div", {},
          h("p", { class: "eyebrow" }, "In production"),
          h("p", { class: "prod-version" }, h("code", {}, production.version)),
        ),
        h("div", { class: "tiles inline" },
          h("div", { class: "tile" }, h("span", { class: "tile-label" }, "Accuracy"), h("span", { class: "tile-value" }, percent(info?.metrics?.accuracy))),
          h("div", { class: "tile" }, h("span", { class: "tile-label" }, "Macro-F1"), h("span", { class: "tile-value" }, percent(info?.metrics?.macro_f1))),
        ),
      ),
      h("p", { class: "muted" }, `Promoted ${dateTime(production.promoted_at)}: ${production.reason}`),
      h("div", { class: "actions" },
        !production.previous
          ? h("span", { class: "muted small" }, "It replaced no earlier version, so there is nothing to roll back to.")
          : this.app.canAdmin()
            ? h("button", { type: "button", class: "btn", id: "rollback", onclick: () => this.ask(production.previous, true) },
              "Roll back to ", h("code", {}, production.previous))
            : h("span", { class: "muted small", id: "rollback-admin-note" }, "Rolling back to ", h("code", {}, production.previous), " needs an admin key."),
      ),
    ));
  }

  renderTable(models, production) {
    if (!models.length) {
      clear(this.table, h("p", { class: "placeholder pad" }, "No models are registered yet."));
      return;
    }
    clear(this.table, h("table", { class: "data models stack" },
      h("thead", {}, h("tr", {}, ["Version", "Created", "Accuracy", "Macro-F1", "Test rows", "Trained", ""].map((t, i) =>
        h("th", { scope: "col", class: i >= 2 && i <= 4 ? "num" : "" }, t)))),
      h("tbody", {}, models.map((model) => {
        const serving = production?.version === model.version;
        const challenger = this.challenger?.version === model.version;
        const params = model.params ?? {};
        return h("tr", { class: serving ? "is-production" : "", "data-version": model.version },
          h("td", { class: "nowrap", "data-label": "Version" }, h("span", {}, h("code", {}, model.version), serving && h("span", { class: "badge ok" }, "production"),
            challenger && h("a", { class: "badge status-running", href: "#/monitor", title: `Scored on ${percent(this.challenger.share, 0)} of live traffic: see the Monitor` }, "challenger"))),
          h("td", { class: "nowrap", "data-label": "Created" }, dateTime(model.created_at)),
          h("td", { class: "num", "data-label": "Accuracy" }, percent(model.metrics?.accuracy)),
          h("td", { class: "num", "data-label": "Macro-F1" }, percent(model.metrics?.macro_f1)),
          h("td", { class: "num", "data-label": "Test rows" }, integer(model.metrics?.n)),
          h("td", { "data-label": "Trained" }, h("span", { class: "trained" },
            h("span", {}, "on ", h("code", { title: model.dataset_sha256 }, shortHash(model.dataset_sha256, 10))),
            h("span", { class: "muted small" }, [
              params.rows_trained != null && `${integer(params.rows_trained)} rows, ${integer(params.steps)} steps`,
              model.base_model,
            ].filter(Boolean).join(" · ")))),
          h("td", { class: "nowrap actions-cell" },
            h("button", { type: "button", class: "btn small", onclick: () => this.show(model.version), "aria-label": `Details of ${model.version}` }, "Details"),
            serving
              ? h("span", { class: "muted small" }, " serving")
              : this.app.canAdmin() &&
                h("button", { type: "button", class: "btn small", onclick: () => this.ask(model.version, false), "aria-label": `Promote ${model.version}` }, "Promote"),
            !serving && !challenger && production && this.app.canAdmin() &&
              h("button", { type: "button", class: "btn small", onclick: () => this.askChallenge(model.version), "aria-label": `Name ${model.version} challenger` }, "Challenge")),
        );
      })),
    ));
  }

  askChallenge(version) {
    this.challenging = version;
    const replaces = this.challenger ? [" It replaces the challenger ", h("code", {}, this.challenger.version), "."] : "";
    clear($("#challenge-text"), "Score ", h("code", {}, version), " on a share of live traffic beside production, after production has answered? Its answers are only counted and compared, never sent.", replaces);
    $("#challenge-share").value = "10";
    $("#challenge-reason").value = "named from the web console";
    $("#challenge-error").textContent = "";
    this.challengeDialog.showModal();
    $("#challenge-share").select();
  }

  async confirmChallenge() {
    const version = this.challenging;
    if (!version) return;
    const share = Number($("#challenge-share").value) / 100;
    const reason = $("#challenge-reason").value.trim();
    const error = $("#challenge-error");
    if (!(share > 0 && share <= 1)) {
      error.textContent = "The share is a percentage above 0 and at most 100.";
      return;
    }
    if (!reason) {
      error.textContent = "Give a reason: it is kept with the challenger.";
      return;
    }
    const button = $("#challenge-confirm");
    button.disabled = true;
    try {
      await api.challenge(version, share, reason);
      this.challengeDialog.close();
      this.setStatus(`${version} is now the challenger on ${percent(share, share < 0.01 ? 1 : 0)} of live traffic: see it on the Monitor.`);
      await this.refresh();
    } catch (failure) {
      error.textContent = `Naming the challenger failed: ${messageOf(failure)}`;
    } finally {
      button.disabled = false;
    }
  }

  ask(version, rollback) {
    this.pending = { version, rollback };
    $("#promote-title").textContent = rollback ? "Roll back" : "Promote";
    clear($("#promote-text"), rollback ? "Serve the previous version " : "Serve version ", h("code", {}, version), " in production? Predictions switch to it within seconds.");
    this.reason.value = rollback ? "rolled back from the web console" : "promoted from the web console";
    this.dialogError.textContent = "";
    $("#promote-confirm").textContent = rollback ? "Roll back" : "Promote";
    this.dialog.showModal();
    this.reason.select();
  }

  async confirm() {
    const { version } = this.pending ?? {};
    const reason = this.reason.value.trim();
    if (!version) return;
    if (!reason) {
      this.dialogError.textContent = "Give a reason: it is kept with the production record.";
      return;
    }
    const button = $("#promote-confirm");
    button.disabled = true;
    try {
      await api.promote(version, reason);
      this.dialog.close();
      this.setStatus(`${version} now serves in production.`);
      await this.refresh();
    } catch (error) {
      this.dialogError.textContent = `Promotion failed: ${messageOf(error)}`;
    } finally {
      button.disabled = false;
    }
  }
}
