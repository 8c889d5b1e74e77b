// Models: the registry, which version serves, promotion and roll-back.

import { api } from "./api.js";
import { $, clear, dateTime, h, integer, messageOf, percent, shortHash } from "./dom.js";

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
    $("#promote-cancel").addEventListener("click", () => this.dialog.close());
    $("#promote-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.confirm();
    });
  }

  enter() {
    this.refresh();
  }

  setStatus(text, kind = "") {
    this.status.className = `status-line ${kind}`;
    this.status.textContent = text;
  }

  async refresh() {
    let registry;
    try {
      registry = await api.models();
    } catch (error) {
      this.setStatus(`The registry cannot be read: ${messageOf(error)}`, "error");
      return;
    }
    const models = registry?.models ?? [];
    const production = registry?.production ?? null;
    this.app.setServing(production);
    this.renderProduction(production, models);
    this.renderTable(models, production);
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
        production.previous
          ? h("button", { type: "button", class: "btn", id: "rollback", onclick: () => this.ask(production.previous, true) },
            "Roll back to ", h("code", {}, production.previous))
          : h("span", { class: "muted small" }, "It replaced no earlier version, so there is nothing to roll back to."),
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
        const params = model.params ?? {};
        return h("tr", { class: serving ? "is-production" : "", "data-version": model.version },
          h("td", { class: "nowrap", "data-label": "Version" }, h("span", {}, h("code", {}, model.version), serving && h("span", { class: "badge ok" }, "production"))),
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
          h("td", { class: "nowrap actions-cell" }, serving
            ? h("span", { class: "muted small" }, "serving")
            : h("button", { type: "button", class: "btn small", onclick: () => this.ask(model.version, false), "aria-label": `Promote ${model.version}` }, "Promote")),
        );
      })),
    ));
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
